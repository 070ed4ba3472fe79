"""The student's encoder pretrained on the source corpus: the task, its cache, and what a trial starts from."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from orchestrator.core.config import build_config
from orchestrator.core.errors import UserError
from trainables.pretrain import PretrainSettings, presence_targets, pretrain_encoder


def test_targets_say_which_classes_an_image_shows_beyond_a_few_pixels():
    masks = np.zeros((2, 8, 8), np.uint8)
    masks[0, :3, :3] = 2          # 9 pixels of class 2
    masks[0, 7, 7] = 1            # one stray pixel of class 1: not "shown"
    masks[1, :, :4] = 255         # ignored pixels count for nothing
    masks[1, :, 4:] = 3
    targets = presence_targets(masks, num_classes=4, min_pixels=5)
    assert targets.tolist() == [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]   # classes 1..3; background left out


def test_pretraining_learns_and_is_deterministic(torch_one_thread):
    from trainables.models import SmallEncoder

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (16, 16, 16, 3), dtype=np.uint8)
    images[:8, :, :, 0] = 255                                   # class 1 = red images
    targets = np.zeros((16, 1), np.float32)
    targets[:8] = 1.0
    settings = PretrainSettings(steps=40, seed=3, batch_size=8)
    losses: list[float] = []
    torch.manual_seed(0)
    first = pretrain_encoder(SmallEncoder(4), images, targets, settings, lambda step, loss: losses.append(loss))
    torch.manual_seed(0)
    again = pretrain_encoder(SmallEncoder(4), images, targets, settings)
    assert len(losses) == 40 and np.mean(losses[-10:]) < np.mean(losses[:10])
    assert set(first) == set(SmallEncoder(4).state_dict())
    assert all(torch.equal(first[k], again[k]) for k in first)   # same corpus, settings and seed: same encoder


def test_encoder_is_pretrained_once_per_request_and_refetched_when_damaged(tmp_path):
    from orchestrator.data.shapes import ShapesSpec, generate_shapes
    from orchestrator.students.encoder import EncoderRequest, encoder_path, ensure_pretrained_encoder

    root = tmp_path / "data"
    generate_shapes(ShapesSpec.smoke(), root)
    cfg = build_config({"model.pretrain": "source_classification", "model.pretrain_steps": 5, "model.width": 4})
    said: list[str] = []
    path = ensure_pretrained_encoder(cfg, tmp_path / "cache", root, said.append)
    assert path == encoder_path(cfg, tmp_path / "cache", root) and path.is_file()
    assert said and "pretraining the unet_small encoder" in said[0]
    assert ensure_pretrained_encoder(cfg, tmp_path / "cache", root, said.append) == path and len(said) == 1
    path.write_bytes(path.read_bytes()[:100])                  # truncated after it was written
    assert ensure_pretrained_encoder(cfg, tmp_path / "cache", root, said.append) == path
    assert "is damaged" in said[1] and json.loads(path.with_name(path.name + ".sha256.json").read_text())["bytes"] > 100
    longer = build_config({"model.pretrain": "source_classification", "model.pretrain_steps": 6, "model.width": 4})
    assert encoder_path(longer, tmp_path / "cache", root) != path            # another setting, another encoder
    same = build_config({"model.pretrain": "source_classification", "model.pretrain_steps": 5, "model.width": 4,
                         "train.method": "supervised", "data.split": "8"})
    assert EncoderRequest.from_config(same) == EncoderRequest.from_config(cfg)   # the split and method do not matter
    assert ensure_pretrained_encoder(build_config({"model.pretrain": "none"}), tmp_path / "cache", root) is None
    user_file = build_config({"model.pretrain": "source_classification", "model.arch": "deeplabv3plus_r50",
                              "model.pretrained_backbone": str(path)})
    assert ensure_pretrained_encoder(user_file, tmp_path / "cache", root) is None   # the user's weights win


def test_a_dataset_without_a_source_corpus_is_refused_with_the_fix(tmp_path):
    from orchestrator.students.encoder import check_pretrainable

    cfg = build_config({"model.pretrain": "source_classification"})
    with pytest.raises(UserError, match=r"model.pretrain=source_classification pretrains the student's encoder on "
                                        r"the dataset's labeled source corpus, and .* has none .* Fix: set "
                                        r"model.pretrained_backbone to a weights file"):
        check_pretrainable(cfg, tmp_path)
    check_pretrainable(build_config({"model.pretrain": "none"}), tmp_path)   # nothing asked: nothing refused
