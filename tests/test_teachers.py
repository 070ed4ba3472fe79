"""Teacher spec validation, the build_teacher dispatch, import hygiene, and the IoU metrics (no model weights)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch
import pytest

from orchestrator.teachers import TeacherSpec, build_teacher, evaluate_teacher
from trainables.metrics import ConfusionMatrix
from orchestrator.core.vocab import ClassConcepts, Vocabulary

VOCAB = Vocabulary((ClassConcepts("background"), ClassConcepts("disk")))


def test_unknown_kind_lists_valid_kinds():
    with pytest.raises(ValueError, match=r"unknown teacher kind 'sed'; valid kinds: textseg, maskclip"):
        TeacherSpec(kind="sed", pretrained="x.pt")


@pytest.mark.parametrize("kwargs, message", [
    (dict(kind="textseg", pretrained="x.pt", templates="imagenet"), "valid: single, imagenet80"),
    (dict(kind="textseg", pretrained="x.pt", resolution=-1), "is negative"),
    (dict(kind="textseg", pretrained=""), "needs `pretrained`"),
    (dict(kind="maskclip", pretrained="x.pt"), "needs `arch`"),
    (dict(kind="textseg", pretrained="x.pt", sliding_window=True), "sliding_window is a maskclip option"),
])
def test_spec_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TeacherSpec(**kwargs)


def test_spec_is_frozen():
    spec = TeacherSpec(kind="textseg", pretrained="x.pt")
    with pytest.raises(AttributeError):
        spec.kind = "maskclip"  # type: ignore[misc]


def test_missing_textseg_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        build_teacher(TeacherSpec(kind="textseg", pretrained=str(path)), VOCAB)


def test_importing_the_package_does_not_import_torch():
    # The CLI and the cache key import TeacherSpec; they must not pay for torch/open_clip.
    code = "import sys, orchestrator.teachers as t; t.TeacherSpec; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---- metrics -----------------------------------------------------------------------------------------------------

def test_confusion_matrix_ignores_255_and_counts_out_of_range_as_wrong():
    gt = np.array([[0, 1, 1, 255]], dtype=np.uint8)
    pred = np.array([[0, 1, 7, 1]], dtype=np.uint8)  # 7 is not a class: wrong, but no crash
    cm = ConfusionMatrix(2)
    cm.update(torch.from_numpy(pred), torch.from_numpy(gt))
    assert cm.as_lists() == [[1, 0], [0, 1]]
    ious, _ = cm.compute()
    assert ious == pytest.approx([100.0, 50.0])   # the wrong pixel still enlarges class 1's union


class _FixedTeacher:
    def __init__(self, labels: np.ndarray):
        self.labels, self.calls = labels, 0

    def predict(self, images):
        out = self.labels[self.calls:self.calls + len(images)]
        self.calls += len(images)
        return out, np.full(out.shape, 0.5, np.float32)


def test_evaluate_teacher_iou_by_hand():
    gt = np.array([[[0, 0, 1, 1]], [[1, 1, 2, 255]]], dtype=np.uint8)      # 2 images of 1×4
    pred = np.array([[[0, 1, 1, 1]], [[1, 1, 0, 0]]], dtype=np.uint8)
    images = np.zeros((2, 1, 4, 3), np.uint8)
    res = evaluate_teacher(_FixedTeacher(pred), images, gt, num_classes=4, batch_size=1)
    # class 0: I=1, U=|gt0|2 + |pred0|2 - 1 = 3; class 1: I=4, U=4+5-4 = 5; class 2: I=0, U=1; class 3 absent → NaN
    assert res["per_class_iou"][:3] == pytest.approx([100 / 3, 80.0, 0.0])
    assert np.isnan(res["per_class_iou"][3])
    assert res["miou"] == pytest.approx((100 / 3 + 80.0 + 0.0) / 3)
    assert res["pixel_acc"] == pytest.approx(100 * 5 / 7)
    assert res["num_pixels"] == 7


def test_evaluate_teacher_perfect_is_100():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 3, (3, 8, 8)).astype(np.uint8)
    res = evaluate_teacher(_FixedTeacher(gt.copy()), np.zeros((3, 8, 8, 3), np.uint8), gt, num_classes=3)
    assert res["miou"] == pytest.approx(100.0)


def test_iou_nan_for_absent_class():
    cm = ConfusionMatrix(2)
    cm.update(torch.zeros(5, dtype=torch.long), torch.zeros(5, dtype=torch.long))
    iou, miou = cm.compute()
    assert iou[0] == 100.0 and np.isnan(iou[1]) and miou == 100.0
