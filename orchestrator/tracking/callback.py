"""The Tune callback that mirrors each trial of a sweep into its own MLflow child run.

It runs in the sweep driver's process (the only MLflow writer). Per trial: one child run (found again by
tag after a resume), params = the resolved config, and each epoch logged once by an EpochLogger from the
numbers Tune received and the pictures the trial's rank-0 worker wrote as files.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from orchestrator.core.paths import run_files_dir, train_run_name
from orchestrator.tracking import client as mlflow_runs


def trial_run(uri: str, experiment_id: str, parent_run_id: str, sweep_name: str, trial_id: str,
              config: dict[str, Any], base_params: dict[str, Any]) -> tuple[str, int]:
    """(run id, last epoch logged) of a trial's child run: found again by tag, or created with its params."""
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
    return run_id, 0


def make_trial_callback(uri: str, experiment_id: str, parent_run_id: str, sweep_name: str,
                        base_params: dict[str, Any], files_root: str | Path,
                        progress: Callable[[str, dict, dict], None] | None = None):
    """A ray.tune.Callback (built lazily: importing this module does not import Ray)."""
    from ray.tune import Callback

    class TrialRunsToMLflow(Callback):
        # No get_state/set_state on purpose: after a resume every trial's run is looked up again by tag,
        # which also reads how many epochs MLflow already holds (state saved before a crash may lag).
        def __init__(self):
            self.loggers: dict[str, mlflow_runs.EpochLogger] = {}

        def _logger(self, trial) -> mlflow_runs.EpochLogger:
            if trial.trial_id not in self.loggers:
                run_id, last = trial_run(uri, experiment_id, parent_run_id, sweep_name, trial.trial_id,
                                         trial.config, base_params)
                files = run_files_dir(Path(files_root), train_run_name(trial.trial_id))
                self.loggers[trial.trial_id] = mlflow_runs.EpochLogger(uri, run_id, files, last)
            return self.loggers[trial.trial_id]

        def on_trial_start(self, iteration, trials, trial, **info):
            self._logger(trial)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self._logger(trial).log(result)
            if progress is not None:
                progress(trial.trial_id, trial.config, result)

        def on_trial_complete(self, iteration, trials, trial, **info):
            mlflow_runs.finish_run(uri, self._logger(trial).run_id)

        def on_trial_error(self, iteration, trials, trial, **info):
            mlflow_runs.finish_run(uri, self._logger(trial).run_id, failed=True)

    return TrialRunsToMLflow()
