"""The writer thread's book of one sweep in MLflow, and the reconcile from Tune's storage.

Each trial has one child run (found again by tag) and a set of epochs MLflow is known to hold. Live
reports and the reconcile both go through `SweepLedger`, so an epoch is logged once whichever comes
first. Only the writer thread calls a ledger's methods.
"""
from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from orchestrator.core.paths import run_files_dir, train_run_name
from orchestrator.tracking import client as mlflow_runs
from orchestrator.tracking.stored import StoredTrial


def trial_run(uri: str, experiment_id: str, parent_run_id: str, sweep_name: str, trial_id: str,
              config: dict[str, Any], base_params: dict[str, Any]) -> tuple[str, set[int]]:
    """(run id, epochs logged) of a trial's child run: found again by tag, or created with its params."""
    found = mlflow_runs.find_runs(uri, experiment_id, role=mlflow_runs.ROLE_TRIAL, trial_id=trial_id,
                                  sweep_name=sweep_name)
    if found:
        run_id = found[0].info.run_id
        return run_id, mlflow_runs.reopen_run(uri, run_id)
    tags = {"role": mlflow_runs.ROLE_TRIAL, "trial_id": trial_id, "sweep_name": sweep_name,
            "mlflow.parentRunId": parent_run_id}
    swept = " ".join(f"{k}={v}" for k, v in sorted(config.items()))
    run_id = mlflow_runs.create_run(uri, experiment_id, f"{trial_id} {swept}".strip(), tags)  # readable in the UI
    resolved = {**base_params, **config}
    mlflow_runs.log_params(uri, run_id, resolved)
    # the resolved config as one file too: `run.py train --set ...` can replay it
    mlflow_runs.log_text(uri, run_id, json.dumps(resolved, indent=1, sort_keys=True), "config.json")
    return run_id, set()


class SweepLedger:
    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, sweep_name: str,
                 base_params: dict[str, Any], files_root: str | Path):
        self.uri, self.experiment_id, self.parent_run_id = uri, experiment_id, parent_run_id
        self.sweep_name, self.base_params, self.files_root = sweep_name, base_params, Path(files_root)
        self.loggers: dict[str, mlflow_runs.EpochLogger] = {}
        self.written = 0   # epochs the reconcile wrote (the live ones are not counted)

    def logger(self, trial_id: str, config: dict[str, Any]) -> mlflow_runs.EpochLogger:
        if trial_id not in self.loggers:
            run_id, logged = trial_run(self.uri, self.experiment_id, self.parent_run_id, self.sweep_name,
                                       trial_id, config, self.base_params)
            files = run_files_dir(self.files_root, train_run_name(trial_id))
            self.loggers[trial_id] = mlflow_runs.EpochLogger(self.uri, run_id, files, logged)
        return self.loggers[trial_id]

    def epoch(self, trial_id: str, config: dict[str, Any], result: dict[str, Any], attempt: int) -> bool:
        return self.logger(trial_id, config).log(result, recheck=attempt > 0)

    def finish(self, trial_id: str, config: dict[str, Any], failed: bool) -> None:
        mlflow_runs.finish_run(self.uri, self.logger(trial_id, config).run_id, failed=failed)

    def sync(self, trial: StoredTrial, attempt: int) -> int:
        """Log every stored epoch of `trial` that MLflow lacks, and close its run if Tune finished it.
        Returns how many epochs it logged."""
        logger = self.logger(trial.trial_id, trial.config)
        if attempt > 0 or not logger.logged:   # the first look at a run reads what it holds
            logger.logged |= mlflow_runs.logged_epochs(self.uri, logger.run_id)
        written = sum(logger.log(trial.epochs[e]) for e in missing_epochs(trial.epochs, logger.logged))
        self.written += written
        if trial.finished:
            mlflow_runs.finish_run(self.uri, logger.run_id, failed=trial.failed)
        return written

    def confirmed(self) -> dict[str, set[int]]:
        return {trial_id: set(logger.logged) for trial_id, logger in list(self.loggers.items())}


def missing_epochs(stored: dict[int, Any], logged: set[int]) -> list[int]:
    return sorted(set(stored) - logged)


def unlogged(trials: list[StoredTrial], confirmed: dict[str, set[int]]) -> dict[str, list[int]]:
    """trial id → the stored epochs MLflow is not known to hold (trials with none left out)."""
    out = {}
    for trial in trials:
        gap = missing_epochs(trial.epochs, confirmed.get(trial.trial_id, set()))
        if gap:
            out[trial.trial_id] = gap
    return out


def sync_command(name: str, storage: str | Path, uri: str) -> str:
    return " ".join(shlex.quote(str(a)) for a in ("python", "run.py", "sync", "--name", name, "--storage", storage,
                                                   "--tracking-uri", uri))


def unlogged_line(gaps: dict[str, list[int]], other: list[str], uri: str, reason: str, command: str) -> str | None:
    """One line: what MLflow lacks, why, and the command that writes it (None when nothing is missing)."""
    if not gaps and not other:
        return None
    parts = []
    if gaps:
        parts.append(f"{sum(map(len, gaps.values()))} epoch(s) of {len(gaps)} trial(s)")
    if other:
        parts.append(", ".join(sorted(set(other))))
    why = f" ({reason})" if reason else ""
    return (f"warning: MLflow at {uri} is missing {' and '.join(parts)}{why}; Tune's storage holds them. "
            f"Write them when the server is back: {command}")
