"""Every MLflow call of the project: experiments, runs, params, metrics, artifacts, and the runs a report reads.

Only the process that drives the runs writes (a sqlite file is not safe for many writers). Runs are found
again by tags (`role`, `sweep_name`, `trial_id`), so a resumed sweep reuses its parent run and each trial's
child run instead of creating duplicates.
"""
from __future__ import annotations

import functools
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from orchestrator.core import console
from orchestrator.core.errors import UserError

ROLE_SWEEP = "sweep"
ROLE_TRIAL = "trial"
ROLE_RUN = "run"                 # `run.py train`: a single run, no sweep
BROKEN_LIST = "broken_samples.txt"
NODES_FILE = "nodes.json"
EPOCH_MARKER = "val_miou"        # every epoch's report has it: its steps say which epochs a run holds
# For an `mlflow server` that shows runs: MLflow 3's server otherwise also starts its job runner (for GenAI
# jobs this project never submits), 8 more processes and ~25 CPU-seconds at every start.
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
# Keys Tune adds to every result; they are bookkeeping, not measurements.
TUNE_AUTO_KEYS = {
    "timestamp", "checkpoint_dir_name", "done", "training_iteration", "trial_id", "date",
    "time_this_iter_s", "time_total_s", "pid", "hostname", "node_ip", "config", "time_since_restore",
    "iterations_since_restore", "checkpoint_path", "should_checkpoint", "epoch", "reported_at", "best_model",
}
REPORTED_AT = "reported_at"      # when the worker reported the epoch (s): the time its metrics are logged at


def server_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for an `mlflow server`: `environ` (default: this process's) over SERVER_ENV."""
    return {**SERVER_ENV, **(os.environ if environ is None else environ)}


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


def ui_link(base_url: str, experiment_id: str) -> str:
    """The 'Model training' runs view (MLflow 3.17 otherwise opens its GenAI overview)."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"


def run_link(base_url: str, experiment_id: str, run_id: str) -> str:
    """A run's page; a sweep's parent run shows the results table there, as its description."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


# ---- experiments and runs -------------------------------------------------------------------------

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


def experiment_id_of(uri: str, name: str) -> str | None:
    exp = client(uri).get_experiment_by_name(name)
    return exp.experiment_id if exp is not None else None


def quoted(value: str) -> str | None:
    """A value as a literal of MLflow's filter language, or None when no quote character can hold it."""
    for quote in ("'", '"'):
        if quote not in value:
            return f"{quote}{value}{quote}"
    return None


def find_runs(uri: str, experiment_id: str, **tags: str) -> list:
    """Every run whose tags equal `tags` (all pages), newest first. Values are data, never filter syntax."""
    literals = {k: quoted(str(v)) for k, v in tags.items()}
    query = " and ".join(f"tags.{k} = {q}" for k, q in literals.items() if q is not None)
    runs = all_runs(uri, experiment_id, query, ["attributes.start_time DESC"])
    return [r for r in runs if all(r.data.tags.get(k) == str(v) for k, v in tags.items())]


def all_runs(uri: str, experiment_id: str, filter_string: str, order_by: list[str]) -> list:
    """Every run that matches, page after page: MLflow answers one page of at most 1,000 runs, so reading only
    the first would drop the rest of a big sweep (its report, and the runs a resume looks for). A run met twice
    (runs started during the search shift the later pages) is kept once."""
    c, out, seen, token = client(uri), [], set(), None
    while True:
        page = c.search_runs([experiment_id], filter_string=filter_string, order_by=order_by, page_token=token)
        out.extend(r for r in page if r.info.run_id not in seen)
        seen.update(r.info.run_id for r in page)
        token = page.token
        if not token:
            return out


def duplicate_runs_text(uri: str, sweep_name: str, duplicated: dict[str, list[str]], used: str) -> str | None:
    """The warning (without its `warning: ` prefix) about the keys with more than one run, or None when there is
    none: `duplicated` maps a key ("trial 7f_00001", "the parent run") to its run ids, newest first; `used` says
    which run the caller goes on with. The fix deletes the others (a deleted run is out of every search)."""
    extra = {key: ids for key, ids in duplicated.items() if len(ids) > 1}
    if not extra:
        return None
    shown = sorted(extra)[:3]
    listed = "; ".join(f"{key}: {', '.join(extra[key])}" for key in shown)
    more = f"; {len(extra) - len(shown)} more" if len(extra) > len(shown) else ""
    older = [run_id for key in sorted(extra) for run_id in extra[key][1:]]
    delete = " && ".join(f"mlflow runs delete --run-id {run_id}" for run_id in older[:3])
    rest = f" (and the {len(older) - 3} others)" if len(older) > 3 else ""
    return (f"MLflow at {uri} holds more than one run for {len(extra)} key(s) of sweep '{sweep_name}' ({listed}{more};"
            f" newest first); {used}; the other {len(older)} run(s) are ignored. Fix: delete them: "
            f"MLFLOW_TRACKING_URI={uri} {delete}{rest}")


def all_logged_models(uri: str, experiment_id: str, filter_string: str | None = None) -> list:
    """Every logged model of an experiment that matches the filter, page after page."""
    c, out, token = client(uri), [], None
    while True:
        page = c.search_logged_models([experiment_id], filter_string=filter_string, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def create_run(uri: str, experiment_id: str, name: str, tags: dict[str, str]) -> str:
    return client(uri).create_run(experiment_id, run_name=name, tags=tags).info.run_id


def start_parent_run(uri: str, experiment_id: str, sweep_name: str, params: dict[str, Any],
                     resume: bool, warn: Callable[[str], None] = console.warn) -> str:
    """The sweep's parent run: reused on --resume, otherwise new. Two parent runs of one sweep (e.g. made by a
    version that could miss the first): the newest is reused, as `report` reads it, and `warn` gets one line
    naming the others and how to delete them. Not an error: the sweep's trials are safe either way, and
    refusing would stop a resume over a duplicate that only needs tidying."""
    if resume:
        found = find_runs(uri, experiment_id, role=ROLE_SWEEP, sweep_name=sweep_name)
        text = duplicate_runs_text(uri, sweep_name, {"the parent run": [r.info.run_id for r in found]},
                                   "the resume goes on in the newest (the one `report` reads)")
        if text:
            warn(text)
        if found:
            run_id = found[0].info.run_id
            client(uri).update_run(run_id, status="RUNNING")
            return run_id
    run_id = create_run(uri, experiment_id, sweep_name, {"role": ROLE_SWEEP, "sweep_name": sweep_name})
    log_params(uri, run_id, params)
    return run_id


def reopen_run(uri: str, run_id: str) -> None:
    """Mark a found run RUNNING again (its trial runs again)."""
    client(uri).update_run(run_id, status="RUNNING")


def logged_epochs(uri: str, run_id: str) -> set[int]:
    """The epochs a run holds: the steps of EPOCH_MARKER, which an epoch's one metrics batch carries."""
    return {m.step for m in client(uri).get_metric_history(run_id, EPOCH_MARKER)}


def set_tags(uri: str, run_id: str, tags: dict[str, str]) -> None:
    from mlflow.entities import RunTag

    client(uri).log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


# MLflow shows this tag as the description at the top of a run's page and of an experiment's page.
DESCRIPTION_TAG = "mlflow.note.content"
# MLflow cuts a run tag's value at 8,000 characters and refuses an experiment tag's above 20,000
# (mlflow/utils/validation.py); a sweep of a few hundred trials has a longer table.
DESCRIPTION_LIMIT = 8000


def fit_description(markdown: str, more: str, limit: int = DESCRIPTION_LIMIT) -> str:
    """`markdown` in at most `limit` characters: whole lines from the top, then one line saying how many were
    left out and where they are (`more`)."""
    if len(markdown) <= limit:
        return markdown
    lines = markdown.splitlines()
    kept: list[str] = []
    for count, line in enumerate(lines):
        note = f"\n\n… {len(lines) - count} more line(s): {more}"
        if sum(len(k) + 1 for k in kept) + len(line) + 1 + len(note) > limit:
            return "\n".join(kept) + note
        kept.append(line)
    return "\n".join(kept)


def describe(uri: str, run_id: str, markdown: str, more: str) -> None:
    """`markdown` as the run's description and as its experiment's: the first screen of the sweep's link
    shows the results table, before anyone expands or compares runs. Cut to MLflow's limit, the text ends by
    saying where the rest is (`more`)."""
    c = client(uri)
    text = fit_description(markdown, more)
    c.set_tag(run_id, DESCRIPTION_TAG, text)
    c.set_experiment_tag(c.get_run(run_id).info.experiment_id, DESCRIPTION_TAG, text)


def finish_run(uri: str, run_id: str, failed: bool = False) -> None:
    client(uri).set_terminated(run_id, status="FAILED" if failed else "FINISHED")


# ---- what goes into a run -------------------------------------------------------------------------

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


def log_metrics(uri: str, run_id: str, metrics: dict[str, float], step: int = 0, at: float | None = None) -> None:
    """Metrics at `step`, stamped `at` (seconds; default now). An epoch's metrics are stamped with the time the
    worker reported them, so the same point logged again (its model links it) is the same row, not a second one."""
    from mlflow.entities import Metric

    stamp = int((time.time() if at is None else at) * 1000)
    items = [Metric(k, float(v), stamp, step) for k, v in metrics.items()]
    for start in range(0, len(items), 1000):
        client(uri).log_batch(run_id, metrics=items[start:start + 1000])


def log_text(uri: str, run_id: str, text: str, artifact_file: str) -> None:
    client(uri).log_text(run_id, text, artifact_file)


def log_files(uri: str, run_id: str, paths: list[Path], artifact_dir: str | None) -> None:
    for path in paths:
        client(uri).log_artifact(run_id, str(path), artifact_dir)


def log_folder(uri: str, run_id: str, folder: Path, artifact_dir: str) -> None:
    client(uri).log_artifacts(run_id, str(folder), artifact_dir)


def trial_runs(uri: str, experiment_id: str) -> list[dict[str, Any]]:
    """Each trial's newest child run (every page), as plain dicts; `older` lists the ids of the trial's other
    runs (a duplicate: the caller says so)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for run in find_runs(uri, experiment_id, role=ROLE_TRIAL):  # newest first
        tags = run.data.tags
        key = (tags.get("sweep_name", ""), tags.get("trial_id", run.info.run_id))
        if key in out:
            out[key]["older"].append(run.info.run_id)
            continue
        out[key] = {"trial_id": key[1], "sweep_name": key[0], "run_id": run.info.run_id, "older": [],
                    "params": dict(run.data.params), "metrics": dict(run.data.metrics), "status": run.info.status}
    return list(out.values())


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of every logged value of a metric, oldest first within a step."""
    history = client(uri).get_metric_history(run_id, key)
    return [(m.step, m.value) for m in sorted(history, key=lambda m: (m.step, m.timestamp))]


# ---- epochs ---------------------------------------------------------------------------------------

class EpochLogger:
    """Logs one run's epochs once each: the pictures its rank-0 worker wrote into `files_dir`, then the
    numbers in one batch. `logged` starts from what MLflow holds (see logged_epochs); an epoch reported again
    after a worker restart is not logged twice. A retry (`recheck`) first asks MLflow which epochs it
    holds, since a call that failed on our side may have been written on the server's. `status` is the run's
    status as last read or set (a sweep's ledger closes a closed run only once)."""

    def __init__(self, uri: str, run_id: str, files_dir: Path | None, logged: set[int] | None = None,
                 status: str = "RUNNING"):
        self.uri, self.run_id, self.files_dir, self.status = uri, run_id, files_dir, status
        self.logged: set[int] = set(logged or ())
        self.nodes: dict[str, Any] = {}

    def log(self, result: dict[str, Any], recheck: bool = False) -> bool:
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        if recheck and epoch not in self.logged:
            self.logged |= logged_epochs(self.uri, self.run_id)
        if epoch in self.logged:
            return False
        if self.files_dir is not None:
            self._tag_nodes()
            pictures = sorted(self.files_dir.glob(f"*_epoch_{epoch:03d}.png"))
            if pictures:
                log_files(self.uri, self.run_id, pictures, "eval")
            if result.get("broken_samples") and (self.files_dir / BROKEN_LIST).is_file():
                log_files(self.uri, self.run_id, [self.files_dir / BROKEN_LIST], None)
        log_metrics(self.uri, self.run_id, measurements(result), epoch, result.get(REPORTED_AT))
        self.logged.add(epoch)
        return True

    def _tag_nodes(self) -> None:
        """Tags node.trial and node.train_rank0: where the run's driver and its rank 0 ran (updated after a
        restart on another node)."""
        import json

        try:
            nodes = json.loads((self.files_dir / NODES_FILE).read_text())
        except (OSError, ValueError):
            return
        if nodes != self.nodes:
            client(self.uri).set_tag(self.run_id, "node.trial", nodes.get("trial", ""))
            client(self.uri).set_tag(self.run_id, "node.train_rank0", nodes.get("train_rank0", ""))
            self.nodes = nodes
