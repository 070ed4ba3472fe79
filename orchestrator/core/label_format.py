"""The on-disk format of OOD pseudo-labels, shared by their writer (orchestrator.labels) and their reader
(the training workers).

An entry's `shards/*.parquet` hold one row per OOD image: `image_id`, `label` and `confidence` (greyscale
PNG bytes; confidence as uint8 = round(255·p)), `error` (non-empty for an image that could not be read),
`class_pixels` and `conf_hist` (for the diagnostics), `node` (the Ray node that labeled it). Thresholds on
confidence are applied when training reads the labels, so sweeping a threshold never re-runs the teacher.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from orchestrator.core.masks import IGNORE

SHARDS_DIR = "shards"


def apply_threshold(label: np.ndarray, confidence_u8: np.ndarray, thresh: float) -> np.ndarray:
    """Teacher pixels below `thresh` become IGNORE (left out of the OOD loss)."""
    if thresh <= 0:
        return label
    out = label.copy()
    out[confidence_u8 < round(255 * thresh)] = IGNORE
    return out


def read_label_table(entry: str | Path) -> dict[str, tuple[bytes, bytes]]:
    """image_id → (label PNG, confidence PNG) for every image the teacher labeled (broken ones left out)."""
    import pyarrow.parquet as pq

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
