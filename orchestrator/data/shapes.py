"""The embedded `shapes` benchmark: a generated ID domain, an OOD domain and a labelled source corpus.

Nothing can be downloaded at run time, so the default data is drawn (docs/method.md §8).
The OOD domain differs from the ID domain mainly in *content* (distractor classes that look like target
classes, more clutter, a wider scale range, other class frequencies) and only mildly in style (`style_shift`):
measured, alien style makes OOD images hurt even with perfect labels, which would hide the paper's effect.
The source corpus (wide vocabulary, mixed styles) is what the text-conditioned teacher is fitted on.

Everything is a function of the spec: each image has its own RNG seeded from (spec.seed, domain, index), so the
same spec gives byte-identical files (with the same Pillow/libjpeg/zlib build) and the same manifest digest.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from orchestrator.core.config import ID_CLASS_PRIORS, DataConfig
from orchestrator.core.console import exclusive_lock
from orchestrator.data import render
from orchestrator.data.voc import DatasetError, mask_to_image, write_split_file
from orchestrator.core.vocab import ClassConcepts, Vocabulary

GENERATOR_VERSION = 3  # bump when the drawing changes, so cached datasets are regenerated
JPEG_QUALITY = 95

TARGET_VOCAB = Vocabulary(classes=(
    ClassConcepts("background", ("empty canvas",)),
    ClassConcepts("disk", ("circle", "round blob")),
    ClassConcepts("square", ("box", "block")),
    ClassConcepts("triangle", ("wedge", "three-sided shape")),
    ClassConcepts("cross", ("plus sign", "plus")),
    ClassConcepts("ring", ("annulus", "donut")),
))
DISTRACTOR_NAMES: tuple[str, ...] = ("ellipse", "rectangle", "trapezoid", "star", "crescent")
SOURCE_VOCAB = Vocabulary(classes=TARGET_VOCAB.classes + (
    ClassConcepts("ellipse", ("oval",)),
    ClassConcepts("rectangle", ("oblong", "bar")),
    ClassConcepts("trapezoid", ("truncated triangle",)),
    ClassConcepts("star", ("five-pointed star",)),
    ClassConcepts("crescent", ("half moon", "sickle")),
))
# Which target each distractor imitates (same preferred hue; similar outline).
LOOKALIKE = {"ellipse": "disk", "rectangle": "square", "trapezoid": "triangle", "star": "cross", "crescent": "ring"}

_NUM_TARGET = TARGET_VOCAB.num_classes - 1
_ID_PRIOR = (0.35, 0.25, 0.18, 0.13, 0.09)  # ID objects: disks common, rings rare ...
_OOD_PRIOR = _ID_PRIOR[::-1]                # ... OOD objects: the other way round
_DOMAINS = {"train": 0, "val": 1, "ood": 2, "source": 3, "test": 4}
_MAX_COUNT = 100_000  # ids are 5 digits


@dataclass(frozen=True)
class ShapesSpec:
    """Everything that determines a generated `shapes` dataset (and its cache folder name)."""

    # defaults are the config's (orchestrator.core.config.DataConfig): one place for them
    image_size: int = DataConfig.image_size
    num_train: int = DataConfig.num_train
    num_val: int = DataConfig.num_val
    num_test: int = DataConfig.num_test   # held-out ID images, never used for selection (0 = no test split)
    num_ood: int = DataConfig.num_ood
    num_source: int = DataConfig.num_source
    splits: tuple[int, ...] = (8, 16, 32, 64, 128)
    distractor_share: float = DataConfig.distractor_share  # share of OOD objects that are distractors
    style_shift: float = DataConfig.style_shift  # 0 = OOD style identical to ID, 1 = strongly different style
    seed: int = DataConfig.seed
    id_class_prior: str = DataConfig.id_class_prior  # uniform, or skewed (a rare class, as in VOC)
    # share of ID objects drawn from the distractor classes, labeled background in ID ground truth (as VOC images
    # show objects of other classes, which its labels call background)
    id_distractor_share: float = DataConfig.id_distractor_share

    def __post_init__(self):
        def need(ok: bool, field: str, allowed: str) -> None:
            if not ok:
                raise ValueError(f"ShapesSpec.{field} = {getattr(self, field)!r} is invalid; allowed: {allowed}")

        need(isinstance(self.image_size, int) and 32 <= self.image_size <= 512, "image_size", "an int in 32..512")
        for f in ("num_train", "num_val", "num_ood", "num_source"):
            need(isinstance(getattr(self, f), int) and 1 <= getattr(self, f) < _MAX_COUNT, f, f"an int in 1..{_MAX_COUNT - 1}")
        need(isinstance(self.num_test, int) and 0 <= self.num_test < _MAX_COUNT, "num_test", f"an int in 0..{_MAX_COUNT - 1}")
        need(isinstance(self.splits, (tuple, list)) and len(self.splits) > 0
             and all(isinstance(n, int) and 1 <= n < self.num_train for n in self.splits)
             and len(set(self.splits)) == len(self.splits),
             "splits", f"distinct ints in 1..num_train-1 = 1..{self.num_train - 1} (unlabeled must not be empty)")
        object.__setattr__(self, "splits", tuple(sorted(self.splits)))
        for f in ("distractor_share", "style_shift", "id_distractor_share"):
            need(isinstance(getattr(self, f), (int, float)) and 0.0 <= getattr(self, f) <= 1.0, f, "a number in [0, 1]")
            object.__setattr__(self, f, float(getattr(self, f)))
        need(isinstance(self.seed, int) and self.seed >= 0, "seed", "an int >= 0")
        need(self.id_class_prior in ID_CLASS_PRIORS, "id_class_prior", " or ".join(ID_CLASS_PRIORS))

    @classmethod
    def smoke(cls, **overrides) -> "ShapesSpec":
        """A tiny dataset for tests and `--smoke` runs (generates in about a second)."""
        return cls(**{**dict(num_train=40, num_val=16, num_test=16, num_ood=40, num_source=40, splits=(8, 16)),
                      **overrides})

    def to_dict(self) -> dict:
        out = {**dataclasses.asdict(self), "splits": list(self.splits)}
        if self.id_class_prior == "skewed":  # the first default is left out: such specs keep their digest (cache)
            del out["id_class_prior"]
        if self.num_test == 0:              # likewise for a spec without a test split
            del out["num_test"]
        if not self.id_distractor_share:    # ... and one without distractors in the ID domain
            del out["id_distractor_share"]
        return out

    def digest(self) -> str:
        """Short content key: the spec's fields and the generator version."""
        blob = json.dumps({"spec": self.to_dict(), "generator": GENERATOR_VERSION}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def domain_contents(spec: ShapesSpec) -> dict[str, render.Content]:
    """What each domain contains. Probabilities are over source-vocabulary ids 1..10 (targets, then distractors)."""
    d = spec.distractor_share
    id_prior = _ID_PRIOR if spec.id_class_prior == "skewed" else (1.0 / _NUM_TARGET,) * _NUM_TARGET
    di = spec.id_distractor_share
    id_probs = tuple((1 - di) * p for p in id_prior) + tuple(di / len(DISTRACTOR_NAMES) for _ in DISTRACTOR_NAMES)
    ood_probs = tuple((1 - d) * p for p in _OOD_PRIOR) + tuple(d / len(DISTRACTOR_NAMES) for _ in DISTRACTOR_NAMES)
    src_probs = (1.0,) * (SOURCE_VOCAB.num_classes - 1)
    id_content = render.Content(num_objects=(1, 3), num_clutter=(0, 2), radius=(0.16, 0.30), class_probs=id_probs)
    return {
        "train": id_content,
        "val": id_content,
        "test": id_content,
        "ood": render.Content(num_objects=(2, 5), num_clutter=(3, 8), radius=(0.12, 0.34), class_probs=ood_probs),
        "source": render.Content(num_objects=(2, 5), num_clutter=(1, 6), radius=(0.10, 0.36), class_probs=src_probs),
    }


def _rng(spec: ShapesSpec, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=key))


def _to_target(source_labels: np.ndarray) -> np.ndarray:
    """Source-vocabulary labels -> target-vocabulary labels: distractors become background, 255 stays 255."""
    lut = np.arange(256, dtype=np.uint8)
    lut[_NUM_TARGET + 1:255] = 0
    return lut[source_labels]


class _Writer:
    """Writes files under a root and keeps the sha256 of each, for the manifest digest."""

    def __init__(self, root: Path):
        self.root, self.hashes = root, {}

    def write(self, rel: str, data: bytes) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.hashes[rel] = hashlib.sha256(data).hexdigest()

    def image(self, rel: str, rgb: np.ndarray) -> None:
        from PIL import Image
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="JPEG", quality=JPEG_QUALITY)
        self.write(rel, buf.getvalue())

    def mask(self, rel: str, labels: np.ndarray) -> None:
        buf = io.BytesIO()
        mask_to_image(labels).save(buf, format="PNG")
        self.write(rel, buf.getvalue())

    def split(self, rel: str, pairs: list[tuple[str, str]]) -> None:
        write_split_file(self.root / rel, pairs)
        self.hashes[rel] = hashlib.sha256((self.root / rel).read_bytes()).hexdigest()

    def digest(self) -> str:
        h = hashlib.sha256()
        for rel in sorted(self.hashes):
            h.update(f"{rel}\0{self.hashes[rel]}\n".encode())
        return h.hexdigest()


def _pair(ident: str) -> tuple[str, str]:
    return f"JPEGImages/{ident}.jpg", f"SegmentationClass/{ident}.png"


def _split_order(spec: ShapesSpec, present: list[set[int]]) -> np.ndarray:
    """A permutation of the train pool whose smallest labeled split shows every target class the pool has.

    Splits are prefixes of one permutation, hence nested (8 ⊂ 16 ⊂ ...). Redrawing until the smallest split covers
    all classes avoids a class that no labeled image shows (its IoU would be 0 for reasons unrelated to the method).
    """
    wanted = set().union(*present)
    perm = _rng(spec, 10, 0).permutation(spec.num_train)
    for attempt in range(1, 200):
        if wanted <= set().union(*(present[i] for i in perm[:spec.splits[0]])):
            break
        perm = _rng(spec, 10, attempt).permutation(spec.num_train)
    return perm


def _render_domain(spec: ShapesSpec, root: Path, domain: str, count: int, bar=None
                   ) -> tuple[dict[str, str], list[set[int]]]:
    """Draw and write the images of one domain. Returns file hashes and, per image, the target ids shown."""
    w, content, present = _Writer(root), domain_contents(spec)[domain], []
    for i in range(count):
        if bar is not None:
            bar.update(1)   # counts the image being drawn: cheap, and the ETA needs no more precision
        rng = _rng(spec, _DOMAINS[domain], i)
        if domain in ("train", "val", "test"):
            img, lab = render.render_scene(rng, spec.image_size, content, 0.0)
            target = _to_target(lab)   # distractors (data.id_distractor_share) are background in ID labels
            w.image(f"JPEGImages/{domain}_{i:05d}.jpg", img)
            w.mask(f"SegmentationClass/{domain}_{i:05d}.png", target)
            present.append(set(np.unique(target).tolist()) - {0, 255})
        elif domain == "ood":
            img, lab = render.render_scene(rng, spec.image_size, content, spec.style_shift)
            w.image(f"ood/JPEGImages/ood_{i:05d}.jpg", img)
            w.mask(f"ood/SegmentationClass/ood_{i:05d}.png", _to_target(lab))
            w.mask(f"ood/SegmentationClassSource/ood_{i:05d}.png", lab)
        else:  # source: every image its own style, from ID-like to alien
            img, lab = render.render_scene(rng, spec.image_size, content, float(rng.random()))
            w.image(f"source/JPEGImages/src_{i:05d}.jpg", img)
            w.mask(f"source/SegmentationClass/src_{i:05d}.png", lab)
    return w.hashes, present


def _write_all(spec: ShapesSpec, root: Path, progress=None) -> dict:
    from orchestrator.core.progress import silent

    w = _Writer(root)
    total = spec.num_train + spec.num_val + spec.num_test + spec.num_ood + spec.num_source
    bar = (progress or silent)("generating the shapes benchmark", total, "image")
    w.write("classes.json", json.dumps({"target": TARGET_VOCAB.to_dict(), "source": SOURCE_VOCAB.to_dict(),
                                        "distractors": list(DISTRACTOR_NAMES)}, indent=2, sort_keys=True).encode())
    present: list[set[int]] = []
    for domain, count in (("train", spec.num_train), ("val", spec.num_val), ("test", spec.num_test),
                          ("ood", spec.num_ood), ("source", spec.num_source)):
        hashes, shown = _render_domain(spec, root, domain, count, bar)
        w.hashes.update(hashes)
        present += shown if domain == "train" else []

    bar.close()
    perm = _split_order(spec, present)
    for n in spec.splits:
        labeled = set(perm[:n].tolist())
        w.split(f"splits/{n}/labeled.txt", [_pair(f"train_{i:05d}") for i in sorted(labeled)])
        w.split(f"splits/{n}/unlabeled.txt", [_pair(f"train_{i:05d}") for i in range(spec.num_train) if i not in labeled])
    w.split("splits/val.txt", [_pair(f"val_{i:05d}") for i in range(spec.num_val)])
    if spec.num_test:
        w.split("splits/test.txt", [_pair(f"test_{i:05d}") for i in range(spec.num_test)])
    w.split("ood/list.txt", [_pair(f"ood_{i:05d}") for i in range(spec.num_ood)])
    w.split("source/list.txt", [_pair(f"src_{i:05d}") for i in range(spec.num_source)])

    manifest = {
        "name": f"shapes-{spec.digest()}", "generator_version": GENERATOR_VERSION, "seed": spec.seed,
        "spec": spec.to_dict(),
        "counts": {"train": spec.num_train, "val": spec.num_val, "test": spec.num_test, "ood": spec.num_ood,
                   "source": spec.num_source,
                   "files": len(w.hashes)},
        "digest": w.digest(),
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))  # last: marks completeness
    return manifest


def generate_shapes(spec: ShapesSpec, out_dir: str | Path, overwrite: bool = False, progress=None) -> dict:
    """Generate the dataset into `out_dir` atomically and return its manifest.

    Files are written to a sibling temp folder that is renamed into place at the end, so an interrupted run never
    leaves a folder that looks complete. An existing non-empty `out_dir` is an error unless `overwrite`.
    One process, on purpose: the default spec takes ~20 s, and worker processes would re-import the caller's
    __main__ (spawn) or copy its Ray/torch threads (fork). `progress`: a core.progress factory (default silent).
    """
    out_dir = Path(out_dir).expanduser().absolute()
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise DatasetError(f"{out_dir} already exists and is not empty; delete it, choose another folder, "
                           "or pass overwrite=True (`python run.py data synth --overwrite`)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        manifest = _write_all(spec, tmp, progress)
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old)  # replaces the empty placeholder `old`
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def default_shapes_root(cache_root: str | Path, spec: ShapesSpec) -> Path:
    return Path(cache_root) / "data" / f"shapes-{spec.digest()}"


def ensure_shapes(cache_root: str | Path, spec: ShapesSpec, progress=None) -> Path:
    """The dataset folder for `spec` under the cache, generated once (a file lock serialises concurrent callers)."""
    root = default_shapes_root(cache_root, spec)
    if (root / "manifest.json").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(root.parent / f".{root.name}.lock", f"the shapes benchmark {root.name}"):
        if not (root / "manifest.json").is_file():
            generate_shapes(spec, root, overwrite=True, progress=progress)  # a folder without manifest is a leftover: replace it
    return root
