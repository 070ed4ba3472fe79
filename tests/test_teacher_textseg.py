"""textseg: fitted on a wide "source" vocabulary, prompted with a target vocabulary whose background_concepts
name the distractor class — the distractor's pixels must come out as background (docs/method.md §8, the benchmark's point)."""
from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
import torch

from orchestrator.teachers import TeacherSpec, build_teacher, evaluate_teacher, fit_textseg, save_checkpoint
from orchestrator.teachers.base import images_to_tensor, weights_digest_for
from orchestrator.core.vocab import ClassConcepts, Vocabulary

SOURCE = Vocabulary(tuple(ClassConcepts(n) for n in ("background", "square", "circle", "triangle")))
# Target vocabulary: triangles are a distractor, named only as a background concept.
TARGET = Vocabulary((ClassConcepts("background"), ClassConcepts("square"), ClassConcepts("circle")),
                    background_concepts=("triangle",))
TRIANGLE = 3
_COLOURS = {1: (220, 60, 60), 2: (60, 200, 60), 3: (60, 80, 220)}  # class-tinted so a few steps suffice


def make_shapes(n: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """1-2 squares (1), circles (2) or triangles (3) on a noisy grey background (0)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    images = np.empty((n, size, size, 3), np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        img = rng.normal(110, 30, (size, size, 3))
        for _ in range(rng.integers(1, 3)):
            cls = int(rng.integers(1, 4))
            r = rng.uniform(0.15 * size, 0.3 * size)
            cy, cx = rng.uniform(r, size - r, 2)
            if cls == 1:
                m = (np.abs(yy - cy) <= 0.85 * r) & (np.abs(xx - cx) <= 0.85 * r)
            elif cls == 2:
                m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2
            else:
                dy = yy - (cy - r)
                m = (dy >= 0) & (dy <= 1.8 * r) & (np.abs(xx - cx) <= 0.6 * dy)
            img[m] = np.array(_COLOURS[cls]) + rng.uniform(-40, 40, 3) + rng.normal(0, 10, (int(m.sum()), 3))
            masks[i][m] = cls
        images[i] = np.clip(img, 0, 255)
    return images, masks


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> tuple[str, dict]:
    images, masks = make_shapes(200, seed=0)
    # channel_shuffle off: these toy shapes are class-tinted on purpose so that 100 steps suffice.
    ckpt = fit_textseg(images, masks, SOURCE, steps=100, batch_size=16, seed=0, channel_shuffle=0.0)
    path = str(tmp_path_factory.mktemp("textseg") / "teacher.pt")
    save_checkpoint(ckpt, path)
    return path, ckpt


@pytest.fixture(scope="module")
def val_data() -> tuple[np.ndarray, np.ndarray]:
    return make_shapes(48, seed=1)


def _teacher(path: str, vocab: Vocabulary, **kw):
    return build_teacher(TeacherSpec(kind="textseg", pretrained=path, **kw), vocab)


def test_fit_learns_source_vocabulary(fitted, val_data):
    path, ckpt = fitted
    images, masks = val_data
    res = evaluate_teacher(_teacher(path, SOURCE), images, masks, SOURCE.num_classes)
    # All-background would score ≈ 22 mIoU (bg IoU ≈ 88, others 0); every shape class must be learned.
    assert res["miou"] > 75, res
    assert min(res["per_class_iou"]) > 50, res
    assert ckpt["final_loss"] < 0.3


def test_distractor_named_as_background_concept_becomes_background(fitted, val_data):
    path, _ = fitted
    images, masks = val_data
    labels, conf = _teacher(path, TARGET).predict(images)
    assert (labels[masks == TRIANGLE] == 0).mean() > 0.9
    # The vote is the prompt's: class 0's logit is exactly max(background, triangle) of the source prompt.
    with_triangles = images[(masks == TRIANGLE).any(axis=(1, 2))][:4]
    x = images_to_tensor(with_triangles, torch.device("cpu"))
    with torch.inference_mode():
        source, target = _teacher(path, SOURCE).class_logits(x), _teacher(path, TARGET).class_logits(x)
    assert (source[:, TRIANGLE] > source[:, 0]).any()  # else the check below could not tell
    torch.testing.assert_close(target[:, 0], torch.maximum(source[:, 0], source[:, TRIANGLE]))
    torch.testing.assert_close(target[:, 1:], source[:, 1:3])
    target_gt = np.where(masks == TRIANGLE, 0, masks).astype(np.uint8)
    res = evaluate_teacher(_teacher(path, TARGET), images, target_gt, TARGET.num_classes)
    assert res["miou"] > 75, res


def test_distractor_named_as_a_synonym_joins_that_class(fitted, val_data):
    # Control for the test above: the same pixels follow the prompt wherever it lists the distractor's name.
    path, _ = fitted
    images, masks = val_data
    as_synonym = Vocabulary((ClassConcepts("background"), ClassConcepts("square", ("triangle",)),
                             ClassConcepts("circle")))
    labels, _ = _teacher(path, as_synonym).predict(images)
    assert (labels[masks == TRIANGLE] == 1).mean() > 0.9


def test_class_order_follows_vocabulary(fitted, val_data):
    path, _ = fitted
    images, _ = val_data
    swapped = Vocabulary((SOURCE.classes[0], SOURCE.classes[2], SOURCE.classes[1], SOURCE.classes[3]))
    a, conf_a = _teacher(path, SOURCE).predict(images)
    b, conf_b = _teacher(path, swapped).predict(images)
    assert {1, 2} <= set(np.unique(a).tolist())
    np.testing.assert_array_equal(b, np.array([0, 2, 1, 3], np.uint8)[a])
    np.testing.assert_allclose(conf_a, conf_b, rtol=1e-5)


def test_predict_shapes_types_determinism_and_resolution(fitted, val_data):
    path, _ = fitted
    images, _ = val_data
    teacher = _teacher(path, TARGET)
    labels, conf = teacher.predict(images[:5])
    assert labels.shape == conf.shape == (5, 32, 32)
    assert labels.dtype == np.uint8 and conf.dtype == np.float32
    assert labels.max() < TARGET.num_classes and (conf > 1 / 3 - 1e-6).all() and (conf <= 1 + 1e-6).all()
    again, conf2 = teacher.predict(images[:5])
    np.testing.assert_array_equal(labels, again)
    np.testing.assert_array_equal(conf, conf2)
    resized, rconf = _teacher(path, TARGET, resolution=48).predict(images[:5])
    assert resized.shape == rconf.shape == (5, 32, 32)  # back at the input size
    assert (resized == labels).mean() > 0.85 and not np.array_equal(rconf, conf)


def test_predict_rejects_non_uint8(fitted):
    path, _ = fitted
    with pytest.raises(ValueError, match=r"expects np.uint8 images shaped \[B,H,W,3\]"):
        _teacher(path, TARGET).predict(np.zeros((1, 8, 8, 3), np.float32))


def test_checkpoint_is_weights_only_and_digest_is_file_sha256(fitted):
    path, ckpt = fitted
    loaded = torch.load(path, weights_only=True)
    assert loaded["vocab"] == SOURCE.to_dict() and loaded["templates"] == "single"
    assert set(loaded["fit"]) >= {"steps", "batch_size", "lr", "seed"} and loaded["fit"]["steps"] == 100
    with open(path, "rb") as f:
        assert weights_digest_for(path) == hashlib.sha256(f.read()).hexdigest()
    assert not [n for n in os.listdir(os.path.dirname(path)) if n.endswith(".tmp")]


def test_template_mismatch_is_refused(fitted):
    path, _ = fitted
    with pytest.raises(ValueError, match="fitted with templates 'single' but the spec asks for 'imagenet80'"):
        _teacher(path, TARGET, templates="imagenet80")


def test_foreign_file_is_refused(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match="is not a textseg checkpoint"):
        _teacher(str(path), TARGET)


def test_fit_is_deterministic_and_seed_sensitive():
    images, masks = make_shapes(16, size=16, seed=3)
    a = fit_textseg(images, masks, SOURCE, steps=3, batch_size=4, seed=0)["model"]
    b = fit_textseg(images, masks, SOURCE, steps=3, batch_size=4, seed=0)["model"]
    c = fit_textseg(images, masks, SOURCE, steps=3, batch_size=4, seed=1)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_fit_rejects_bad_inputs():
    images, masks = make_shapes(4, size=16)
    with pytest.raises(TypeError):
        fit_textseg(images, masks, SOURCE, stpes=3)
    with pytest.raises(ValueError, match=r"masks hold ids \[3\] outside the vocabulary's 3 classes"):
        fit_textseg(images, np.where(masks == 0, 3, 3).astype(np.uint8), TARGET, steps=1)
    with pytest.raises(ValueError, match="steps=0 must be >= 1"):
        fit_textseg(images, masks, SOURCE, steps=0)


def test_fit_settings_that_mirror_config_keys_default_from_the_config():
    from orchestrator.core.config import DataConfig, TeacherConfig
    from orchestrator.teachers import FitConfig

    with pytest.raises(TypeError):
        FitConfig()                                  # steps, seed and templates have no default of their own
    cfg = FitConfig.from_config(TeacherConfig(), DataConfig(), batch_size=4)
    assert (cfg.steps, cfg.seed, cfg.templates, cfg.batch_size) == (
        TeacherConfig().fit_steps, DataConfig().seed, TeacherConfig().templates, 4)
    images, masks = make_shapes(4, size=16)
    fit = fit_textseg(images, masks, SOURCE, steps=1, batch_size=2, width=8, embed_dim=16)["fit"]
    assert (fit["seed"], fit["templates"]) == (DataConfig().seed, TeacherConfig().templates)


def test_class_weights_upweight_rare_classes_and_keep_mean_pixel_weight_one():
    from orchestrator.teachers.textseg_fit import _class_weights

    masks = np.zeros((2, 10, 10), np.uint8)
    masks[0, :2] = 1          # 20 px of class 1, 180 px of background
    masks[1, 0, 0] = 255      # ignored pixels are not counted
    assert _class_weights(masks, 3, 0.0) is None
    w = _class_weights(masks, 3, 0.5).numpy()
    freq = np.array([179, 20, 0], float)
    freq = np.maximum(freq, 1) / 199
    assert w[1] > w[0] and w[2] > w[1]
    assert abs(float((w[:2] * freq[:2]).sum() + w[2] * freq[2]) - 1.0) < 1e-5


def test_channel_shuffle_permutes_whole_images_only():
    from orchestrator.teachers.textseg_fit import _shuffle_channels

    images, _ = make_shapes(8, size=16, seed=4)
    gen = np.random.default_rng(0)
    out = _shuffle_channels(images, gen, 1.0)
    assert out.shape == images.shape and out.dtype == np.uint8
    for a, b in zip(images, out):  # same pixels, each image's channels in some order
        assert sorted(a.reshape(-1, 3).sum(0).tolist()) == sorted(b.reshape(-1, 3).sum(0).tolist())
    assert np.array_equal(_shuffle_channels(images, gen, 0.0), images)
