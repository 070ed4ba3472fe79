"""The Ray Tune function trainable: one trial = one TorchTrainer run of `train_loop_per_worker`.

The trial resolves its config (base ← sampled values), finds its data and its cached OOD labels (labeled
before the sweep started; a trial never runs the teacher), then runs Ray Train. Metrics reach Tune through
TuneReportCallback (Train V2 takes no Tune callbacks), or directly in local mode (`train.num_workers: 0`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.config import ExperimentConfig, config_from_flat
from orchestrator.data_plan import DataPlan, build_plan
from orchestrator.errors import UserError


def worker_data(cfg: ExperimentConfig, plan: DataPlan, label_store: str | None) -> dict[str, Any]:
    """What every worker needs to build its streams: plain lists, cheap to ship."""
    return {"labeled": list(plan.labeled), "unlabeled": list(plan.unlabeled), "val": list(plan.val),
            "ood": list(plan.ood) if cfg.uses_ood else [], "label_store": label_store,
            "ood_masks": list(plan.ood_masks) if cfg.uses_ood else [],   # ground truth, only measured against
            "class_names": plan.vocabulary.names}


def resolve_label_store(cfg: ExperimentConfig, cache_root: Path) -> str | None:
    if not cfg.uses_teacher_labels:
        return None
    from orchestrator.pseudo_labels import label_job

    store = label_job(cfg, cache_root).store
    if not store.is_complete():
        raise UserError(f"the OOD pseudo-labels for this trial are not in the cache ({store.root}). "
                        f"Fix: run `python run.py label` with the same settings, or start the sweep again.")
    return str(store.root)


def build_trainer(cfg: ExperimentConfig, flat: dict[str, Any], data: dict[str, Any], *, mode: str,
                  name: str, storage: str, callbacks: list, on_report=None):
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from trainables.train_loop import train_loop_per_worker

    r = cfg.resources
    use_gpu = r.gpus_per_worker > 0
    per_worker = {"CPU": r.cpus_per_worker, **({"GPU": r.gpus_per_worker} if use_gpu else {})}
    import time

    loop_config = {"config": flat, "data": {**data, "launched_at": time.time()}, "mode": mode}
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
            # Train logs every report's full metrics dict at INFO; our progress lines say it shorter.
            # Ray's log files under /tmp/ray still keep every level.
            logging_config=ray.train.LoggingConfig(log_level="WARNING")),
    )


def run_trial(config: dict[str, Any], base: dict[str, Any], cache_root: str, storage: str) -> None:
    """Tune entry point (bound with tune.with_parameters)."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    flat = {**base, **config}
    cfg = config_from_flat(flat, "trial config")
    plan = build_plan(cfg, Path(cache_root))
    data = worker_data(cfg, plan, resolve_label_store(cfg, Path(cache_root)))
    trial_id = ray.tune.get_context().get_trial_id()
    local = cfg.train.num_workers == 0
    trainer = build_trainer(cfg, flat, data, mode="tune-local" if local else "train", name=f"train-{trial_id}",
                            storage=storage, callbacks=[] if local else [TuneReportCallback()])
    trainer.fit()
