"""A sweep's side in MLflow: the experiment and parent run made at the start (they must exist before the
trials), everything after that written by a background writer, and at the end a reconcile from Tune's
storage plus the one line that says what is still missing and how to write it.
"""
from __future__ import annotations

import itertools
import os
import time
from pathlib import Path
from typing import Any, Callable

from orchestrator.core.errors import UserError
from orchestrator.core.selection import ModelPolicy, Selection
from orchestrator.tracking import client as mlflow_runs
from orchestrator.tracking import retry
from orchestrator.tracking.callback import register
from orchestrator.tracking.reconcile import SweepLedger, sync_command, unlogged, unlogged_line
from orchestrator.tracking.writer import TrackingWriter

SUMMARY = "the sweep summary"
MODELS = "the trials' models"
START_BUDGET_S = 60.0   # how long the start waits for an unreachable server before refusing to begin


def grace_seconds() -> float:
    """How long the end of a sweep waits for MLflow to come back (SEMIOVS_MLFLOW_GRACE_S, default 60)."""
    try:
        return max(0.0, float(os.environ.get("SEMIOVS_MLFLOW_GRACE_S", "60")))
    except ValueError:
        raise UserError("SEMIOVS_MLFLOW_GRACE_S must be a number of seconds. Fix: e.g. SEMIOVS_MLFLOW_GRACE_S=60.")


def call_with_retry(fn: Callable[[], Any], uri: str, budget_s: float = START_BUDGET_S,
                    backoff: Callable[[int], float] = retry.backoff_s) -> Any:
    """fn() now, retried while the failure is transient and the budget lasts; then a one-line UserError."""
    end, attempt = time.monotonic() + budget_s, 0
    while True:
        try:
            return fn()
        except UserError:
            raise
        except Exception as exc:   # noqa: BLE001 - sorted into transient (wait) and not (report)
            attempt += 1
            if not retry.is_transient(exc) or time.monotonic() + backoff(attempt) > end:
                reason = " ".join(str(exc).split())[:300]
                raise UserError(f"MLflow at {uri} cannot be used ({reason}). Fix: start the tracking server "
                                f"or pass another --tracking-uri, then run the same command again.") from None
            time.sleep(backoff(attempt))


class SweepTracking:
    def __init__(self, uri: str, name: str, storage: str, sweep_dir: str, base: dict[str, Any], files_root: Path,
                 selection: Selection = Selection(), policy: ModelPolicy = ModelPolicy()):
        """storage: the Tune storage root (folder or URI); sweep_dir: the sweep's folder in it; files_root:
        the local folder of its runs' pictures (core.paths.files_root); selection and policy: which epoch is
        a trial's best and which trials' models are logged (the space file's metric, mode and log_models)."""
        retry.configure_http_client()
        # Closing a run through an `mlflow server` otherwise reads the whole run back to print two links on
        # stdout: a request and two lines per trial, thousands in a big sweep. A user's own setting wins.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.uri, self.name, self.storage, self.sweep_dir, self.base = uri, name, storage, sweep_dir, base
        self.files_root, self.selection, self.policy = files_root, selection, policy
        self.writer = TrackingWriter()
        self.experiment_id = self.parent_run_id = ""
        self.ledger: SweepLedger | None = None
        self.last_trials: list = []   # what Tune's storage held at the last reconcile

    def start(self, resume: bool) -> None:
        """The experiment and parent run (reused on --resume), before any trial starts."""
        self.experiment_id = call_with_retry(lambda: mlflow_runs.ensure_experiment(self.uri, self.name), self.uri)
        tries = itertools.count()   # a retry looks for the run a failed try may have made before making one
        self.parent_run_id = call_with_retry(lambda: mlflow_runs.start_parent_run(
            self.uri, self.experiment_id, self.name, self.base, resume=resume or next(tries) > 0), self.uri)
        self.ledger = SweepLedger(self.uri, self.experiment_id, self.parent_run_id, self.name, self.base,
                                  self.files_root, self.selection, self.policy)
        register(str(self.sweep_dir), self.ledger, self.writer)

    def submit(self, label: str, fn: Callable[[], Any]) -> None:
        """A write for the parent run, in the background."""
        self.writer.submit(label, lambda attempt: fn())

    def reconcile(self) -> list:
        """Queue a write of every epoch Tune's storage holds and MLflow lacks; returns the stored trials."""
        from orchestrator.tracking.stored import stored_trials

        trials = stored_trials(self.sweep_dir)
        for trial in trials:
            self.writer.submit(f"trial {trial.trial_id}", lambda attempt, t=trial: self.ledger.sync(t, attempt))
        return trials

    def _drain(self, say: Callable[[str], None]) -> list[str]:
        """Wait while the writes go through, however long the queue; give up once MLflow has failed for
        the grace period (counted from now: a server down for an hour still gets it). Returns what is left."""
        began, grace, told = time.monotonic(), grace_seconds(), False
        while not self.writer.flush(1.0):
            since = self.writer.failing_since
            if since is None:
                continue
            if not told:
                say(f"MLflow at {self.uri} is not answering ({self.writer.last_error}): "
                    f"{self.writer.pending()} write(s) queued; retrying for up to {grace:.0f} s")
                told = True
            if time.monotonic() - max(since, began) > grace:
                break
        return self.writer.close(0.0)

    def callback(self, progress=None):
        from orchestrator.tracking.callback import make_trial_callback

        return make_trial_callback(str(self.sweep_dir), progress)

    def finish(self, write_summary: Callable[[], None], say: Callable[[str], None]) -> str | None:
        """Reconcile, write the summary (`write_summary` closes the parent run), wait up to the grace
        period, and return the one line about what is still missing (None when nothing is)."""
        trials = self.last_trials = self.reconcile()
        self.writer.submit(MODELS, lambda attempt: self.ledger.log_models(trials, attempt))
        self.submit(SUMMARY, write_summary)
        left = self._drain(say)
        gaps = unlogged(trials, self.ledger.confirmed())
        dropped = {label for label, _ in self.writer.dropped}   # failed in a way retrying cannot mend
        other = [label for label in (MODELS, SUMMARY) if label in left or label in dropped]
        return unlogged_line(gaps, other, self.uri, self.writer.last_error if left else "",
                             sync_command(self.name, self.storage, self.uri))
