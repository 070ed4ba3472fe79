"""Reading (and writing) datasets in the UniMatch / SemiOVS layout: the one format every dataset here uses.

A dataset root holds `JPEGImages/<id>.jpg` and `SegmentationClass/<id>.png` (index or palette PNG, 255 = ignore);
split files list one sample per line as `<image rel path> <mask rel path>` relative to the dataset root, with no
header and no trailing newline. The generated `shapes` benchmark, Pascal VOC and Pascal Context all read through
this module, so a real dataset is a drop-in replacement for the embedded one.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from orchestrator.core.errors import UserError
from orchestrator.core.masks import voc_palette
from orchestrator.core.paths import inside
from orchestrator.core.vocab import Vocabulary

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
SYNTH_HINT = "run `python run.py data synth` to generate the embedded `shapes` benchmark, or set data.root"


class DatasetError(UserError):
    """A dataset root, split or list file is missing or malformed; the message names the path and the fix."""


# ---------------------------------------------------------------------------------------------- split files

def read_split_file(path: str | Path) -> list[tuple[str, str | None]]:
    """Lines `image [mask]` -> [(image_rel, mask_rel or None)]. Blank lines are skipped; >2 columns is an error."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"split/list file not found: {path}; {SYNTH_HINT}")
    pairs: list[tuple[str, str | None]] = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        cols = line.split()
        if not cols:
            continue
        if len(cols) > 2:
            raise DatasetError(f"{path}:{lineno}: expected `<image> [<mask>]`, got {len(cols)} columns: {line!r} "
                               "(paths with spaces are not supported by the UniMatch split format)")
        pairs.append((cols[0], cols[1] if len(cols) == 2 else None))
    return pairs


def write_split_file(path: str | Path, pairs: list[tuple[str, str | None]]) -> None:
    """Write the UniMatch format: one `image mask` (or `image`) per line, no trailing newline."""
    lines = [img if mask is None else f"{img} {mask}" for img, mask in pairs]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines))


# ---------------------------------------------------------------------------------------------- images, masks

def mask_to_image(mask: np.ndarray) -> Image.Image:
    """uint8 HxW label indices -> palette ('P') image with the VOC colours (how VOC and SemiOVS store labels)."""
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise ValueError(f"mask must be uint8 HxW, got {mask.dtype} {mask.shape}")
    im = Image.fromarray(mask)
    im.putpalette(voc_palette())
    return im


def save_mask(path: str | Path, mask: np.ndarray) -> None:
    mask_to_image(mask).save(path, format="PNG")


# ---------------------------------------------------------------------------------------------- datasets

Pair = tuple[str, str | None]


@dataclass(frozen=True)
class SegDataset:
    """One split of a dataset root: absolute (image, mask) paths. Masks of `unlabeled` are only for padding marks."""

    root: str
    split: str
    labeled: tuple[Pair, ...]
    unlabeled: tuple[Pair, ...]
    val: tuple[Pair, ...]
    test: tuple[Pair, ...] = ()   # `<splits_dir>/test.txt` when the dataset has one: never used for selection

    @classmethod
    def resolve(cls, root: str | Path, split: str | int, splits_dir: str | Path | None = None) -> "SegDataset":
        """Find `<splits_dir>/<split>/{labeled,unlabeled}.txt`, `<splits_dir>/val.txt` and, if present,
        `<splits_dir>/test.txt`.

        `splits_dir` defaults to `<root>/splits` (the shapes layout). For the SemiOVS repo layout pass e.g.
        `SemiOVS/splits/pascal` with root `data/pascal`; split names are folder names there ("92", "1_16", ...).
        """
        root = Path(root).expanduser().resolve()
        if not root.is_dir():
            raise DatasetError(f"dataset root {root} does not exist; {SYNTH_HINT}")
        sdir = Path(splits_dir).expanduser().resolve() if splits_dir is not None else root / "splits"
        split = str(split)
        inside(sdir, split)   # data.split names a folder of splits_dir; '../x' must not read elsewhere
        files = {"labeled": sdir / split / "labeled.txt", "unlabeled": sdir / split / "unlabeled.txt",
                 "val": sdir / "val.txt"}
        for name, f in files.items():
            if not f.is_file():
                known = sorted(p.name for p in sdir.iterdir() if (p / "labeled.txt").is_file()) if sdir.is_dir() else []
                raise DatasetError(
                    f"{name} split file not found: {f}. Available splits under {sdir}: {known or 'none'}. "
                    "Pick one of them for data.split, or point data.splits_dir at the folder holding "
                    "`<split>/labeled.txt` and `val.txt`.")
        lists = {name: tuple(_absolute(root, p) for p in read_split_file(f)) for name, f in files.items()}
        if not lists["labeled"]:
            raise DatasetError(f"{files['labeled']} is empty; a split needs at least one labeled image")
        first = lists["labeled"][0][0]
        if not Path(first).is_file():
            raise DatasetError(f"{files['labeled']} names {first}, which does not exist. Split paths are relative "
                               f"to the dataset root ({root}): is data.root the folder that holds JPEGImages/?")
        test = sdir / "test.txt"
        lists["test"] = tuple(_absolute(root, p) for p in read_split_file(test)) if test.is_file() else ()
        return cls(str(root), split, lists["labeled"], lists["unlabeled"], lists["val"], lists["test"])


def _absolute(base: Path, pair: Pair) -> Pair:
    img, mask = pair
    return str(base / img), (str(base / mask) if mask is not None else None)


def list_ood_corpus(root_or_list_file: str | Path) -> list[tuple[str, str | None]]:
    """An OOD corpus: a list file (1-2 columns, relative to its folder), a folder holding `list.txt`, or a folder
    of images (.jpg/.jpeg/.png directly inside it, sorted by name, no masks). Returns absolute paths."""
    p = Path(root_or_list_file).expanduser().resolve()
    if p.is_dir() and (p / "list.txt").is_file():
        p = p / "list.txt"
    if p.is_file():
        return [_absolute(p.parent, pair) for pair in read_split_file(p)]
    if not p.is_dir():
        raise DatasetError(f"OOD corpus {p} does not exist; set ood.corpus to a folder of images or a list file, "
                           f"or {SYNTH_HINT}")
    # a symlink that leads nowhere (dangling, a loop) is kept: decoding rejects it, so it is counted and listed
    images = sorted(str(f) for f in p.iterdir()
                    if (f.is_file() or f.is_symlink()) and f.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise DatasetError(f"OOD corpus folder {p} has no list.txt and no {'/'.join(IMAGE_EXTENSIONS)} images in it")
    return [(img, None) for img in images]


def load_source_corpus(data_root: Path) -> tuple[np.ndarray, np.ndarray]:
    """The labeled source corpus of a dataset (`<root>/source/`): images [N,H,W,3] and masks [N,H,W] in the
    source vocabulary. The teacher is fitted on it and the student's encoder pretrained on it."""
    from orchestrator.core.images import load_image, load_mask

    pairs = list_ood_corpus(Path(data_root) / "source")
    images = np.stack([load_image(img) for img, _ in pairs])
    masks = np.stack([load_mask(mask) for _, mask in pairs])
    return images, masks


def source_corpus_digest(data_root: str | Path) -> str:
    """A digest of the source corpus's content (its list, every file it names, its vocabulary): what a teacher
    fitted on it or an encoder pretrained on it depends on, and nothing else of the dataset (its ID and OOD
    settings can change without fitting again). Read once per process and folder state."""
    listing = Path(data_root) / "source" / "list.txt"
    stamp = listing.stat().st_mtime_ns if listing.is_file() else 0
    return _source_digest(str(Path(data_root).resolve()), stamp)


@functools.lru_cache(maxsize=16)
def _source_digest(data_root: str, stamp: int) -> str:
    import hashlib

    h = hashlib.sha256()
    root = Path(data_root)
    listing = root / "source" / "list.txt"
    if not listing.is_file():
        return ""
    h.update(listing.read_bytes())
    for image, mask in list_ood_corpus(root / "source"):
        for path in (image, mask):
            if path is not None:
                h.update(Path(path).read_bytes())
    classes = root / "classes.json"
    if classes.is_file():
        h.update(json.dumps(json.loads(classes.read_text()).get("source")).encode())
    return h.hexdigest()


def load_vocabulary(root: str | Path, key: str = "target") -> Vocabulary:
    """The vocabulary a dataset's labels use: `<root>/classes.json[key]`, else Pascal VOC's 21 classes."""
    path = Path(root) / "classes.json"
    if not path.is_file():
        from orchestrator.data.pascal_vocab import PASCAL_VOC_VOCAB
        return PASCAL_VOC_VOCAB
    try:
        data = json.loads(path.read_text())
        return Vocabulary.from_dict(data[key])
    except (ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"{path}: cannot read vocabulary {key!r} ({e!r}); expected "
                           f'{{"{key}": {{"classes": [{{"name": ..., "synonyms": [...]}}, ...]}}}}') from None
