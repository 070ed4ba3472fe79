"""How many OOD images go into each unlabeled batch, and which ones: pure decisions, no I/O.

`ood.ratio` is the share of each unlabeled batch drawn from the OOD corpus (0 = ID only, 0.5 = one-to-one as in
the paper). A batch holds whole images, so a ratio like 0.3 of 8 is realised as a mix of 2s and 3s whose average
is 2.4. The extra images are spread evenly (not at random), so the proportion is right over any stretch of
training, including a trial that a scheduler stops early.
"""
from __future__ import annotations

from typing import Sequence, TypeVar

import numpy as np

T = TypeVar("T")


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


def split_batch(batch_size: int, ood_count: int) -> tuple[int, int]:
    """(ID images, OOD images) of one unlabeled batch of `batch_size` holding `ood_count` OOD images."""
    if not 0 <= ood_count <= batch_size:
        raise ValueError(f"ood_count {ood_count} must be within 0..batch_size={batch_size}")
    return batch_size - ood_count, ood_count


def subsample_corpus(items: Sequence[T], num_images: int, seed: int) -> list[T]:
    """A seeded subset of `num_images` items (0 = all), in the corpus' own order.

    Subsets for one seed are nested (the 1000-image subset contains the 500-image one), so sweeping
    `ood.num_images` adds images rather than swapping them.
    """
    if not isinstance(num_images, (int, np.integer)) or num_images < 0:
        raise ValueError(f"ood.num_images must be an int >= 0 (0 = the whole corpus), got {num_images!r}")
    if num_images == 0:
        return list(items)
    if num_images > len(items):
        raise ValueError(f"ood.num_images = {num_images} but the OOD corpus has only {len(items)} images; "
                         "lower ood.num_images or use 0 for the whole corpus")
    keep = np.sort(np.random.default_rng(seed).permutation(len(items))[:num_images])
    return [items[i] for i in keep]


def plan_ood_indices(num_items: int, counts: np.ndarray, seed: int) -> list[np.ndarray]:
    """Which corpus items each step uses: reshuffled passes over the corpus (every item once per pass), cut
    into the per-step counts. Deterministic in seed; independent of how many workers read the plan."""
    if num_items < 1 and int(np.sum(counts)) > 0:
        raise ValueError("the OOD corpus is empty but the plan asks for OOD images; set ood.ratio = 0")
    need = int(np.sum(counts))
    rng = np.random.default_rng(seed)
    passes = [rng.permutation(num_items) for _ in range(-(-need // num_items))] if need else []
    stream = np.concatenate(passes) if passes else np.zeros(0, dtype=np.int64)
    return np.split(stream[:need], np.cumsum(counts)[:-1]) if len(counts) else []
