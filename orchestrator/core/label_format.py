"""The on-disk format of OOD pseudo-labels, shared by their writer (orchestrator.labels) and their reader
(the training workers).

An entry's `shards/*.parquet` hold one row per OOD image: `image_id`, `label` and `confidence` (greyscale
PNG bytes; confidence as uint8 = round(255·p)), `error` (non-empty for an image that could not be read),
`class_pixels` and `conf_hist` (for the diagnostics), `node` (the Ray node that labeled it). Thresholds on
confidence are applied when training reads the labels, so sweeping a threshold never re-runs the teacher.

The entry's `manifest.json` records the size and sha256 of every shard (`shards`). A reader checks them first,
so a shard truncated or changed after the entry completed is named, never read as fewer or wrong labels.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.core.digest import checksum_problem, file_checksum
from orchestrator.core.errors import UserError
from orchestrator.core.masks import IGNORE

SHARDS_DIR = "shards"
MANIFEST = "manifest.json"
REBUILD_HINT = ("run the same command again (a sweep with --resume): before any trial starts, the driver checks "
                "every label entry it reuses and relabels a damaged one; or delete the entry and run "
                "`python run.py label` with the same --set values")


class DamagedEntry(UserError):
    """A label entry's shards differ from the checksums its manifest recorded."""


def _shard_names(shards: Path) -> list[str]:
    return sorted(p.relative_to(shards).as_posix() for p in shards.rglob("*") if p.is_file()) \
        if shards.is_dir() else []


def shard_checksums(entry: str | Path) -> dict[str, dict[str, Any]]:
    """Relative shard path → {bytes, sha256}, for every file under the entry's shards folder."""
    shards = Path(entry) / SHARDS_DIR
    return {name: file_checksum(shards / name) for name in _shard_names(shards)}


def shard_problems(entry: str | Path) -> list[str]:
    """How the entry's shards differ from its manifest ([] = intact, or an entry older than the checksums)."""
    entry = Path(entry)
    try:
        recorded = json.loads((entry / MANIFEST).read_text()).get("shards")
    except (OSError, ValueError) as err:
        return [f"its manifest cannot be read ({err})"]
    if recorded is None:
        return []
    shards = entry / SHARDS_DIR
    problems = [p for name, want in sorted(recorded.items()) if (p := checksum_problem(shards / name, want))]
    extra = sorted(set(_shard_names(shards)) - set(recorded))
    return problems + [f"{shards / name} was not written by the labeling run" for name in extra]


def verify_entry(entry: str | Path) -> None:
    """Raise DamagedEntry naming the entry, what is wrong and how to rebuild it."""
    problems = shard_problems(entry)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DamagedEntry(f"the OOD label cache entry {entry} is damaged: {problems[0]}{more}. Fix: {REBUILD_HINT}.")


def apply_threshold(label: np.ndarray, confidence_u8: np.ndarray, thresh: float) -> np.ndarray:
    """Teacher pixels below `thresh` become IGNORE (left out of the OOD loss)."""
    if thresh <= 0:
        return label
    out = label.copy()
    out[confidence_u8 < round(255 * thresh)] = IGNORE
    return out


def read_label_table(entry: str | Path) -> dict[str, tuple[bytes, bytes]]:
    """image_id → (label PNG, confidence PNG) for every image the teacher labeled (broken ones left out).
    Checks the shards against the manifest's checksums first (DamagedEntry)."""
    import pyarrow.parquet as pq

    verify_entry(entry)
    table = pq.read_table(Path(entry) / SHARDS_DIR, columns=["image_id", "label", "confidence", "error"])
    ids, labels, confs, errors = (table.column(c).to_pylist() for c in ("image_id", "label", "confidence", "error"))
    return {i: (l, c) for i, l, c, e in zip(ids, labels, confs, errors) if not e}


MANIFEST = "manifest.json"
QUALITY_METRICS = {"object_precision": "teacher_ood_precision", "miou": "teacher_ood_miou"}


def read_label_quality(entry: str | Path) -> dict[str, float]:
    """The label set's quality against OOD ground truth, as the labeling run measured it (manifest →
    diagnostics → ground_truth): `teacher_ood_precision` and `teacher_ood_miou`, in percent. Empty when the
    corpus has no ground truth, or the set was labeled before precision was measured."""
    import json

    try:
        truth = json.loads((Path(entry) / MANIFEST).read_text())["diagnostics"]["ground_truth"] or {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {name: float(truth[key]) for key, name in QUALITY_METRICS.items() if truth.get(key) is not None}
