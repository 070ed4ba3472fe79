"""How many OOD images go into each unlabeled batch: a pure decision, no I/O.

`ood.ratio` is the share of each unlabeled batch drawn from the OOD corpus (0 = ID only, 0.5 = one-to-one as in
the paper). A batch holds whole images, so a ratio like 0.3 of 8 is realised as a mix of 2s and 3s whose average
is 2.4. The extra images are spread evenly (not at random), so the proportion is right over any stretch of
training, including a trial that a scheduler stops early.
"""
from __future__ import annotations

import numpy as np


def plan_ood_counts(batch_size: int, ratio: float, num_steps: int, seed: int) -> np.ndarray:
    """OOD images per step (int64, length num_steps); each is floor or ceil of batch_size * ratio.

    The total is round(batch_size * ratio * num_steps) (exact up to integer rounding) and every prefix of the
    plan is within one image of its exact share. The seed only shifts the phase of the pattern.
    """
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r} (train.batch_size)")
    if not 0.0 <= float(ratio) <= 1.0:
        raise ValueError(f"ood.ratio must be in [0, 1] (share of each unlabeled batch drawn from OOD), got {ratio!r}")
    if not isinstance(num_steps, (int, np.integer)) or num_steps < 0:
        raise ValueError(f"num_steps must be an int >= 0, got {num_steps!r}")
    if num_steps == 0:
        return np.zeros(0, dtype=np.int64)
    total = int(round(float(ratio) * batch_size * num_steps))
    phase = int(np.random.default_rng(seed).integers(num_steps))
    # counts[t] = floor(((t+1)*total + phase) / N) - floor((t*total + phase) / N): integer arithmetic, exact sum.
    edges = (np.arange(num_steps + 1, dtype=np.int64) * total + phase) // num_steps
    return np.diff(edges)
