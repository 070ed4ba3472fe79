"""The generated `shapes` benchmark: layout, determinism, splits, and the ID/OOD differences it is built for."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from orchestrator.data.shapes import (DISTRACTOR_NAMES, SOURCE_VOCAB, TARGET_VOCAB, ShapesSpec, default_shapes_root,
                                      ensure_shapes, generate_shapes)
from orchestrator.core.images import load_image, load_mask
from orchestrator.data.voc import DatasetError, SegDataset, list_ood_corpus, load_vocabulary

SPEC = ShapesSpec(num_train=40, num_val=12, num_ood=60, num_source=20, splits=(4, 8, 16))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("shapes") / "ds"
    return root, generate_shapes(SPEC, root)


def _lines(path: Path) -> list[str]:
    text = path.read_text()
    assert not text.endswith("\n"), f"{path} must have no trailing newline (UniMatch format)"
    return text.split("\n")


def test_layout_and_line_format(shapes):
    root, manifest = shapes
    assert manifest["counts"]["train"] == 40 and manifest["spec"]["seed"] == 0
    assert json.loads((root / "manifest.json").read_text()) == manifest
    classes = json.loads((root / "classes.json").read_text())
    assert classes["target"] == TARGET_VOCAB.to_dict() and classes["distractors"] == list(DISTRACTOR_NAMES)
    for list_file, base in [(root / "splits/8/labeled.txt", root), (root / "splits/val.txt", root),
                            (root / "ood/list.txt", root / "ood"), (root / "source/list.txt", root / "source")]:
        for line in _lines(list_file):
            img, mask = line.split(" ")
            ident = Path(img).stem
            assert img == f"JPEGImages/{ident}.jpg" and mask == f"SegmentationClass/{ident}.png"
            assert (base / img).is_file() and (base / mask).is_file()
    assert len(_lines(root / "ood/list.txt")) == 60 and len(_lines(root / "splits/val.txt")) == 12
    for ident in ("ood_00000", "ood_00059"):
        assert (root / f"ood/SegmentationClassSource/{ident}.png").is_file()
    assert not list(root.parent.glob(".ds.partial-*")), "the temp folder must be gone after generation"


def test_images_and_masks_are_what_readers_expect(shapes):
    root, _ = shapes
    img = load_image(root / "JPEGImages/train_00000.jpg")
    mask = load_mask(root / "SegmentationClass/train_00000.png")
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8 and mask.shape == (64, 64)
    from PIL import Image
    assert Image.open(root / "SegmentationClass/train_00000.png").mode == "P"
    assert set(np.unique(mask)) <= set(range(TARGET_VOCAB.num_classes)) | {255}
    assert load_vocabulary(root) == TARGET_VOCAB and load_vocabulary(root, "source") == SOURCE_VOCAB


def test_splits_are_nested_and_partition_the_train_pool(shapes):
    root, _ = shapes
    prev: set[str] = set()
    for n in SPEC.splits:
        labeled, unlabeled = set(_lines(root / f"splits/{n}/labeled.txt")), set(_lines(root / f"splits/{n}/unlabeled.txt"))
        assert len(labeled) == n and prev <= labeled and not labeled & unlabeled
        assert len(labeled | unlabeled) == SPEC.num_train
        prev = labeled
    ds = SegDataset.resolve(root, "8")
    assert len(ds.labeled) == 8 and len(ds.unlabeled) == 32 and len(ds.val) == 12
    # The smallest split shows every target class, so no class has IoU 0 for lack of any labeled example.
    shown = set().union(*(np.unique(load_mask(m)).tolist() for _, m in SegDataset.resolve(root, "4").labeled))
    assert set(range(1, TARGET_VOCAB.num_classes)) <= shown


def test_same_spec_same_bytes_other_seed_other_data(tmp_path, shapes):
    _, manifest = shapes
    again = generate_shapes(SPEC, tmp_path / "again")
    assert again["digest"] == manifest["digest"]
    other = generate_shapes(ShapesSpec(**{**SPEC.to_dict(), "splits": SPEC.splits, "seed": 1}), tmp_path / "other")
    assert other["digest"] != manifest["digest"]


def test_distractors_are_in_source_gt_and_background_in_target_gt(shapes):
    root, _ = shapes
    first_distractor = TARGET_VOCAB.num_classes
    distractor_pixels = 0
    for img, _ in list_ood_corpus(root / "ood"):
        ident = Path(img).stem
        src = load_mask(root / f"ood/SegmentationClassSource/{ident}.png")
        tgt = load_mask(root / f"ood/SegmentationClass/{ident}.png")
        is_distractor = (src >= first_distractor) & (src != 255)
        distractor_pixels += int(is_distractor.sum())
        assert (tgt[is_distractor] == 0).all()
        assert (tgt[~is_distractor] == src[~is_distractor]).all()
    assert distractor_pixels > 0


def _class_pixels(masks: list[np.ndarray], num_classes: int) -> np.ndarray:
    counts = sum(np.bincount(m[m != 255], minlength=num_classes) for m in masks)
    return counts[1:] / counts[1:].sum()


def test_ood_content_differs_from_id_as_designed(shapes):
    """OOD: about distractor_share of object pixels are distractors, more objects, reversed class frequencies."""
    root, _ = shapes
    id_masks = [load_mask(m) for _, m in SegDataset.resolve(root, "16").unlabeled]
    ood_src = [load_mask(p) for p in sorted((root / "ood/SegmentationClassSource").glob("*.png"))]
    src_share = _class_pixels(ood_src, SOURCE_VOCAB.num_classes)
    assert 0.25 < src_share[TARGET_VOCAB.num_classes - 1:].sum() < 0.75  # distractor share 0.5 of objects
    id_share = _class_pixels(id_masks, TARGET_VOCAB.num_classes)
    ood_share = _class_pixels([load_mask(p) for p in sorted((root / "ood/SegmentationClass").glob("*.png"))],
                              TARGET_VOCAB.num_classes)
    assert id_share[0] > ood_share[0] and id_share[-1] < ood_share[-1]  # disks common in ID, rings in OOD
    objects = lambda ms: np.mean([len(set(np.unique(m).tolist()) - {0, 255}) for m in ms])
    assert objects(ood_src) > objects(id_masks)


def test_uniform_id_prior_evens_out_the_target_classes(tmp_path):
    """`id_class_prior: uniform` (the default) makes every target class about equally common in ID images; a
    skewed spec's digest (its cache folder) is the same as before the knob existed."""
    from orchestrator.data.shapes import domain_contents

    skewed = ShapesSpec(id_class_prior="skewed")
    assert domain_contents(ShapesSpec())["train"].class_probs[:5] == (0.2,) * 5
    assert domain_contents(skewed)["train"].class_probs[:5] == (0.35, 0.25, 0.18, 0.13, 0.09)
    assert "id_class_prior" not in skewed.to_dict()
    assert ShapesSpec().digest() != skewed.digest()
    spec = ShapesSpec.smoke(num_train=200, num_val=4, num_ood=4, num_source=4, id_class_prior="uniform")
    generate_shapes(spec, tmp_path / "u")
    share = _class_pixels([load_mask(m) for _, m in SegDataset.resolve(tmp_path / "u", "16").unlabeled],
                          TARGET_VOCAB.num_classes)
    assert share.max() < 0.35          # skewed: disks alone are about half the object pixels
    with pytest.raises(ValueError, match="id_class_prior"):
        ShapesSpec(id_class_prior="zipf")


def test_spec_validation_names_the_field():
    with pytest.raises(ValueError, match=r"ShapesSpec.image_size = 16 .*32\.\.512"):
        ShapesSpec(image_size=16)
    with pytest.raises(ValueError, match=r"ShapesSpec.splits .*1\.\.num_train-1"):
        ShapesSpec(num_train=10, splits=(8, 16))
    with pytest.raises(ValueError, match=r"ShapesSpec.style_shift .*\[0, 1\]"):
        ShapesSpec(style_shift=1.5)
    assert ShapesSpec(splits=[16, 8]).splits == (8, 16)


def test_generate_refuses_to_clobber_and_ensure_reuses(tmp_path, shapes, monkeypatch):
    root, manifest = shapes
    with pytest.raises(DatasetError, match="already exists.*overwrite"):
        generate_shapes(SPEC, root)
    spec = ShapesSpec.smoke(num_train=20, num_ood=10, num_source=10, num_val=5)
    import orchestrator.data.shapes as shapes_mod
    calls: list[Path] = []
    real = shapes_mod.generate_shapes
    monkeypatch.setattr(shapes_mod, "generate_shapes", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(ensure_shapes(tmp_path, spec))) for _ in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert results == [default_shapes_root(tmp_path, spec)] * 2
    assert len(calls) == 1, "the lock must keep two concurrent callers from generating twice"
    stamp = (results[0] / "manifest.json").stat().st_mtime_ns
    assert ensure_shapes(tmp_path, spec) == results[0]
    assert (results[0] / "manifest.json").stat().st_mtime_ns == stamp  # reused, not regenerated
    assert default_shapes_root(tmp_path, spec) != default_shapes_root(tmp_path, ShapesSpec.smoke(seed=3))


def test_interrupted_generation_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    import orchestrator.data.shapes as shapes_mod

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(shapes_mod, "_split_order", boom)
    with pytest.raises(KeyboardInterrupt):
        generate_shapes(ShapesSpec.smoke(), tmp_path / "ds")
    assert list(tmp_path.iterdir()) == []


def test_ensure_replaces_a_leftover_folder_without_manifest(tmp_path):
    spec = ShapesSpec.smoke(num_train=20, num_ood=10, num_source=10, num_val=5)
    root = default_shapes_root(tmp_path, spec)
    (root / "JPEGImages").mkdir(parents=True)
    (root / "JPEGImages/stale.jpg").write_bytes(b"half-written by a crashed run")
    assert ensure_shapes(tmp_path, spec) == root
    assert (root / "manifest.json").is_file() and not (root / "JPEGImages/stale.jpg").exists()
    assert sorted(p.name for p in root.parent.iterdir() if p.is_dir()) == [root.name]  # no temp folders left
