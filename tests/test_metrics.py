"""Confusion matrix: hand-computed IoU, ignore handling, accumulation and the distributed reduce."""

import math

import pytest
import torch
import torch.distributed as dist

from trainables.metrics import ConfusionMatrix


def test_hand_example():
    cm = ConfusionMatrix(3)
    target = torch.tensor([[0, 0, 1], [1, 2, 255]])
    pred = torch.tensor([[0, 1, 1], [1, 0, 2]])  # the last pixel is ignored despite predicting class 2
    cm.update(pred, target)
    iou, miou = cm.compute()
    # class 0: I=1, U=2+2-1=3; class 1: I=2, U=3+2-2=3; class 2: I=0, U=1
    assert iou == pytest.approx([100 / 3, 200 / 3, 0.0])
    assert miou == pytest.approx(100 / 3)


def test_updates_accumulate_and_reset():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    cm.update(torch.tensor([1, 1]), torch.tensor([0, 1]))
    iou, _ = cm.compute()
    assert iou == pytest.approx([50.0, 200 / 3])
    cm.reset()
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert cm.compute()[1] == pytest.approx(100.0)


def test_absent_class_is_nan_and_left_out_of_mean():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
    iou, miou = cm.compute()
    assert math.isnan(iou[2])
    assert miou == pytest.approx((50 + 50) / 2)


def test_bad_inputs_are_explained():
    cm = ConfusionMatrix(2)
    with pytest.raises(ValueError, match="pass argmax"):
        cm.update(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    cm.update(torch.tensor([5, 0]), torch.tensor([0, 0]))   # out of range: counted as wrong, no crash
    assert cm.as_lists() == [[1, 0], [0, 0]] and cm.compute()[0][0] == pytest.approx(50.0)


def test_reduce_is_noop_without_process_group_and_sums_with_one(tmp_path):
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 0]))
    cm.reduce_from_all_processes()
    assert cm.as_lists() == [[1, 1], [0, 0]]
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        cm.reduce_from_all_processes()
        assert cm.as_lists() == [[1, 1], [0, 0]]
        empty = ConfusionMatrix(2)  # a rank without batches still joins the all_reduce
        empty.reduce_from_all_processes()
        assert empty.as_lists() == [[0, 0], [0, 0]]
    finally:
        dist.destroy_process_group()
