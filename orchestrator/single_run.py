"""`run.py train`: one training run without Tune (labels first if the run needs them), logged to MLflow."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator import tracking
from orchestrator.config import build_config, flatten
from orchestrator.paths import default_cache_root, default_storage_root, resolve_root


@dataclass
class TrainRequest:
    overrides: dict[str, Any] = field(default_factory=dict)
    experiment: str = "train"
    tracking_uri: str | None = None
    storage: str | None = None
    cache: str | None = None
    quiet: bool = False


def _epoch_logger(uri: str, run_id: str, quiet: bool):
    logged = [0]  # last epoch in MLflow: a worker group restarted from a checkpoint may report one again

    def log(metrics: dict[str, Any]) -> None:
        epoch = int(metrics.get("epoch", 0))
        if epoch > logged[0]:
            tracking.log_epoch(uri, run_id, metrics, metrics, epoch)   # the pictures ride in the same dict
            logged[0] = epoch
        if metrics.get("broken_sample_list"):
            tracking.client(uri).log_text(run_id, "\n".join(metrics["broken_sample_list"]) + "\n",
                                          "broken_samples.txt")
        if not quiet:
            print(f"epoch {metrics.get('epoch')}: val_miou {metrics.get('val_miou', float('nan')):.2f} "
                  f"(best {metrics.get('best_val_miou', float('nan')):.2f}) loss {metrics.get('loss', 0):.4f}",
                  flush=True)
    return log


def make_report_callback(uri: str, run_id: str, quiet: bool):
    """A Ray Train UserCallback (runs in the Train controller) that logs each report to MLflow."""
    from ray.train import UserCallback

    log = _epoch_logger(uri, run_id, quiet)

    class LogEpochsToMLflow(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            log(metrics[0])

    return LogEpochsToMLflow()


def run_single(req: TrainRequest) -> dict[str, Any]:
    from orchestrator.data_plan import build_plan
    from orchestrator.pseudo_labels import ensure_labels
    from orchestrator.ray_runtime import init_ray
    from trainables.semiovs import build_trainer, resolve_label_store, worker_data

    started = time.time()
    cfg = build_config(req.overrides, "--set")
    flat = flatten(cfg)
    cache = resolve_root(req.cache, default_cache_root())
    storage = resolve_root(req.storage, default_storage_root())
    uri = tracking.resolve_tracking_uri(req.tracking_uri)
    say = (lambda *a: None) if req.quiet else print
    plan = build_plan(cfg, cache)   # data errors show before Ray starts
    init_ray(quiet=req.quiet)
    if cfg.uses_teacher_labels:
        say(ensure_labels(cfg, cache, say).summary())
    data = worker_data(cfg, plan, resolve_label_store(cfg, cache))
    experiment_id = tracking.ensure_experiment(uri, req.experiment)
    run = tracking.client(uri).create_run(experiment_id, run_name=f"{cfg.train.method}-{int(started)}",
                                          tags={"role": tracking.ROLE_RUN})
    run_id = run.info.run_id
    tracking.log_params(uri, run_id, flat)
    local = cfg.train.num_workers == 0
    trainer = build_trainer(
        cfg, flat, data, mode="local" if local else "train", name=f"train-{run_id}", storage=str(storage),
        callbacks=[] if local else [make_report_callback(uri, run_id, req.quiet)],
        on_report=_epoch_logger(uri, run_id, req.quiet) if local else None)
    try:
        result = trainer.fit()
    except BaseException:
        tracking.client(uri).set_terminated(run_id, status="FAILED")
        raise
    tracking.client(uri).set_terminated(run_id, status="FINISHED")
    metrics = result.metrics or {}
    return {"run_id": run_id, "experiment_id": experiment_id, "best_val_miou": metrics.get("best_val_miou"),
            "epochs": metrics.get("epoch"), "seconds": round(time.time() - started, 1),
            "checkpoint": str(Path(result.checkpoint.path)) if result.checkpoint else None}
