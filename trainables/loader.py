"""The training input pipeline: each step's batch of the three streams, made ahead of the step.

`train.loader_workers: 0` makes each batch in the training process, between steps. With N > 0 a torch
`DataLoader` runs N processes that decode and augment the coming steps while the model trains on the
current one (`prefetch_factor` steps each), into pinned memory on CUDA so the copy to the device is
asynchronous (`non_blocking`).

Both paths make the same batches: the unit of work is one whole step, and a step's batch is a pure function
of (the worker's seed, the global step) (trainables.streams). So the batches do not depend on how many
loader processes there are, and a run resumed at an epoch boundary draws exactly what the uninterrupted run
drew. Unreadable samples that a loader process meets travel back with its batch and join the run's list.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from trainables.streams import StreamSampler

PREFETCH_STEPS = 2   # batches each loader process keeps ready (DataLoader's prefetch_factor)


@dataclass(frozen=True)
class StepPlan:
    """How many images of each stream every global step draws (pure; fixed for the run)."""
    labeled: int              # train.batch_size
    id_per_step: int | None   # ID unlabeled images per step without OOD (None = supervised: no unlabeled)
    total_unlabeled: int      # ID + OOD images per step when the run has an OOD stream
    ood_counts: np.ndarray    # OOD images of each global step (empty without an OOD stream)

    @property
    def uses_ood(self) -> bool:
        return len(self.ood_counts) > 0

    def sizes(self, step: int) -> tuple[int, int | None, int]:
        """(labeled, ID unlabeled or None, OOD) images of global step `step`."""
        if self.id_per_step is None:
            return self.labeled, None, 0
        if not self.uses_ood:
            return self.labeled, self.id_per_step, 0
        n_ood = int(self.ood_counts[step])
        return self.labeled, self.total_unlabeled - n_ood, n_ood


def make_step_batch(sampler: StreamSampler, plan: StepPlan, step: int) -> dict[str, torch.Tensor]:
    """Global step `step`'s batch: labeled, then ID unlabeled and its CutMix partner, then OOD."""
    sampler.reseed(step)
    n_x, n_u, n_o = plan.sizes(step)
    batch = sampler.labeled_batch(n_x)
    if n_u is not None:
        batch.update(sampler.unlabeled_batch(n_u, "u"))
        batch.update(sampler.unlabeled_batch(n_u, "m"))
        if plan.uses_ood:
            batch.update(sampler.ood_batch(n_o))
    return batch


class StepBatches(torch.utils.data.Dataset):
    """Map-style dataset whose index is the global step; item = that step's batch plus what went wrong.
    It has no length: the DataLoader walks an explicit range of steps."""

    def __init__(self, sampler: StreamSampler, plan: StepPlan):
        self.sampler = sampler
        self.plan = plan
        self._reported: set[str] = set()   # unreadable paths this process has already sent back

    def __getitem__(self, step: int) -> dict[str, Any]:
        from orchestrator.core.errors import UserError

        try:
            batch, error = make_step_batch(self.sampler, self.plan, step), ""
        except UserError as err:   # raised in a loader process, it would reach the run as a traceback
            batch, error = {}, str(err)
        # training files only: in-process, `broken` also holds the val files the evaluation met
        new = {p: self.sampler.broken.paths.get(p, "") for p in self.sampler.skipped if p not in self._reported}
        self._reported.update(new)
        return {"step": step, "batch": batch, "broken": new, "error": error}


@dataclass(frozen=True)
class LoaderOptions:
    workers: int = 0             # train.loader_workers
    pin_memory: bool = False     # on CUDA: page-locked batches, copied with non_blocking=True
    prefetch: int = PREFETCH_STEPS


def loader_options(workers: int, device: torch.device) -> LoaderOptions:
    return LoaderOptions(workers=workers, pin_memory=workers > 0 and device.type == "cuda")


class BatchStream:
    """The batches of global steps first … last-1, in order; `next(step)` also counts the time waited."""

    def __init__(self, dataset: StepBatches, first: int, last: int, options: LoaderOptions):
        self.dataset = dataset
        self.options = options
        self.expected = first
        self.wait_seconds = 0.0   # time the training loop spent blocked on its next batch
        self._items = self._iterate(first, last)

    def _iterate(self, first: int, last: int) -> Iterator[dict[str, Any]]:
        if self.options.workers == 0:
            return (self.dataset[step] for step in range(first, last))
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=None, sampler=range(first, last), num_workers=self.options.workers,
            prefetch_factor=self.options.prefetch, pin_memory=self.options.pin_memory)
        return iter(loader)

    def next(self, step: int) -> dict[str, torch.Tensor]:
        from orchestrator.core.errors import UserError

        started = time.perf_counter()
        item = next(self._items)
        self.wait_seconds += time.perf_counter() - started
        if item["step"] != step or step != self.expected:
            raise RuntimeError(f"the input pipeline is out of step: asked for step {step}, "
                               f"expected {self.expected}, got {item['step']}")
        self.expected += 1
        if item["error"]:
            raise UserError(item["error"])
        sampler = self.dataset.sampler   # this process's copy: gathers what every loader process met
        for path, reason in item["broken"].items():
            sampler.record_broken(path, reason)
        if item["broken"]:
            sampler.check_broken()
        return item["batch"]

    def close(self) -> None:
        """Stop the loader processes (also what happens when the stream is dropped)."""
        self._items = iter(())


def to_device(batch: dict[str, torch.Tensor], device: torch.device, channels_last: bool) -> dict[str, torch.Tensor]:
    """Move a batch to the device: asynchronously from pinned memory on CUDA; images NHWC if asked."""
    non_blocking = device.type == "cuda"
    out = {}
    for key, value in batch.items():
        value = value.to(device, non_blocking=non_blocking)
        if channels_last and value.dim() == 4 and value.is_floating_point():
            value = value.contiguous(memory_format=torch.channels_last)
        out[key] = value
    return out
