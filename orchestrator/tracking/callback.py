"""The Tune callback that mirrors each trial of a sweep into its own MLflow child run.

It runs in the sweep driver's process (the only MLflow writer) but never calls MLflow itself: each event
is queued for the writer thread (writer.py), so a slow or restarting tracking server never holds up
Tune's event loop. The writer thread keeps the sweep's ledger (reconcile.py): one child run per trial
(found again by tag after a resume), params = the resolved config, each epoch logged once from the
numbers Tune received and the pictures the trial's rank-0 worker wrote as files.

Tune pickles the callback with the Tuner and a resumed sweep gets that copy back, so the callback holds
only the sweep's key; the live ledger and writer of this process are looked up by it.
"""
from __future__ import annotations

from typing import Callable

from orchestrator.tracking.reconcile import SweepLedger
from orchestrator.tracking.stored import BEST_MODEL_KEY, StoredTrial, tune_kept
from orchestrator.tracking.writer import TrackingWriter

_ACTIVE: dict[str, tuple[SweepLedger, TrackingWriter]] = {}


def register(key: str, ledger: SweepLedger, writer: TrackingWriter) -> None:
    """Where the callbacks of sweep `key` send their writes in this process."""
    _ACTIVE[key] = (ledger, writer)


def active(key: str) -> tuple[SweepLedger, TrackingWriter]:
    """A function, not the dict, is what the pickled callback refers to (it is pickled by reference)."""
    return _ACTIVE[key]


def forget_windows(trial) -> None:
    """Drop a completed trial's moving-average windows from Tune's memory. Until the sweep ends, Tune keeps for
    every trial the last 5 and the last 10 values of every number it reported (two deques a key, in
    ray.tune.trainable.metadata): for a trial reporting ~45 numbers an epoch, ~80 KB of the 115 KB the driver
    holds per trial (measured with tracemalloc; 33 KB without them), so the driver grew by ~0.12 MB a trial.
    A completed trial reports nothing more (an errored one may be resumed: its windows stay), and its averages
    stay in `metric_analysis`, which is what Tune's analysis reads."""
    metadata = getattr(trial, "run_metadata", None)
    if getattr(metadata, "metric_n_steps", None):
        metadata.metric_n_steps = {}   # also drops the cached JSON of it (each experiment-state save writes it)


def make_trial_callback(key: str, progress: Callable[[str, dict, dict], None] | None = None):
    """A ray.tune.Callback (built lazily: importing this module does not import Ray)."""
    from ray.tune import Callback

    class TrialRunsToMLflow(Callback):
        # No get_state/set_state on purpose: after a resume every trial's run is looked up again by tag,
        # which also reads which epochs MLflow already holds (state saved before a crash may lag).
        def __init__(self):
            self.key, self.progress = key, progress

        def _queue(self, label: str, write) -> None:
            ledger, writer = active(self.key)
            writer.submit(label, lambda attempt: write(ledger, attempt))

        def on_trial_start(self, iteration, trials, trial, **info):
            trial_id, config = trial.trial_id, dict(trial.config)
            self._queue(f"the run of trial {trial_id}", lambda ledger, attempt: ledger.start(trial_id, config))

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if result.get(BEST_MODEL_KEY):   # not an epoch: the trial handing Tune its best model (trial.py)
                return
            trial_id, config, result = trial.trial_id, dict(trial.config), dict(result)
            self._queue(f"epoch {result.get('epoch')} of trial {trial_id}",
                        lambda ledger, attempt: ledger.epoch(trial_id, config, result, attempt))
            if self.progress is not None:
                self.progress(trial_id, config, result)

        def on_trial_complete(self, iteration, trials, trial, **info):
            forget_windows(trial)
            self._finish(trial, failed=False)
            ledger, _ = active(self.key)
            if ledger.policy.at_trial_end:   # the model now, while the sweep goes on (topK: at its end)
                stored = StoredTrial(trial.trial_id, dict(trial.config), "TERMINATED", {},
                                     trial.storage.storage_filesystem, trial.storage.trial_fs_path, tune_kept(trial))
                self._queue(f"the model of trial {trial.trial_id}", lambda ledger, attempt: ledger.model(stored, attempt))

        def on_trial_error(self, iteration, trials, trial, **info):
            self._finish(trial, failed=True)

        def _finish(self, trial, failed: bool) -> None:
            trial_id, config = trial.trial_id, dict(trial.config)
            self._queue(f"the status of trial {trial_id}",
                        lambda ledger, attempt: ledger.finish(trial_id, config, failed))

    return TrialRunsToMLflow()
