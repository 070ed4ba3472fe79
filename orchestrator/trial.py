"""One trial: the Ray Tune function that builds a TorchTrainer and hands its workers a typed TrialInput.

The flat config crosses the Tune boundary once (base ← the trial's sampled values) and becomes an
ExperimentConfig here. The trial finds its files (orchestrator.data.plan) and reads the label store the
sweep driver labeled for its LabelRequest: a trial never runs the teacher, nor re-derives a cache key.
Metrics reach Tune through TuneReportCallback (Train V2 takes no Tune callbacks), or directly in local mode
(`train.num_workers: 0`).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from orchestrator.core.config import ExperimentConfig, config_from_flat
from orchestrator.core.errors import UserError
from orchestrator.core.nodes import CUSTOM_SHARE, this_node
from orchestrator.core.paths import run_files_dir, train_run_name
from orchestrator.core.storage import is_uri
from orchestrator.data.plan import DataPlan, build_plan
from orchestrator.labels.job import LabelRequest
from orchestrator.labels.store import LabelStore
from orchestrator.preflight import require_visible
from trainables.inputs import TrialInput


def make_trial_input(cfg: ExperimentConfig, plan: DataPlan, label_store: str | None, files_dir: Path | None,
                     mode: str) -> TrialInput:
    return TrialInput(config=cfg, labeled=plan.labeled, unlabeled=plan.unlabeled, val=plan.val, ood=plan.ood,
                      ood_masks=plan.ood_masks, class_names=tuple(plan.vocabulary.names), label_store=label_store,
                      files_dir=str(files_dir) if files_dir else None, launched_at=time.time(), mode=mode,
                      driver_node=this_node())


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
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            # Train logs every report's metrics dict at INFO; our progress lines say it shorter.
            # Ray's log files under /tmp/ray still keep every level.
            logging_config=ray.train.LoggingConfig(log_level="WARNING")),
    )


def run_trial(config: dict[str, Any], base: dict[str, Any], cache_root: str, storage: str, files_root: str,
              label_stores: dict[LabelRequest, str]) -> None:
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
                             run_files_dir(Path(files_root), name), mode="tune-local" if local else "train")
    trainer = build_trainer(trial, name=name, storage=storage, callbacks=[] if local else [TuneReportCallback()])
    trainer.fit()
