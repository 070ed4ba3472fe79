"""`run.py sync`: write into MLflow whatever a finished (or interrupted) sweep's Tune storage holds and
MLflow lacks: every epoch of every trial, each trial run's final status, the summary on the parent run.

Safe to repeat: an epoch MLflow already holds is not logged again.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

import yaml

from orchestrator.core.errors import UserError
from orchestrator.core import storage as store
from orchestrator.core.paths import default_cache_root, default_storage_root, files_root, resolve_root
from orchestrator.sweep import results
from orchestrator.sweep.space import parse_space
from orchestrator.tracking import client as mlflow_runs
from orchestrator.tracking.session import SweepTracking


@dataclass(frozen=True)
class SyncOutcome:
    trials: int
    epochs: int      # epochs Tune's storage holds
    written: int     # of which this sync wrote (the others were in MLflow already)
    experiment_id: str


def sync_sweep(name: str, storage: str | None, tracking_uri: str | None, say: Callable[[str], None],
               cache: str | None = None) -> SyncOutcome:
    root = store.resolve_storage(storage, default_storage_root())
    sweep_dir = store.join(root, name)
    saved = store.read_text(store.join(sweep_dir, "sweep.json"))
    if saved is None:
        raise UserError(f"no sweep '{name}' in {root}. Fix: pass the --name and --storage the sweep ran with.")
    state = json.loads(saved)
    space = parse_space(yaml.safe_load(state["space_text"]), state["space"])
    uri = mlflow_runs.resolve_tracking_uri(tracking_uri)
    pictures = files_root(root, resolve_root(cache, default_cache_root()), name)   # cache: with a bucket only
    tracking = SweepTracking(uri, name, root, sweep_dir, state["base"], pictures, space.selection, space.log_models)
    tracking.start(resume=True)   # the sweep's parent run, or a new one if MLflow never got it
    rows = _rows(sweep_dir, space, int(state["base"]["train.epochs"]))
    parent = tracking.parent_run_id
    line = tracking.finish(lambda: write_summary(uri, parent, rows, space), say)
    if line:
        raise UserError(line.removeprefix("warning: ") + " (sync stopped: run it again when MLflow answers)")
    trials = tracking.last_trials
    return SyncOutcome(len(trials), sum(len(t.epochs) for t in trials), tracking.ledger.written,
                       tracking.experiment_id)


def _rows(sweep_dir, space, max_epochs: int) -> list[results.TrialRow]:
    from ray.tune import ExperimentAnalysis, ResultGrid

    try:
        grid = ResultGrid(ExperimentAnalysis(str(sweep_dir)))
    except (ValueError, FileNotFoundError):
        return []   # the sweep stopped before Tune saved anything: nothing to sum up
    return results.rows_from_result_grid(grid, space.swept_keys, space.metric, space.mode, max_epochs)


def write_summary(uri: str, parent: str, rows: list[results.TrialRow], space, seconds: float | None = None) -> None:
    """The results table and costs on the parent run, which is then closed."""
    table = results.format_markdown(rows, space.swept_keys, space.metric)
    mlflow_runs.log_text(uri, parent, table, "summary/results.md")
    mlflow_runs.describe(uri, parent, table, "the whole table is the sweep run's artifact summary/results.md")
    mlflow_runs.log_text(uri, parent, results.format_csv(rows, space.swept_keys, space.metric), "summary/results.csv")
    costs = {"cost.trial_seconds_total": sum(r.seconds for r in rows)}
    if seconds is not None:
        costs["sweep_seconds"] = seconds
    mlflow_runs.log_metrics(uri, parent, costs)
    mlflow_runs.finish_run(uri, parent, failed=any(r.status == "error" for r in rows))
