"""Every kind of broken file (0 bytes, truncated PNG/JPEG, not an image, a wrong mask mode, a mask with
out-of-range classes, a decompression bomb over PIL's pixel limit, a symlink loop) in train, val and OOD
folders: skipped, counted and listed with its path, or listed by `run.py data check` (exit 2). No Ray."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from orchestrator.core.images import SampleError, check_classes, load_image, load_mask
from tests.broken_files import IMAGE_KINDS, MASK_KINDS, write_broken_image, write_broken_mask

SIZE = 32
CLASSES = 3


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_every_broken_image_kind_raises_a_sample_error_naming_its_path(tmp_path, kind):
    path = write_broken_image(tmp_path / "x.jpg", kind)
    with pytest.raises(SampleError) as err:
        load_image(path)
    assert err.value.path == str(path)
    if kind.startswith("bomb"):
        assert "limit" in err.value.reason


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_every_broken_mask_kind_is_refused(tmp_path, kind):
    path = write_broken_mask(tmp_path / "x.png", kind, SIZE)
    with pytest.raises(SampleError) as err:
        check_classes(load_mask(path), CLASSES, path)
    assert err.value.path == str(path)


def _good_pair(root, stem):
    rng = np.random.default_rng(len(stem))
    Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3)).astype(np.uint8)).save(root / "JPEGImages" / f"{stem}.jpg")
    Image.fromarray(rng.integers(0, CLASSES, (SIZE, SIZE)).astype(np.uint8), mode="L").save(
        root / "SegmentationClass" / f"{stem}.png")
    return f"JPEGImages/{stem}.jpg SegmentationClass/{stem}.png"


def make_dataset(root):
    """A VOC-layout dataset whose labeled, unlabeled and val lists and OOD folder each hold every broken kind.
    Returns the broken paths by list."""
    for sub in ("JPEGImages", "SegmentationClass", "splits/8", "ood"):
        (root / sub).mkdir(parents=True)
    (root / "classes.json").write_text(json.dumps({"target": {"classes": [{"name": n} for n in
                                                                          ("background", "a", "b")]}}))
    broken: dict[str, list[str]] = {}
    for split, kinds in (("labeled", MASK_KINDS), ("unlabeled", IMAGE_KINDS), ("val", IMAGE_KINDS + MASK_KINDS)):
        lines = [_good_pair(root, f"{split}_ok{i}") for i in range(3)]
        for i, kind in enumerate(kinds):
            stem = f"{split}_{i}_{kind}"
            lines.append(_good_pair(root, stem))
            if split == "labeled" or (split == "val" and i >= len(IMAGE_KINDS)):
                broken.setdefault(split, []).append(str(write_broken_mask(root / "SegmentationClass" / f"{stem}.png",
                                                                          kind, SIZE)))
            else:
                broken.setdefault(split, []).append(str(write_broken_image(root / "JPEGImages" / f"{stem}.jpg", kind)))
        target = root / "splits" / ("val.txt" if split == "val" else f"8/{split}.txt")
        target.write_text("\n".join(lines) + "\n")
    for i in range(3):
        Image.fromarray(np.full((SIZE, SIZE, 3), 40 * i, np.uint8)).save(root / "ood" / f"ok{i}.png")
    broken["ood"] = [str(write_broken_image(root / "ood" / f"b{i}_{kind}.png", kind)) for i, kind in
                     enumerate(IMAGE_KINDS)]
    return broken


def test_data_check_lists_every_broken_file_and_exits_2(tmp_path, capsys):
    from orchestrator.cli import main

    broken = make_dataset(tmp_path / "ds")
    code = main(["data", "check", str(tmp_path / "ds"), "--split", "8"])
    out = capsys.readouterr().out
    assert code == 2
    listed = {line.split(": ")[0] for line in out.splitlines()}
    for split in ("labeled", "unlabeled", "val"):
        assert set(broken[split]) <= listed, (split, set(broken[split]) - listed)
    assert "bad_label" in out and "outside 0..2" in out


def test_a_training_worker_skips_counts_and_lists_every_broken_kind(tmp_path):
    from orchestrator.data.voc import SegDataset
    from trainables.distributed import WorkerContext
    from trainables.streams import BrokenSamples, StreamFiles, StreamSampler
    from trainables.evaluation import evaluate

    broken = make_dataset(tmp_path / "ds")
    data = SegDataset.resolve(tmp_path / "ds", "8")
    found = BrokenSamples()
    ood = [(f"o{i}", str(p)) for i, p in enumerate(sorted((tmp_path / "ds" / "ood").glob("*.png")))]
    sampler = StreamSampler(StreamFiles(data.labeled, data.unlabeled, ood), ood_labels=None, crop=SIZE, seed=0,
                            broken=found, max_broken_share=0.9, num_classes=CLASSES)
    for _ in range(20):   # enough draws to meet every file of these short lists
        sampler.labeled_batch(4), sampler.unlabeled_batch(4, "u"), sampler.ood_batch(4)
    ev = evaluate(torch.nn.Conv2d(3, CLASSES, 1), list(data.val), CLASSES,
                  WorkerContext("local", 0, 1, torch.device("cpu")), broken=found)
    assert set(found.paths) == {p for paths in broken.values() for p in paths}
    assert np.isfinite(ev.miou)   # the good val images still give a score


def test_an_ood_folder_keeps_broken_files_in_its_corpus_so_labeling_lists_them(tmp_path):
    from orchestrator.data.voc import list_ood_corpus
    from orchestrator.labels.pipeline import decode_batch
    from orchestrator.labels.store import corpus_fingerprint

    broken = make_dataset(tmp_path / "ds")
    corpus = list_ood_corpus(tmp_path / "ds" / "ood")
    paths = [p for p, _ in corpus]
    assert set(broken["ood"]) <= set(paths) and len(paths) == 3 + len(IMAGE_KINDS)
    assert corpus_fingerprint(paths)   # a symlink loop is no crash here
    out = decode_batch({"image_id": np.array(paths, dtype=object), "path": np.array(paths, dtype=object)})
    rejected = {p for p, e in zip(paths, out["error"]) if e}
    assert rejected == set(broken["ood"])
    assert all(e.startswith(p) for p, e in zip(paths, out["error"]) if e)   # each error names its file
