"""A controlled weakening of the teacher: `teacher.label_noise` = the share of its object segments relabeled.

The paper's premise is a strong open-vocabulary teacher. To ask how strong it must be, the teacher's OOD labels
are corrupted at a known rate when they are produced: every object segment (a 4-connected region of one target
class in a label map) independently gets, with probability `rate`, another target class drawn uniformly.
Background and ignored pixels stay; the confidence plane stays too, so the wrong segments are as confident as
the right ones (a thresholded teacher cannot filter them out). This lowers the teacher's object precision about
in proportion to the rate, the error that matters here: objects called the wrong target class.

The draw is seeded by the image id alone, so a label set is the same whichever actor, batch or node labels it,
and two sweeps at one rate get the same labels (the rate is part of the label cache key).
"""
from __future__ import annotations

import hashlib

import numpy as np

from orchestrator.core.masks import IGNORE

SALT = b"semiovs-label-noise-v1"


def image_rng(image_id: str) -> np.random.Generator:
    digest = hashlib.sha256(SALT + str(image_id).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def corrupt_label(label: np.ndarray, rate: float, num_classes: int, image_id: str) -> np.ndarray:
    """`label` (class ids, 0 = background, IGNORE kept) with each object segment relabeled with probability rate."""
    if rate <= 0 or num_classes < 3:     # needs at least two target classes to swap between
        return label
    from scipy import ndimage

    rng = image_rng(image_id)
    out = np.array(label, copy=True)
    for cls in range(1, num_classes):
        segments, count = ndimage.label(label == cls)     # 4-connected components of this class
        if count == 0:
            continue
        flip = rng.random(count) < rate
        others = rng.integers(1, num_classes - 1, size=count)   # 1..k-2, shifted past `cls` below
        new = np.where(others >= cls, others + 1, others)
        for seg in np.flatnonzero(flip):
            out[segments == seg + 1] = new[seg]
    out[label == IGNORE] = IGNORE
    return out
