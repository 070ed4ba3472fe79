"""`teacher.label_noise`: a seeded corruption of the teacher's OOD labels, its place in the label cache key, the
teacher's OOD precision per label set, and the teacher_quality sweep file."""
from __future__ import annotations

import json

import numpy as np
import pytest

from orchestrator.core.config import build_config
from orchestrator.core.masks import IGNORE
from orchestrator.labels.noise import corrupt_label

K = 6   # background + 5 target classes, as in `shapes`


def blocks(seed: int) -> np.ndarray:
    """A 64×64 label map: 16 separate 12×12 squares of random target classes on background, one ignored row."""
    rng = np.random.default_rng(seed)
    label = np.zeros((64, 64), np.uint8)
    for r in range(4):
        for c in range(4):
            label[16 * r + 2:16 * r + 14, 16 * c + 2:16 * c + 14] = rng.integers(1, K)
    label[63] = IGNORE
    return label


def test_each_segment_keeps_one_class_and_flips_to_another_target_at_the_rate():
    flipped = segments = 0
    for i in range(60):
        label = blocks(i)
        out = corrupt_label(label, 0.3, K, f"img_{i}")
        assert np.array_equal(out, corrupt_label(label, 0.3, K, f"img_{i}"))       # seeded by the image id
        assert np.array_equal(out == 0, label == 0) and np.all(out[63] == IGNORE)   # background, ignore kept
        for r in range(4):
            for c in range(4):
                seg = out[16 * r + 2:16 * r + 14, 16 * c + 2:16 * c + 14]
                assert len(np.unique(seg)) == 1 and 1 <= seg[0, 0] < K                  # whole, a target class
                flipped += int(seg[0, 0] != label[16 * r + 2, 16 * c + 2])
                segments += 1
    assert abs(flipped / segments - 0.3) < 0.05          # 960 segments: the binomial sd is 0.015
    label = blocks(0)
    assert corrupt_label(label, 0.0, K, "a") is label
    every = corrupt_label(label, 1.0, K, "a")
    objects = (label > 0) & (label != IGNORE)
    assert np.all(every[objects] != label[objects]) and np.all(every[label == 0] == 0)


def test_object_precision_of_a_label_set_falls_with_the_noise():
    from orchestrator.labels.diagnostics import GroundTruthScore

    def precision(rate: float) -> tuple[float, float]:
        score, kept, total = GroundTruthScore(K), 0, 0
        for i in range(40):
            truth = blocks(100 + i)
            label = corrupt_label(truth, rate, K, f"ood_{i}")
            score.update(f"ood_{i}", label, truth)
            kept += int(((label == truth) & (truth > 0) & (truth != IGNORE)).sum())
            total += int(((label > 0) & (label != IGNORE)).sum())
        return score.compute(["c"] * K)["object_precision"], 100.0 * kept / total

    assert precision(0.0) == (100.0, 100.0)
    measured, expected = precision(0.5)
    assert measured == pytest.approx(expected, abs=1e-3) and 40 < measured < 60
    # a distractor labeled as a target lowers it too: 10 object pixels, 4 of them background in truth
    score = GroundTruthScore(3)
    label, truth = np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8)
    label.flat[:10], truth.flat[:6] = 1, 1
    score.update("x", label, truth)
    assert score.object_precision() == pytest.approx(60.0)


def test_noise_is_a_label_key_but_a_noiseless_set_keeps_its_key(shared_cache):
    from tests.conftest import TINY
    from orchestrator.labels.job import LABEL_KEYS, LabelRequest, label_job

    assert "teacher.label_noise" in LABEL_KEYS
    clean, noisy = (build_config({**TINY, "teacher.label_noise": n}) for n in (0.0, 0.25))
    assert LabelRequest.from_config(clean) != LabelRequest.from_config(noisy)
    clean_job, noisy_job = label_job(clean, shared_cache), label_job(noisy, shared_cache)
    assert "label_noise" not in clean_job.key_inputs and noisy_job.key_inputs["label_noise"] == 0.25
    assert clean_job.store.key != noisy_job.store.key and noisy_job.label_noise == 0.25
    with pytest.raises(Exception, match=r"teacher.label_noise.*out of range"):
        build_config({"teacher.label_noise": 1.5})


def test_the_actor_stores_the_corrupted_labels_and_counts_their_pixels(ray_session, tmp_path):
    """TeacherActor (the code each Ray Data actor runs), called here in-process on one batch (it asks the
    session's Ray which node it is on)."""
    from orchestrator.core.masks import decode_png
    from orchestrator.core.vocab import ClassConcepts, Vocabulary
    from orchestrator.labels.pipeline import TeacherActor
    from orchestrator.teachers import fit_textseg, save_checkpoint

    vocab = Vocabulary(tuple(ClassConcepts(n) for n in ("background", "square", "circle", "cross")))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 16, 16, 3)).astype(np.uint8)
    ckpt = str(tmp_path / "t.pt")
    save_checkpoint(fit_textseg(images, rng.integers(0, 4, (6, 16, 16)).astype(np.uint8), vocab, steps=1,
                                batch_size=4, width=8, embed_dim=16), ckpt)
    batch = {"image_id": np.array([f"i{n}" for n in range(6)], dtype=object), "error": np.array([""] * 6, object),
             "image": np.array(list(images) + [None], dtype=object)[:6]}
    spec = {"kind": "textseg", "pretrained": ckpt}
    clean = TeacherActor(spec, vocab.to_dict(), 1)(batch)
    noisy = TeacherActor(spec, vocab.to_dict(), 1, label_noise=1.0)(batch)
    changed = 0
    for i in range(6):
        label, weak = decode_png(clean["label"][i]), decode_png(noisy["label"][i])
        assert np.array_equal(weak, corrupt_label(label, 1.0, 4, f"i{i}"))
        assert list(noisy["class_pixels"][i]) == np.bincount(weak.ravel(), minlength=4)[:4].tolist()
        changed += int((weak != label).sum())
    assert changed > 0 and list(clean["confidence"]) == list(noisy["confidence"])   # confidence plane untouched


def test_teacher_quality_space_sweeps_the_noise_on_semiovs_with_teacher_labels():
    from pathlib import Path

    from orchestrator.sweep.plan import labeling_configs
    from orchestrator.sweep.space import load_space, resolve_base

    space = load_space(str(Path(__file__).resolve().parent.parent / "search_spaces" / "teacher_quality.yaml"))
    base = resolve_base(space, {})
    assert base["train.method"] == "semiovs" and base["ood.label_source"] == "teacher"
    noise = space.parameters["teacher.label_noise"].args
    assert len(noise) >= 4 and 0 in noise
    assert sorted(c["teacher.label_noise"] for c in labeling_configs(space, base)) == sorted(noise)
    assert json.dumps(noise)   # plain numbers (they become MLflow params and cache-key inputs)


def test_a_trial_reads_its_label_sets_quality_from_the_manifest(tmp_path):
    from orchestrator.core.label_format import read_label_quality

    entry = tmp_path / "textseg-abc"
    entry.mkdir()
    assert read_label_quality(entry) == {}                                   # no manifest yet
    manifest = {"diagnostics": {"ground_truth": {"miou": 52.0, "object_precision": 68.5}}}
    (entry / "manifest.json").write_text(json.dumps(manifest))
    assert read_label_quality(entry) == {"teacher_ood_precision": 68.5, "teacher_ood_miou": 52.0}
    (entry / "manifest.json").write_text(json.dumps({"diagnostics": {"ground_truth": None}}))   # no OOD masks
    assert read_label_quality(entry) == {}
    (entry / "manifest.json").write_text(json.dumps({"diagnostics": {"ground_truth": {"miou": 50.0}}}))
    assert read_label_quality(entry) == {"teacher_ood_miou": 50.0}           # labeled before precision existed
