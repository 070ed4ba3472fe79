"""`run.py data check`: find what would silently corrupt training before a sweep spends hours on it.

Read-only by design: a check never fixes, moves or deletes anything; it lists problems so the user decides.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from orchestrator.core.images import SampleError, load_image, load_mask
from orchestrator.core.masks import IGNORE
from orchestrator.data.voc import IMAGE_EXTENSIONS, DatasetError, SegDataset, load_vocabulary, read_split_file

KINDS = ("missing", "unreadable", "size_mismatch", "bad_label", "duplicate")


@dataclass(frozen=True)
class Problem:
    path: str
    kind: str    # one of KINDS
    detail: str

    def __str__(self) -> str:
        return f"[{self.kind}] {self.path}: {self.detail}"


def _list_files(root: Path, split: str | None, splits_dir: Path | None) -> list[Path]:
    """The split/list files to check: one split's three files, or every list the dataset has."""
    if split is not None:
        SegDataset.resolve(root, split, splits_dir)  # raises a DatasetError naming the missing split file
        sdir = splits_dir or root / "splits"
        return [sdir / str(split) / "labeled.txt", sdir / str(split) / "unlabeled.txt", sdir / "val.txt"]
    files = sorted((splits_dir or root / "splits").rglob("*.txt"))
    return files + [f for f in (root / "ood/list.txt", root / "source/list.txt") if f.is_file()]


def _num_classes(root: Path, list_file: Path) -> int:
    """Labels under `source/` use the wide source vocabulary (shapes layout); everything else the target one."""
    if root / "source" in list_file.parents and (root / "classes.json").is_file():
        if "source" in json.loads((root / "classes.json").read_text()):
            return load_vocabulary(root, "source").num_classes
    return load_vocabulary(root).num_classes


def _base(root: Path, list_file: Path) -> Path:
    """Split files name paths relative to the dataset root; list.txt files relative to their own folder."""
    return list_file.parent if list_file.name == "list.txt" else root


def _check_pair(image: Path, mask: Path | None, num_classes: int) -> list[Problem]:
    problems = []
    try:
        img = load_image(image)
    except SampleError as e:
        kind = "missing" if not image.exists() and not image.is_symlink() else "unreadable"
        problems.append(Problem(str(image), kind, e.reason))
        img = None
    if mask is None:
        return problems
    try:
        lab = load_mask(mask)
    except SampleError as e:
        kind = "missing" if not mask.exists() and not mask.is_symlink() else "unreadable"
        return problems + [Problem(str(mask), kind, e.reason)]
    if img is not None and img.shape[:2] != lab.shape:
        problems.append(Problem(str(mask), "size_mismatch",
                                f"mask is {lab.shape[1]}x{lab.shape[0]} but image {image.name} is "
                                f"{img.shape[1]}x{img.shape[0]} (width x height)"))
    values = np.unique(lab)
    bad = values[(values >= num_classes) & (values != IGNORE)]
    if bad.size:
        problems.append(Problem(str(mask), "bad_label",
                                f"label values {bad.tolist()} are outside 0..{num_classes - 1} and not "
                                f"{IGNORE} (ignore); is the vocabulary (classes.json) the one these masks use?"))
    return problems


def _duplicate_stems(folder: Path) -> list[Problem]:
    """Two images with one id (a.jpg and a.png): which one a loader picks is an accident."""
    by_stem: dict[str, list[str]] = defaultdict(list)
    if folder.is_dir():
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() in IMAGE_EXTENSIONS:
                by_stem[f.stem].append(f.name)
    return [Problem(str(folder / names[0]), "duplicate", f"one id, several files: {names}")
            for names in by_stem.values() if len(names) > 1]


def check_dataset(root: str | Path, split: str | int | None = None,
                  splits_dir: str | Path | None = None) -> list[Problem]:
    """All problems found under `root` (empty list = clean). Each image/mask pair is decoded once.

    Without split files (a bare JPEGImages/ + SegmentationClass/ folder), images are paired with masks by id.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist; run `python run.py data synth` or set data.root")
    sdir = Path(splits_dir).expanduser().resolve() if splits_dir is not None else None
    problems: list[Problem] = []
    pairs: dict[tuple[Path, Path | None], int] = {}  # pair -> number of classes its labels may use
    lists = _list_files(root, None if split is None else str(split), sdir)
    ids_per_split: dict[Path, dict[str, Path]] = defaultdict(dict)  # split folder -> image id -> list file
    for list_file in lists:
        base = _base(root, list_file)
        num_classes = _num_classes(root, list_file)
        seen: set[str] = set()
        for img_rel, mask_rel in read_split_file(list_file):
            ident = Path(img_rel).stem
            if ident in seen:
                problems.append(Problem(str(list_file), "duplicate", f"id {ident} is listed more than once"))
                continue
            seen.add(ident)
            if list_file.name in ("labeled.txt", "unlabeled.txt"):
                other = ids_per_split[list_file.parent].setdefault(ident, list_file)
                if other != list_file:
                    problems.append(Problem(str(list_file), "duplicate",
                                            f"id {ident} is in both {other.name} and {list_file.name} of this split"))
            pairs.setdefault((base / img_rel, base / mask_rel if mask_rel else None), num_classes)
    if not lists:
        num_classes = load_vocabulary(root).num_classes
        for img in sorted((root / "JPEGImages").glob("*")):
            if img.suffix.lower() in IMAGE_EXTENSIONS:
                pairs.setdefault((img, root / "SegmentationClass" / f"{img.stem}.png"), num_classes)
    for folder in sorted({root / "JPEGImages", *(img.parent for img, _ in pairs)}):
        problems += _duplicate_stems(folder)
    for (img, mask), num_classes in pairs.items():
        problems += _check_pair(img, mask, num_classes)
    return problems
