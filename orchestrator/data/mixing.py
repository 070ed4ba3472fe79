"""Which OOD images a run may use: a seeded, nested subset of the corpus (pure, no I/O)."""
from __future__ import annotations

from typing import Sequence, TypeVar

import numpy as np

T = TypeVar("T")


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
