"""One trial: the Ray Tune function that builds a TorchTrainer and hands its workers a typed TrialInput.

The flat config crosses the Tune boundary once (base ← the trial's sampled values) and becomes an
ExperimentConfig here. The trial finds its files (orchestrator.data.plan) and reads the label store the
sweep driver labeled for its LabelRequest: a trial never runs the teacher, nor re-derives a cache key.
Metrics reach Tune through TuneReportCallback (Train V2 takes no Tune callbacks), or directly in local mode
(`train.num_workers: 0`).

Checkpoints: Ray Train keeps each trial's best checkpoint by the sweep's metric and mode, and its latest (what a
restart continues from). Tune does not see Train's checkpoints, so once training ends the trial reports its
best model to Tune as well (`model.pt` only, not the training state): Tune's own analysis of the sweep's
storage (`ExperimentAnalysis(...).best_checkpoint`, `ResultGrid.get_best_result().checkpoint`) finds it.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

from orchestrator.core.config import ExperimentConfig, config_from_flat
from orchestrator.core.console import ray_log_level
from orchestrator.core.errors import UserError
from orchestrator.core.nodes import CUSTOM_SHARE, this_node
from orchestrator.core.paths import run_files_dir, train_run_name
from orchestrator.core.selection import Selection
from orchestrator.core.storage import is_uri
from orchestrator.data.plan import DataPlan, build_plan
from orchestrator.labels.job import LabelRequest
from orchestrator.labels.store import LabelStore
from orchestrator.preflight import require_visible
from orchestrator.students.encoder import EncoderRequest, wants_pretraining
from orchestrator.tracking.stored import BEST_MODEL_KEY
from trainables.inputs import TrialInput


def tune_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """A Train report's metrics without the keys Tune fills in itself."""
    return {k: v for k, v in metrics.items() if k not in ("checkpoint_dir_name", "training_iteration", "done")}


def make_trial_input(cfg: ExperimentConfig, plan: DataPlan, label_store: str | None, files_dir: Path | None,
                     mode: str, selection: Selection = Selection(), encoder_file: str | None = None) -> TrialInput:
    return TrialInput(config=cfg, labeled=plan.labeled, unlabeled=plan.unlabeled, val=plan.val, ood=plan.ood,
                      ood_masks=plan.ood_masks, class_names=tuple(plan.vocabulary.names), label_store=label_store,
                      files_dir=str(files_dir) if files_dir else None, launched_at=time.time(), mode=mode,
                      driver_node=this_node(), selection=selection, test=plan.test, encoder_file=encoder_file)


def encoder_for(cfg: ExperimentConfig, encoders: dict[EncoderRequest, str]) -> str | None:
    """The pretrained encoder the driver made for this trial (None when it starts from random or the user's
    weights)."""
    if not wants_pretraining(cfg):
        return None
    path = encoders.get(EncoderRequest.from_config(cfg))
    if path is None or not Path(path).is_file():
        raise UserError(f"the pretrained student encoder for this trial is not in the cache ({path or 'never made'})."
                        f" Fix: start the sweep again (it pretrains what is missing), or set model.pretrain=none.")
    return path


def label_store_for(cfg: ExperimentConfig, label_stores: dict[LabelRequest, str]) -> str | None:
    """The cache entry the driver labeled for this trial (None when the trial reads no teacher labels)."""
    if not cfg.uses_teacher_labels:
        return None
    store = label_stores.get(LabelRequest.from_config(cfg))
    if store is None or not LabelStore(Path(store)).is_complete():
        raise UserError(f"the OOD pseudo-labels for this trial are not in the cache ({store or 'never labeled'}). "
                        f"Fix: run `python run.py label` with the same settings, or start the sweep again.")
    return store


def build_trainer(trial: TrialInput, *, name: str, storage: str, callbacks: list,
                  on_report: Callable[[dict[str, Any]], None] | None = None):
    """The run's TorchTrainer; it keeps the best checkpoint by the run's selection rule and the latest."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from trainables.train_loop import train_loop_per_worker

    cfg = trial.config
    r = cfg.resources
    use_gpu = r.gpus_per_worker > 0
    per_worker = {"CPU": r.cpus_per_worker, **({"GPU": r.gpus_per_worker} if use_gpu else {}),
                  **({r.worker_resource: CUSTOM_SHARE} if r.worker_resource else {})}
    loop_config: dict[str, Any] = {"trial": trial}
    if on_report is not None:
        loop_config["on_report"] = on_report
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=use_gpu,
                                               resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage, callbacks=callbacks,
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=keep_best_and_latest(ray.train.CheckpointConfig, trial.selection),
            logging_config=train_logging()),
    )


def train_logging():
    """Ray Train's console output: WARNING and up (INFO with --verbose). Train logs every report's metrics at
    INFO, in the controller and in the workers; our progress lines say it shorter. Its LoggingConfig sets its
    `ray.train` loggers in the controller and the workers (the workers' report line escapes it: see
    trainables.distributed); the calling process, this trial's or `run.py train`'s, where Train's storage logs
    every checkpoint at INFO, gets the same level here. Ray's log files under /tmp/ray keep every level."""
    import logging

    import ray.train

    level = ray_log_level()
    logging.getLogger("ray.train").setLevel(level)
    return ray.train.LoggingConfig(log_level=level)


def keep_best_and_latest(config_class, selection: Selection):
    """Train's or Tune's CheckpointConfig that keeps one checkpoint by score; both always keep the latest too."""
    return config_class(num_to_keep=1, checkpoint_score_attribute=selection.metric,
                        checkpoint_score_order=selection.mode)


def run_trial(config: dict[str, Any], base: dict[str, Any], cache_root: str, storage: str, files_root: str,
              label_stores: dict[LabelRequest, str], encoders: dict[EncoderRequest, str], selection: Selection) -> None:
    """Tune entry point (bound with tune.with_parameters). `storage` is the sweep's folder or URI;
    `files_root` the local folder for its runs' pictures (core.paths.sweep_files_root)."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    require_visible("cache", cache_root)                 # a node that joined after the preflight
    if not is_uri(storage):                               # a bucket was probed from every node by the driver
        require_visible("storage", Path(storage).parent)  # storage is the sweep's folder inside it
    cfg = config_from_flat({**base, **config}, "trial config")
    name = train_run_name(ray.tune.get_context().get_trial_id())
    local = cfg.train.num_workers == 0
    trial = make_trial_input(cfg, build_plan(cfg, Path(cache_root)), label_store_for(cfg, label_stores),
                             run_files_dir(Path(files_root), name), mode="tune-local" if local else "train",
                             selection=selection, encoder_file=encoder_for(cfg, encoders))
    trainer = build_trainer(trial, name=name, storage=storage, callbacks=[] if local else [TuneReportCallback()])
    result = trainer.fit()
    if not local:   # local mode reported its checkpoints to Tune itself
        report_best_model(result, selection)


def report_best_model(result, selection: Selection) -> None:
    """Hand Tune the trial's best model (the student file of Train's best checkpoint), so that Tune's analysis
    of the sweep finds it. Marked `best_model`: it repeats the best epoch's metrics, it is not a new epoch."""
    import tempfile

    import ray.tune

    from trainables.student_file import MODEL_FILE

    best = result.get_best_checkpoint(selection.metric, selection.mode) if result.best_checkpoints else None
    if best is None:
        return
    metrics = next(m for c, m in result.best_checkpoints if c.path == best.path)
    with tempfile.TemporaryDirectory() as folder:
        best.to_directory(folder)   # a copy from storage (a folder or a bucket), then only model.pt goes back
        for name in os.listdir(folder):
            if name != MODEL_FILE:
                os.remove(os.path.join(folder, name))
        ray.tune.report({**tune_metrics(metrics), BEST_MODEL_KEY: 1}, checkpoint=ray.tune.Checkpoint.from_directory(folder))
