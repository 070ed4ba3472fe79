"""`run.py train`: one training run without Tune (labels first if the run needs them), logged to MLflow."""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.core.config import build_config, flatten
from orchestrator.core.console import Console
from orchestrator.core import storage as store
from orchestrator.core.names import check_name
from orchestrator.core.paths import default_cache_root, default_storage_root, files_root, resolve_root, run_files_dir, train_run_name
from orchestrator.tracking import client as mlflow_runs
from orchestrator.tracking.stored import KeptCheckpoint


@dataclass
class TrainRequest:
    overrides: dict[str, Any] = field(default_factory=dict)
    experiment: str = "train"
    tracking_uri: str | None = None
    storage: str | None = None
    cache: str | None = None
    quiet: bool = False
    ray_address: str | None = None   # join this cluster (else RAY_ADDRESS, else a private local Ray)


def _epoch_printer(logger: mlflow_runs.EpochLogger, console: Console):
    """Each report: into MLflow once per epoch, and one line on the console."""
    def on_report(metrics: dict[str, Any], checkpoint=None) -> None:
        logger.log(metrics)
        console.say(f"epoch {metrics.get('epoch')}: val_miou {metrics.get('val_miou', float('nan')):.2f} "
                    f"(best {metrics.get('best_val_miou', float('nan')):.2f}) loss {metrics.get('loss', 0):.4f}")
    return on_report


class LocalCheckpoints:
    """Train's local mode keeps no checkpoints: this keeps the run's best and latest checkpoint folders (the
    rule of core.selection, as Train's retention) and removes the others, which the loop made as temp folders."""

    def __init__(self, selection):
        self.selection = selection
        self.epochs: dict[int, KeptCheckpoint] = {}
        self.filesystem = None

    def keep(self, metrics: dict[str, Any], checkpoint) -> None:
        if checkpoint is None:
            return
        self.filesystem = checkpoint.filesystem
        self.epochs[int(metrics["epoch"])] = KeptCheckpoint(checkpoint.path, dict(metrics))
        best = self.selection.best((self.epochs[e] for e in sorted(self.epochs)), lambda k: k.metrics)
        last = max(self.epochs)
        for epoch in [e for e, kept in self.epochs.items() if e != last and kept is not best]:
            shutil.rmtree(self.epochs.pop(epoch).folder, ignore_errors=True)

    def remove(self) -> None:
        for kept in self.epochs.values():
            shutil.rmtree(kept.folder, ignore_errors=True)


def make_report_callback(on_report):
    """A Ray Train UserCallback (runs in the Train controller) that hands each report to `on_report`."""
    from ray.train import UserCallback

    class LogEpochsToMLflow(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            on_report(metrics[0])

    return LogEpochsToMLflow()


def run_single(req: TrainRequest) -> dict[str, Any]:
    from orchestrator.data.plan import build_plan
    from orchestrator.labels.job import ensure_labels
    from orchestrator.preflight import check_shared_folders
    from orchestrator.runtime import init_ray
    from orchestrator.students.encoder import ensure_pretrained_encoder
    from orchestrator.trial import build_trainer, make_trial_input

    started = time.time()
    console = Console(req.quiet)
    check_name(req.experiment, "--experiment")
    cfg = build_config(req.overrides, "--set")
    cache = resolve_root(req.cache, default_cache_root())
    storage = store.resolve_storage(req.storage, default_storage_root())
    uri = mlflow_runs.resolve_tracking_uri(req.tracking_uri)
    if cfg.data.root:   # a dataset on disk: its errors show before Ray starts (only reads)
        build_plan(cfg, cache)
    console.say(init_ray(quiet=req.quiet, address=req.ray_address))
    check_shared_folders({"cache": cache, "storage": storage})   # before any work: every node sees them
    plan = build_plan(cfg, cache)   # generates the embedded benchmark on first use
    encoder = ensure_pretrained_encoder(cfg, cache, Path(plan.root), console.say, console.progress)
    label_store = None
    if cfg.uses_teacher_labels:
        outcome = ensure_labels(cfg, cache, console.say)
        console.say(outcome.summary())
        label_store = outcome.path
    experiment_id = mlflow_runs.ensure_experiment(uri, req.experiment)
    run_id = mlflow_runs.create_run(uri, experiment_id, f"{cfg.train.method}-{int(started)}",
                                    {"role": mlflow_runs.ROLE_RUN})
    mlflow_runs.log_params(uri, run_id, flatten(cfg))
    name = train_run_name(run_id)
    files = run_files_dir(files_root(storage, cache), name)
    local = cfg.train.num_workers == 0
    trial = make_trial_input(cfg, plan, label_store, files, mode="local" if local else "train",
                             encoder_file=str(encoder) if encoder else None)
    on_report = _epoch_printer(mlflow_runs.EpochLogger(uri, run_id, files), console)
    kept = LocalCheckpoints(trial.selection)

    def on_local_report(metrics: dict[str, Any], checkpoint) -> None:
        on_report(metrics)
        kept.keep(metrics, checkpoint)

    trainer = build_trainer(trial, name=name, storage=storage,
                            callbacks=[] if local else [make_report_callback(on_report)],
                            on_report=on_local_report if local else None)
    try:
        result = trainer.fit()
        checkpoints, filesystem = (list(kept.epochs.values()), kept.filesystem) if local else train_checkpoints(result)
        model_id = log_best_model(uri, experiment_id, run_id, checkpoints, result.metrics, filesystem,
                                  trial.selection)
    except BaseException:
        mlflow_runs.finish_run(uri, run_id, failed=True)
        raise
    finally:
        kept.remove()   # local mode's temp folders: the best one is in MLflow now
    mlflow_runs.finish_run(uri, run_id)
    metrics = result.metrics or {}
    return {"run_id": run_id, "experiment_id": experiment_id, "best_val_miou": metrics.get("best_val_miou"),
            "test_miou": metrics.get("test_miou"), "epochs": metrics.get("epoch"),
            "seconds": round(time.time() - started, 1), "model_uri": f"models:/{model_id}" if model_id else None,
            "checkpoint": None if local or not result.checkpoint else result.checkpoint.path}


def train_checkpoints(result) -> tuple[list[KeptCheckpoint], Any]:
    """The checkpoints Ray Train kept (the best and the latest), with their metrics."""
    kept = result.best_checkpoints or []
    return [KeptCheckpoint(c.path, dict(m)) for c, m in kept], next((c.filesystem for c, _ in kept), None)


def log_best_model(uri: str, experiment_id: str, run_id: str, checkpoints: list[KeptCheckpoint],
                   last: dict[str, Any] | None, filesystem, selection) -> str | None:
    """The run's best checkpoint as the run's MLflow model (None: no checkpoint was kept)."""
    from orchestrator.tracking.models import ROLE_RUN_MODEL, best_source, log_model

    source = best_source(checkpoints, last, selection)
    if source is None:
        return None
    return log_model(uri, experiment_id, run_id, {"role": ROLE_RUN_MODEL}, source, filesystem,
                     {"epoch": source.epoch})
