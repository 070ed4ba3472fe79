"""Per-step batches of the three streams (labeled, ID unlabeled, OOD), read from files on disk.

Each worker draws from its own shard. Every step draws from its own generator, seeded by (the worker's
seed, the global step) (`reseed`), so a step's batch is a pure function of those two: the same whether it
is made in the training process or in a loader process (trainables.loader), and after a resume. A sample
that cannot be read is skipped, counted and remembered (the run lists them), and another one is drawn in
its place.
Where the OOD corpus has ground truth, the OOD batch also carries it (`gt_o`), only to measure the OOD labels.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

from orchestrator.core.images import check_classes
from orchestrator.core.masks import IGNORE
from trainables import augment

ID_UNLABELED_FILL = 254  # crop padding of ID unlabeled masks (the paper marks it, then ignores it)


@lru_cache(maxsize=16384)
def load_image_cached(path: str) -> np.ndarray:
    from orchestrator.core.images import load_image

    return load_image(path)


@lru_cache(maxsize=16384)
def load_mask_cached(path: str) -> np.ndarray:
    from orchestrator.core.images import load_mask

    return load_mask(path)


@dataclass
class BrokenSamples:
    paths: dict[str, str] = field(default_factory=dict)   # path -> reason

    def add(self, path: str, reason: str) -> None:
        self.paths.setdefault(path, reason)

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class OODLabels:
    """Teacher labels of OOD images, by image id: PNG bytes decoded on use, thresholded by confidence."""
    table: dict[str, tuple[bytes, bytes]]
    thresh: float

    def get(self, image_id: str) -> np.ndarray:
        from orchestrator.core.label_format import apply_threshold
        from orchestrator.core.masks import decode_png

        label_png, conf_png = self.table[image_id]
        if self.thresh <= 0:   # nothing to cut: the confidence plane is not even decoded
            return decode_png(label_png)
        return apply_threshold(decode_png(label_png), decode_png(conf_png), self.thresh)


@dataclass(frozen=True)
class StreamFiles:
    """The files of one worker's three streams (its shard of the unlabeled and OOD ones)."""
    labeled: Sequence[tuple[str, str | None]]
    unlabeled: Sequence[tuple[str, str | None]] = ()
    ood: Sequence[tuple[str, str]] = ()             # (image_id, path)
    ood_masks: Sequence[str | None] = ()             # OOD ground truth parallel to `ood` (None = no mask)


class StreamSampler:
    def __init__(self, files: StreamFiles, *, ood_labels: OODLabels | None, crop: int, seed: int,
                 broken: BrokenSamples, max_broken_share: float, num_classes: int = 0):
        self.num_classes = num_classes   # > 0: a labeled mask with another class value is skipped as broken
        self.labeled = list(files.labeled)
        self.unlabeled = list(files.unlabeled)
        self.ood = list(files.ood)
        # ground truth of OOD images, by image id (only measured against, never trained on)
        self.ood_truth = {image_id: mask for (image_id, _), mask in zip(self.ood, files.ood_masks) if mask}
        self.ood_labels = ood_labels
        self.crop = crop
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.broken = broken
        self.max_broken_share = max_broken_share
        total = len(self.labeled) + len(self.unlabeled) + len(self.ood)
        self._broken_limit = max(1, int(max_broken_share * total))
        self._skipped: set[str] = set()   # training files only: `broken` also lists val files

    def reseed(self, step: int) -> None:
        """Draw the samples of global step `step` from a generator of their own (see the module doc)."""
        self.rng = np.random.default_rng((self.seed, step))

    @property
    def skipped(self) -> frozenset[str]:
        """The training files found unreadable so far."""
        return frozenset(self._skipped)

    def record_broken(self, path: str, reason: str) -> None:
        """A training file that could not be read (here, or in a loader process)."""
        self.broken.add(path, reason)
        self._skipped.add(path)

    def check_broken(self, example: str = "") -> None:
        """Stop the run once more than data.max_broken_share of its training images proved unreadable."""
        from orchestrator.core.errors import UserError

        if len(self._skipped) > self._broken_limit:
            path = example or next(iter(self._skipped))
            reason = self.broken.paths.get(path, "")
            raise UserError(
                f"more than {self.max_broken_share:.0%} of the training images are unreadable "
                f"({len(self._skipped)}, e.g. {path}: {reason}). Fix: run "
                f"`python run.py data check <root>` and repair them, or raise data.max_broken_share.")

    def _draw(self, items: list, read):
        """Read a random item, skipping (and recording) broken ones."""
        from orchestrator.core.images import SampleError

        while True:
            item = items[int(self.rng.integers(len(items)))]
            try:
                return read(item)
            except SampleError as err:
                self.record_broken(str(err.path), err.reason)
                self.check_broken(str(err.path))

    def labeled_batch(self, n: int) -> dict[str, torch.Tensor]:
        def read(pair):
            image, mask = load_image_cached(pair[0]), load_mask_cached(pair[1])
            if self.num_classes:
                check_classes(mask, self.num_classes, pair[1])
            return augment.weak_pair(image, mask, self.crop, IGNORE, self.rng)

        xs, ys = zip(*(self._draw(self.labeled, read) for _ in range(n)))
        return {"x": torch.stack(xs), "y": torch.stack(ys)}

    def unlabeled_batch(self, n: int, prefix: str) -> dict[str, torch.Tensor]:
        """ID unlabeled views; prefix 'u' (main draw, with boxes) or 'm' (the CutMix partner draw)."""
        def read(pair):
            image = load_image_cached(pair[0])
            blank = np.zeros(image.shape[:2], np.uint8)  # labels of unlabeled images are never read
            return augment.unlabeled_views(image, blank, self.crop, ID_UNLABELED_FILL, self.rng)

        views = [self._draw(self.unlabeled, read) for _ in range(n)]
        out = {f"{prefix}_w": _stack(views, "u_w", n, (3, self.crop, self.crop)),
               f"{prefix}_s1": _stack(views, "u_s1", n, (3, self.crop, self.crop)),
               f"{prefix}_s2": _stack(views, "u_s2", n, (3, self.crop, self.crop)),
               f"ign_{prefix}": _stack(views, "ign", n, (self.crop, self.crop), torch.uint8)}
        if prefix == "u":
            out["box1"] = _stack(views, "box1", n, (self.crop, self.crop), torch.uint8)
            out["box2"] = _stack(views, "box2", n, (self.crop, self.crop), torch.uint8)
        return out

    def ood_batch(self, n: int) -> dict[str, torch.Tensor]:
        def read(item):
            image_id, path = item
            image = load_image_cached(path)
            gt = self._ood_truth(image_id, image.shape[:2])
            if self.ood_labels is None:  # student labels it itself; only padding is marked
                return augment.unlabeled_views(image, np.zeros(image.shape[:2], np.uint8), self.crop, IGNORE,
                                               self.rng, gt=gt)
            return augment.unlabeled_views(image, self.ood_labels.get(image_id), self.crop, IGNORE, self.rng, gt=gt)

        views = [self._draw(self.ood, read) for _ in range(n)]
        size = (self.crop, self.crop)
        y_o = _stack(views, "mask", n, size, torch.long)
        y_o = torch.where(y_o == IGNORE, torch.zeros_like(y_o), y_o)  # ignored via ign_o (the paper's order)
        out = {"o_w": _stack(views, "u_w", n, (3, *size)), "o_s1": _stack(views, "u_s1", n, (3, *size)),
               "o_s2": _stack(views, "u_s2", n, (3, *size)), "ign_o": _stack(views, "ign", n, size, torch.uint8),
               "y_o": y_o}
        if self.ood_truth:
            out["gt_o"] = _stack(views, "gt", n, size, torch.long)
        return out

    def _ood_truth(self, image_id: str, shape: tuple[int, int]) -> np.ndarray | None:
        """The image's ground-truth mask; all 255 (none) when it has none or it cannot be used. It is only
        measured against, so an unreadable mask must not drop a training sample."""
        from orchestrator.core.images import SampleError

        if not self.ood_truth:
            return None
        path = self.ood_truth.get(image_id)
        try:
            mask = load_mask_cached(path) if path else None
        except SampleError:
            mask = None
        return mask if mask is not None and mask.shape == shape else np.full(shape, IGNORE, np.uint8)


def _stack(views: list[dict], key: str, n: int, shape: tuple, dtype=torch.float32) -> torch.Tensor:
    if n == 0:
        return torch.zeros((0, *shape), dtype=dtype)
    return torch.stack([v[key] for v in views]).to(dtype)
