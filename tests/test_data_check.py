"""`check_dataset` finds each kind of fault on a tiny dataset built here, and changes nothing."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from orchestrator.data.check import Problem, check_dataset
from orchestrator.data.shapes import ShapesSpec, generate_shapes
from orchestrator.data.voc import DatasetError, save_mask, write_split_file


def _dataset(root: Path, n: int = 6) -> Path:
    """A clean VOC-layout root (no classes.json => 21 Pascal classes) with split '2' and a val list."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    for i in range(n):
        Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(root / f"JPEGImages/im{i}.jpg")
        mask = np.zeros((20, 30), np.uint8)
        mask[5:9, 5:9], mask[0, :] = i + 1, 255
        save_mask(root / f"SegmentationClass/im{i}.png", mask)
    pairs = [(f"JPEGImages/im{i}.jpg", f"SegmentationClass/im{i}.png") for i in range(n)]
    write_split_file(root / "splits/2/labeled.txt", pairs[:2])
    write_split_file(root / "splits/2/unlabeled.txt", pairs[2:4])
    write_split_file(root / "splits/val.txt", pairs[4:])
    return root


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _kinds(problems: list[Problem]) -> list[tuple[str, str]]:
    return sorted((Path(p.path).name, p.kind) for p in problems)


def test_clean_dataset_has_no_problems(tmp_path):
    root = _dataset(tmp_path / "ds")
    assert check_dataset(root) == [] and check_dataset(root, split="2") == []


def test_generated_shapes_dataset_is_clean(tmp_path):
    root = tmp_path / "shapes"
    generate_shapes(ShapesSpec.smoke(num_train=20, num_val=5, num_ood=10, num_source=10), root)
    assert check_dataset(root) == []  # includes source/ masks, whose labels use the wider source vocabulary


def test_each_fault_is_reported_with_its_kind_and_nothing_changes(tmp_path):
    root = _dataset(tmp_path / "ds")
    data = (root / "JPEGImages/im0.jpg").read_bytes()
    (root / "JPEGImages/im0.jpg").write_bytes(data[: len(data) // 2])                       # truncated image
    save_mask(root / "SegmentationClass/im1.png", np.zeros((10, 30), np.uint8))             # wrong size
    bad = np.zeros((20, 30), np.uint8)
    bad[0, 0], bad[1, 1] = 21, 254
    save_mask(root / "SegmentationClass/im2.png", bad)                                      # labels 21, 254
    (root / "SegmentationClass/im3.png").unlink()                                           # missing mask
    Image.new("RGB", (30, 20)).save(root / "JPEGImages/im4.png")                            # id im4 twice
    write_split_file(root / "splits/2/unlabeled.txt", [
        ("JPEGImages/im2.jpg", "SegmentationClass/im2.png"), ("JPEGImages/im3.jpg", "SegmentationClass/im3.png"),
        ("JPEGImages/im2.jpg", "SegmentationClass/im2.png"),                                # listed twice
        ("JPEGImages/im1.jpg", "SegmentationClass/im1.png"),                                # also labeled
        ("JPEGImages/gone.jpg", "SegmentationClass/gone.png")])                             # missing both
    before = _snapshot(root)
    problems = check_dataset(root, split="2")
    assert _snapshot(root) == before, "check_dataset must never modify the dataset"
    assert _kinds(problems) == sorted([
        ("im0.jpg", "unreadable"), ("im1.png", "size_mismatch"), ("im2.png", "bad_label"),
        ("im3.png", "missing"), ("im4.jpg", "duplicate"), ("unlabeled.txt", "duplicate"),
        ("unlabeled.txt", "duplicate"), ("gone.jpg", "missing"), ("gone.png", "missing")])
    by_kind = {p.kind: p.detail for p in problems}
    assert "truncated" in by_kind["unreadable"].lower()
    assert "20x30" not in by_kind["size_mismatch"] and "30x10" in by_kind["size_mismatch"]
    assert "[21, 254]" in by_kind["bad_label"] and "0..20" in by_kind["bad_label"]
    details = " | ".join(p.detail for p in problems if p.kind == "duplicate")
    assert "im2 is listed more than once" in details and "im1 is in both labeled.txt and unlabeled.txt" in details
    assert "['im4.jpg', 'im4.png']" in details


def test_folder_without_split_files_pairs_by_id(tmp_path):
    root = _dataset(tmp_path / "ds")
    for f in (root / "splits").rglob("*.txt"):
        f.unlink()
    (root / "SegmentationClass/im5.png").unlink()
    assert [(Path(p.path).name, p.kind) for p in check_dataset(root)] == [("im5.png", "missing")]


def test_missing_root_or_split_is_a_user_error(tmp_path):
    with pytest.raises(DatasetError, match="does not exist.*data synth"):
        check_dataset(tmp_path / "nope")
    with pytest.raises(DatasetError, match=r"labeled split file not found: .*splits/7/labeled.txt"):
        check_dataset(_dataset(tmp_path / "ds"), split="7")
