"""Everything about ranks, devices and where reports go, in one place.

The train loop asks `ctx.is_main` and calls `ctx.report(...)`; it never looks at Ray itself.
Three ways to run the same loop:
  * `train` — Ray Train workers (DDP when world_size > 1): reports go through `ray.train.report`
    (and on to Tune via TuneReportCallback when inside a sweep);
  * `tune-local` — `train.num_workers: 0` inside a Tune trial: Train's local mode drops reports, so
    they go straight to `ray.tune.report`;
  * `local` — `train.num_workers: 0` outside Tune (`run.py train`): reports go to a callback.
"""
from __future__ import annotations

import importlib
import os
import tempfile
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable

import torch

from orchestrator.core.console import ray_log_level


@dataclass
class WorkerContext:
    mode: str                       # train | tune-local | local
    rank: int
    world_size: int
    device: torch.device
    on_report: Callable[[dict[str, Any], Any], None] | None = None   # local mode: (metrics, Checkpoint)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.mode == "train" and self.world_size > 1

    def prepare_model(self, model: torch.nn.Module, sync_bn: bool) -> torch.nn.Module:
        model = model.to(self.device)
        if not self.distributed:
            return model
        if sync_bn and self.device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def latest_checkpoint(self) -> dict[str, dict[str, Any]] | None:
        """The newest checkpoint of this run (after a worker failure or a resumed sweep): file name → dict."""
        if self.mode == "local":
            return None
        if self.mode == "tune-local":
            import ray.tune

            ckpt = ray.tune.get_checkpoint()
        else:
            import ray.train

            ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as folder:
            return {name: torch.load(os.path.join(folder, name), map_location="cpu", weights_only=True)
                    for name in sorted(os.listdir(folder)) if name.endswith(".pt")}

    def report(self, metrics: dict[str, Any], files: dict[str, dict[str, Any]] | None) -> None:
        """Report an epoch's metrics with the checkpoint's files (file name → dict; saved by rank 0 only;
        every rank calls this)."""
        if self.mode == "local":
            # Train's local mode keeps only the last report: the callback logs each epoch and keeps the
            # run's best and latest checkpoint folders (orchestrator.single_run)
            import ray.train

            checkpoint = None
            if files is not None:
                from ray.train import Checkpoint

                folder = tempfile.mkdtemp(prefix="semiovs-local-ckpt-")
                save_checkpoint(files, folder)
                checkpoint = Checkpoint.from_directory(folder)
            if self.on_report:
                self.on_report(metrics, checkpoint)
            ray.train.report(metrics, checkpoint=checkpoint)
            return
        # Tune's report wants Tune's Checkpoint class (Train's draws a deprecation warning per report).
        api = importlib.import_module("ray.tune" if self.mode == "tune-local" else "ray.train")
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = None
            if files is not None and self.is_main:
                save_checkpoint(files, folder)
                checkpoint = api.Checkpoint.from_directory(folder)
            api.report(metrics, checkpoint=checkpoint)


def save_checkpoint(files: dict[str, dict[str, Any]], folder: str) -> None:
    """Each checkpoint file whole or not at all (a full disk must not leave a torn one to upload). Ray then
    copies the folder to storage and registers the checkpoint only once the copy has succeeded, so a
    resume never picks a half-copied one: it resumes from the one before."""
    for name, content in files.items():
        save_file(content, Path(folder) / name)


def save_file(content: dict[str, Any], path: Path) -> None:
    """One torch file, written to a temp name and renamed (core.atomic.replacing)."""
    from orchestrator.core.atomic import replacing

    try:
        with replacing(path) as tmp, open(tmp, "wb") as handle:
            torch.save(content, handle)   # through a Python file, so a failed write is an OSError...
    except RuntimeError as err:
        if isinstance(err.__context__, OSError):   # ...which torch's zip writer hides behind its own error
            raise err.__context__ from None
        raise


def quiet_report_lines() -> None:
    """A Train worker logs each report at INFO ("Reporting training result 1: TrainingReport(...)", ~900
    characters, forwarded to the driver's console) through a logger Ray 2.60 names by its file's path
    (ray/train/v2/_internal/execution/context.py: `logging.getLogger(__file__)`), so RunConfig's LoggingConfig,
    which sets the `ray.train` loggers, misses it; it reaches the console through the root logger Train sets up
    in the worker. Its own level is set here instead: WARNING, or INFO with --verbose (orchestrator.trial)."""
    import logging

    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(ray_log_level())


def make_context(mode: str, gpus_per_worker: float, on_report=None) -> WorkerContext:
    if mode == "train":
        import ray.train
        import ray.train.torch

        quiet_report_lines()
        ctx = ray.train.get_context()
        return WorkerContext(mode, ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device())
    if mode == "tune-local":
        # Tune's storage logs every epoch's checkpoint at INFO to the driver's console; our progress line
        # already says the epoch ended. Ray's log files keep it.
        import logging

        logging.getLogger("ray.train._internal.storage").setLevel(ray_log_level())
    use_cuda = gpus_per_worker > 0 and torch.cuda.is_available()
    return WorkerContext(mode, 0, 1, torch.device("cuda" if use_cuda else "cpu"), on_report)
