"""The writer thread's book of one sweep in MLflow, and the reconcile from Tune's storage.

Each trial has one child run (found again by tag) and a set of epochs MLflow is known to hold. Live
reports and the reconcile both go through `SweepLedger`, so an epoch is logged once whichever comes
first. Only the writer thread calls a ledger's methods.

The runs MLflow already holds are read once, every page of one search (`SweepLedger.known`), not once per
trial: a resume or a `sync` of thousands of trials would otherwise make thousands of searches.
"""
from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any, Callable, Iterable

from orchestrator.core import console
from orchestrator.core.paths import run_files_dir, train_run_name
from orchestrator.core.selection import ModelPolicy, Selection
from orchestrator.tracking import client as mlflow_runs
from orchestrator.tracking.models import (ROLE_MODEL, best_source, epoch_rows, log_model, name_best_model, score_of,
                                          train_kept, trial_models)
from orchestrator.tracking.stored import BEST_MODEL_KEY, StoredTrial, read_epochs


RUNNING = "RUNNING"
# What the ledger does with two runs of one trial (tags trial_id + sweep_name; a version that read one page of
# runs made them above 1,000 trials): it writes into the newest, the run `report` reads, so the report holds all
# the trial's epochs, and warns once with the run ids and the command that deletes the others. Not an error: the
# ledger works on the writer thread, where raising would only drop the trial's writes, and refusing a resume
# or a sync over a duplicate that needs tidying would leave the sweep's other trials unwritten.
DUPLICATES_USED = "the sweep writes into the newest of each (the run `report` reads)"


def trial_run(uri: str, experiment_id: str, parent_run_id: str, sweep_name: str, trial_id: str,
              config: dict[str, Any], base_params: dict[str, Any],
              found: tuple[str, str, int] | None = None) -> tuple[str, set[int], str]:
    """(run id, epochs logged, status) of a trial's child run: `found` (the run id, status and number of params
    of the run MLflow holds for it), or a run created with its params."""
    resolved = {**base_params, **config}
    if found is not None:
        run_id, status, params = found
        if params < len(resolved):   # made by a try that stopped before its params (a killed driver): finish it
            describe_run(uri, run_id, resolved)
        return run_id, mlflow_runs.logged_epochs(uri, run_id), status
    tags = {"role": mlflow_runs.ROLE_TRIAL, "trial_id": trial_id, "sweep_name": sweep_name,
            "mlflow.parentRunId": parent_run_id}
    swept = " ".join(f"{k}={v}" for k, v in sorted(config.items()))
    run_id = mlflow_runs.create_run(uri, experiment_id, f"{trial_id} {swept}".strip(), tags)  # readable in the UI
    describe_run(uri, run_id, resolved)
    return run_id, set(), RUNNING


def describe_run(uri: str, run_id: str, resolved: dict[str, Any]) -> None:
    """The resolved config as one file (`run.py train --set ...` can replay it), then as params: a run that
    holds all its params holds the file too (the same values logged again are accepted)."""
    mlflow_runs.log_text(uri, run_id, json.dumps(resolved, indent=1, sort_keys=True), "config.json")
    mlflow_runs.log_params(uri, run_id, resolved)


def runs_by_trial(runs: Iterable[tuple]) -> dict[str, list[tuple]]:
    """trial id → [(run id, ...), ...] in the order given (newest first), from (trial id, run id, ...) rows."""
    out: dict[str, list[tuple]] = {}
    for trial_id, *rest in runs:
        out.setdefault(trial_id, []).append(tuple(rest))
    return out


class SweepLedger:
    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, sweep_name: str,
                 base_params: dict[str, Any], files_root: str | Path, selection: Selection = Selection(),
                 policy: ModelPolicy = ModelPolicy(), warn: Callable[[str], None] = console.warn):
        self.uri, self.experiment_id, self.parent_run_id = uri, experiment_id, parent_run_id
        self.sweep_name, self.base_params, self.files_root = sweep_name, base_params, Path(files_root)
        self.selection, self.policy, self.warn = selection, policy, warn
        self.loggers: dict[str, mlflow_runs.EpochLogger] = {}
        self._known: dict[str, tuple[str, str, int]] | None = None   # see known()
        self._making: set[str] = set()   # trials whose run an unfinished try was making (see logger())
        self.written = 0   # epochs the reconcile wrote (the live ones are not counted)
        self.last: dict[str, dict[str, Any]] = {}   # a running trial's last epoch report, as Tune got it live
        self._models: dict[str, tuple[str, float | None]] | None = None   # trial id → (model id, score)
        self.best_model: tuple[str, str, float] | None = None            # (model id, trial id, score)

    def known(self) -> dict[str, tuple[str, str, int]]:
        """trial id → (run id, status, number of params) of the child runs of this sweep that MLflow held when
        first asked: one search, every page. An entry leaves when its trial's logger is made, so this only
        shrinks (the runs this process makes are in `loggers`). Two runs of one trial: see DUPLICATES_USED."""
        if self._known is None:
            runs = mlflow_runs.find_runs(self.uri, self.experiment_id, role=mlflow_runs.ROLE_TRIAL,
                                         sweep_name=self.sweep_name)
            by_trial = runs_by_trial((r.data.tags["trial_id"], r.info.run_id, r.info.status, len(r.data.params))
                                     for r in runs)
            self._say_duplicates(by_trial)
            self._known = {t: found[0] for t, found in by_trial.items() if t not in self.loggers}
        return self._known

    def _say_duplicates(self, by_trial: dict[str, list[tuple]]) -> None:
        text = mlflow_runs.duplicate_runs_text(self.uri, self.sweep_name, {
            f"trial {t}": [run[0] for run in found] for t, found in by_trial.items()}, DUPLICATES_USED)
        if text:
            self.warn(text)

    def _look_up(self, trial_id: str) -> tuple[str, str, int] | None:
        """The run MLflow holds for the trial, if any. After a try that failed while making it, MLflow is asked
        again (that try's call may have gone through on the server's side): by tags that match one run."""
        if trial_id not in self._making:
            return self.known().pop(trial_id, None)
        runs = mlflow_runs.find_runs(self.uri, self.experiment_id, role=mlflow_runs.ROLE_TRIAL, trial_id=trial_id,
                                     sweep_name=self.sweep_name)
        by_trial = runs_by_trial((trial_id, r.info.run_id, r.info.status, len(r.data.params)) for r in runs)
        self._say_duplicates(by_trial)
        self.known().pop(trial_id, None)
        return by_trial[trial_id][0] if runs else None

    def logger(self, trial_id: str, config: dict[str, Any]) -> mlflow_runs.EpochLogger:
        if trial_id not in self.loggers:
            found = self._look_up(trial_id)
            self._making.add(trial_id)   # until the logger exists: only failed tries leave a trial here
            run_id, logged, status = trial_run(self.uri, self.experiment_id, self.parent_run_id, self.sweep_name,
                                               trial_id, config, self.base_params, found)
            files = run_files_dir(self.files_root, train_run_name(trial_id))
            self.loggers[trial_id] = mlflow_runs.EpochLogger(self.uri, run_id, files, logged, status)
            self._making.discard(trial_id)
        return self.loggers[trial_id]

    def start(self, trial_id: str, config: dict[str, Any]) -> mlflow_runs.EpochLogger:
        """A trial (re)starts: its run, marked RUNNING again if an earlier attempt closed it."""
        logger = self.logger(trial_id, config)
        if logger.status != RUNNING:
            mlflow_runs.reopen_run(self.uri, logger.run_id)
            logger.status = RUNNING
        return logger

    def epoch(self, trial_id: str, config: dict[str, Any], result: dict[str, Any], attempt: int) -> bool:
        self.keep(trial_id, result)
        return self.logger(trial_id, config).log(result, recheck=attempt > 0)

    def keep(self, trial_id: str, result: dict[str, Any]) -> None:
        """Remember a running trial's last epoch report (its test scores join the model); dropped once the
        trial's model is logged: one row a trial, flat in epochs."""
        if not result.get(BEST_MODEL_KEY) and isinstance(result.get("epoch"), int):
            self.last[trial_id] = result

    def models(self) -> dict[str, tuple[str, float | None]]:
        """trial id → (model id, score) of the READY models MLflow holds for this sweep; read once, then kept
        up to date. A model left PENDING or FAILED by an interrupted attempt is deleted, to be logged again."""
        if self._models is None:
            self._models = {}
            for trial_id, model in trial_models(self.uri, self.experiment_id, self.sweep_name).items():
                if str(model.status) == "READY":
                    scores = {m.key: m.value for m in model.metrics or ()}
                    self._models[trial_id] = (model.model_id, self.selection.score(scores))
                else:
                    mlflow_runs.client(self.uri).delete_logged_model(model.model_id)
        return self._models

    def model(self, trial: StoredTrial, attempt: int) -> str | None:
        """Log the trial's best model unless MLflow holds it; returns its id (None: no checkpoint to log).
        The checkpoint is the best of those Ray kept (Tune's, and for a Train-mode trial Train's): the rule
        that kept them picks among them, so it is never one Ray has deleted."""
        if attempt > 0:
            self._models = None   # a failed attempt may have gone through on the server's side: look again
        if trial.trial_id in self.models():
            self.last.pop(trial.trial_id, None)
            return self.models()[trial.trial_id][0]
        kept = [*trial.tune_checkpoints,
                *train_kept(trial.filesystem, trial.fs_path.rstrip("/").rsplit("/", 1)[0], trial.trial_id)]
        stored = trial.epochs or read_epochs(trial.filesystem, trial.fs_path)
        rows = epoch_rows(stored)
        last = self.last.get(trial.trial_id) or (rows[-1] if rows else None)
        source = best_source(kept, last, self.selection)
        if source is None:
            return None
        run_id = self.logger(trial.trial_id, trial.config).run_id
        params = {**trial.config, "epoch": source.epoch}
        tags = {"role": ROLE_MODEL, "sweep_name": self.sweep_name, "trial_id": trial.trial_id}
        model_id = log_model(self.uri, self.experiment_id, run_id, tags, source, trial.filesystem, params)
        self.models()[trial.trial_id] = (model_id, self.selection.score(source.metrics))
        self.last.pop(trial.trial_id, None)
        return model_id

    def name_best(self) -> None:
        """Name the sweep's best logged model on the parent run (no model yet: nothing to name)."""
        scored = {t: score for t, (_, score) in self.models().items()}
        best = self.selection.best(sorted(scored), lambda t: {self.selection.metric: scored[t]})
        if best is None:
            return
        model_id, score = self.models()[best]
        name_best_model(self.uri, self.parent_run_id, model_id, best, score, self.selection)
        self.best_model = (model_id, best, score)

    def finish(self, trial_id: str, config: dict[str, Any], failed: bool) -> None:
        self._close(self.logger(trial_id, config), failed)
        if failed or not self.policy.at_trial_end:   # no model logged at the trial's end needs its last report:
            self.last.pop(trial_id, None)            # kept, it would make the ledger grow with the trials

    def _close(self, logger: mlflow_runs.EpochLogger, failed: bool) -> None:
        """Close the run, unless it is closed already with that status (the sweep's end syncs every trial)."""
        status = "FAILED" if failed else "FINISHED"
        if logger.status != status:
            mlflow_runs.finish_run(self.uri, logger.run_id, failed=failed)
            logger.status = status

    def sync(self, trial: StoredTrial, attempt: int) -> int:
        """Log every stored epoch of `trial` that MLflow lacks, and close its run if Tune finished it.
        Returns how many epochs it logged."""
        logger = self.logger(trial.trial_id, trial.config)
        if attempt > 0 or not logger.logged:   # the first look at a run reads what it holds
            logger.logged |= mlflow_runs.logged_epochs(self.uri, logger.run_id)
        written = sum(logger.log(trial.epochs[e]) for e in missing_epochs(trial.epochs, logger.logged))
        self.written += written
        if trial.finished:
            self._close(logger, trial.failed)
        return written

    def trials_to_model(self, trials: list[StoredTrial]) -> list[StoredTrial]:
        """The finished trials whose models the policy logs (a trial that failed gets none)."""
        done = {t.trial_id: t for t in trials if t.finished and not t.failed}
        scores = {t.trial_id: score_of(t.epochs, self.selection) for t in done.values()}
        return [done[t] for t in self.policy.chosen(scores, self.selection)]

    def log_models(self, trials: list[StoredTrial], attempt: int) -> None:
        """At the sweep's end (and in `sync`): the models the policy wants and MLflow lacks, then the best."""
        for trial in self.trials_to_model(trials):
            self.model(trial, attempt)
        if self.policy.kind != "none":
            self.name_best()

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
