"""MLflow bookkeeping: one experiment per sweep, a parent run per sweep, a child run per trial.

Only the process that drives Tune writes to MLflow (a sqlite file is not safe for many writers).
Runs are found again by tags (`role`, `sweep_name`, `trial_id`), so a resumed sweep reuses its parent
run and each trial's child run instead of creating duplicates.
"""
from __future__ import annotations

import functools
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from orchestrator.errors import UserError

ROLE_SWEEP = "sweep"
ROLE_TRIAL = "trial"
ROLE_RUN = "run"                 # `run.py train`: a single run, no sweep
# Keys Tune adds to every result; they are bookkeeping, not measurements.
TUNE_AUTO_KEYS = {
    "timestamp", "checkpoint_dir_name", "done", "training_iteration", "trial_id", "date",
    "time_this_iter_s", "time_total_s", "pid", "hostname", "node_ip", "config", "time_since_restore",
    "iterations_since_restore", "checkpoint_path", "should_checkpoint", "epoch",
}


def resolve_tracking_uri(cli_value: str | None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db (absolute)."""
    uri = cli_value or os.environ.get("MLFLOW_TRACKING_URI") or ""
    if not uri:
        return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"
    if uri.startswith("file:") or "://" not in uri:
        raise UserError(f"tracking URI '{uri}' is a file store, which MLflow 3 refuses. "
                        f"Fix: use sqlite:///path/mlflow.db or http://host:port of an mlflow server.")
    return uri


def artifact_root_for(uri: str) -> str | None:
    """Keep artifacts beside a sqlite database instead of in ./mlruns of whatever the CWD is."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return None  # a server decides where artifacts go


@functools.lru_cache(maxsize=8)
def client(uri: str):
    """One MlflowClient per store, reused: the callback calls this for every epoch of every trial."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def ensure_experiment(uri: str, name: str) -> str:
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise UserError(f"MLflow experiment '{name}' is deleted in {uri}. "
                            f"Fix: restore it in the MLflow UI or choose another --name.")
        return exp.experiment_id
    root = artifact_root_for(uri)
    return c.create_experiment(name, artifact_location=f"{root}/{name}" if root else None)


def find_runs(uri: str, experiment_id: str, **tags: str) -> list:
    query = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())
    return client(uri).search_runs([experiment_id], filter_string=query, order_by=["attributes.start_time DESC"])


def start_parent_run(uri: str, experiment_id: str, sweep_name: str, params: dict[str, Any],
                     resume: bool) -> str:
    """The sweep's parent run: reused on --resume, otherwise new."""
    c = client(uri)
    if resume:
        found = find_runs(uri, experiment_id, role=ROLE_SWEEP, sweep_name=sweep_name)
        if found:
            run_id = found[0].info.run_id
            c.update_run(run_id, status="RUNNING")
            return run_id
    run = c.create_run(experiment_id, run_name=sweep_name, tags={"role": ROLE_SWEEP, "sweep_name": sweep_name})
    log_params(uri, run.info.run_id, params)
    return run.info.run_id


def log_params(uri: str, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)) for k, v in sorted(params.items())]
    for start in range(0, len(items), 100):  # MLflow's batch limit
        client(uri).log_batch(run_id, params=items[start:start + 100])


def measurements(result: dict[str, Any]) -> dict[str, float]:
    """The numeric metrics of a reported result, without Tune's bookkeeping."""
    out = {}
    for key, value in result.items():
        if key in TUNE_AUTO_KEYS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


def log_metrics(uri: str, run_id: str, metrics: dict[str, float], step: int) -> None:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, v, now, step) for k, v in metrics.items()]
    for start in range(0, len(items), 1000):
        client(uri).log_batch(run_id, metrics=items[start:start + 1000])


def log_eval_pictures(uri: str, run_id: str, report: dict[str, Any], epoch: int) -> None:
    """eval/confusion_matrix_epoch_NNN.png and eval/overlays_epoch_NNN.png from one epoch's report."""
    from orchestrator.eval_artifacts import epoch_files

    try:
        files = epoch_files(report, epoch)
    except Exception as err:  # a picture that cannot be drawn must not stop the run that reported it
        print(f"warning: no evaluation pictures for epoch {epoch}: {err!r}", file=sys.stderr, flush=True)
        return
    if not files:
        return
    with tempfile.TemporaryDirectory(prefix="semiovs-eval-") as folder:
        for name, png in files.items():
            (Path(folder) / name).write_bytes(png)
        client(uri).log_artifacts(run_id, folder, "eval")


def log_epoch(uri: str, run_id: str, metrics: dict[str, Any], pictures: dict[str, Any], epoch: int) -> None:
    """One epoch into a run: pictures first, then the metrics. A resume reads the last epoch logged from
    val_miou, so an epoch whose metrics are in MLflow also has its pictures."""
    log_eval_pictures(uri, run_id, pictures, epoch)
    log_metrics(uri, run_id, measurements(metrics), epoch)


def take_eval_pictures(result: dict[str, Any]) -> dict[str, Any]:
    """Remove the pictures' payload from a Tune result (Tune lets callbacks edit it in place): the loggers
    and the progress reporter that run after our callback then neither store nor print ~100 kB per epoch."""
    from orchestrator.eval_artifacts import PAYLOAD_KEYS

    return {key: result.pop(key) for key in PAYLOAD_KEYS if key in result}


def make_trial_callback(uri: str, experiment_id: str, parent_run_id: str, sweep_name: str,
                        base_params: dict[str, Any], progress=None):
    """A Tune callback that mirrors each trial into its own child run (built lazily: imports Ray)."""
    from ray.tune import Callback

    class TrialRunsToMLflow(Callback):
        # No get_state/set_state on purpose: after a resume every trial's run is looked up again by tag,
        # which also reads how many epochs MLflow already holds (state saved before a crash may lag).
        def __init__(self):
            self.run_ids: dict[str, str] = {}
            self.last_step: dict[str, int] = {}   # epochs already in MLflow (a resumed trial may repeat one)

        def _run_for(self, trial) -> str:
            if trial.trial_id in self.run_ids:
                return self.run_ids[trial.trial_id]
            found = find_runs(uri, experiment_id, role=ROLE_TRIAL, trial_id=trial.trial_id,
                              sweep_name=sweep_name)
            if found:
                run_id = found[0].info.run_id
                client(uri).update_run(run_id, status="RUNNING")
                history = client(uri).get_metric_history(run_id, "val_miou")
                self.last_step[trial.trial_id] = max((m.step for m in history), default=0)
            else:
                tags = {"role": ROLE_TRIAL, "trial_id": trial.trial_id, "sweep_name": sweep_name,
                        "mlflow.parentRunId": parent_run_id}
                swept = " ".join(f"{k}={v}" for k, v in sorted(trial.config.items()))
                name = f"{trial.trial_id} {swept}".strip()  # readable in the UI's run list
                run_id = client(uri).create_run(experiment_id, run_name=name, tags=tags).info.run_id
                resolved = {**base_params, **trial.config}
                log_params(uri, run_id, resolved)
                # the resolved config as one file too: `run.py train --set ...` can replay it
                client(uri).log_text(run_id, json.dumps(resolved, indent=1, sort_keys=True), "config.json")
            self.run_ids[trial.trial_id] = run_id
            return run_id

        def on_trial_start(self, iteration, trials, trial, **info):
            self._run_for(trial)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            step = int(result.get("epoch", result.get("training_iteration", 0)))
            run_id = self._run_for(trial)
            pictures = take_eval_pictures(result)
            if step > self.last_step.get(trial.trial_id, 0):  # after a resume, epochs logged before the
                log_epoch(uri, run_id, result, pictures, step)    # crash are not logged twice
                self.last_step[trial.trial_id] = step
            if result.get("broken_sample_list"):  # skipped unreadable files, listed with the run
                client(uri).log_text(run_id, "\n".join(result["broken_sample_list"]) + "\n", "broken_samples.txt")
            if progress is not None:
                progress(trial.trial_id, trial.config, result)

        def on_trial_complete(self, iteration, trials, trial, **info):
            client(uri).set_terminated(self._run_for(trial), status="FINISHED")

        def on_trial_error(self, iteration, trials, trial, **info):
            client(uri).set_terminated(self._run_for(trial), status="FAILED")

    return TrialRunsToMLflow()


def ui_link(base_url: str, experiment_id: str) -> str:
    """The 'Model training' runs view (MLflow 3.17 otherwise opens its GenAI overview)."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"
