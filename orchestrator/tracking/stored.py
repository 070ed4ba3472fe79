"""What Tune's storage holds about a sweep's trials: every epoch each one reported, its config and status.

Tune appends each result to `<trial folder>/result.json` (one JSON object a line), so whatever MLflow
missed while it was down can be written from there later (reconcile.py).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable

RESULT_FILE = "result.json"
BEST_MODEL_KEY = "best_model"   # marks the report after training that hands Tune the best model: not an epoch
FINISHED = {"TERMINATED", "ERROR"}


@dataclass(frozen=True)
class KeptCheckpoint:
    """A checkpoint Ray kept for a trial (Train's or Tune's retention: the best and the latest), with the metrics
    reported with it, i.e. its epoch's."""
    folder: str                       # a path of the storage's pyarrow filesystem
    metrics: dict[str, Any]


@dataclass(frozen=True)
class StoredTrial:
    trial_id: str
    config: dict[str, Any]
    status: str                                   # Tune's: TERMINATED, ERROR, PENDING, RUNNING, PAUSED
    epochs: dict[int, dict[str, Any]] = field(default_factory=dict)   # epoch → the result reported
    filesystem: Any = None                        # the storage's pyarrow filesystem ...
    fs_path: str = ""                             # ... and the trial's folder in it
    tune_checkpoints: tuple[KeptCheckpoint, ...] = ()   # what Tune kept (a local-mode trial's, or the best model)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def failed(self) -> bool:
        return self.status == "ERROR"


def epochs_from_lines(lines: Iterable[str]) -> dict[int, dict[str, Any]]:
    """epoch → its first reported result (a restarted trial reports its checkpoint's epoch again, and the
    first one is what MLflow got live). A torn last line of a killed driver is skipped."""
    out: dict[int, dict[str, Any]] = {}
    for line in lines:
        try:
            result = json.loads(line)
        except ValueError:
            continue
        if not isinstance(result, dict) or result.get(BEST_MODEL_KEY):
            continue
        epoch = result.get("epoch", result.get("training_iteration"))
        if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch > 0:
            out.setdefault(epoch, result)
    return out


def read_epochs(filesystem, trial_fs_path: str) -> dict[int, dict[str, Any]]:
    """The epochs in a trial's result file, on the storage's pyarrow filesystem (a folder or a bucket)."""
    try:
        with filesystem.open_input_stream(f"{trial_fs_path}/{RESULT_FILE}") as stream:
            text = stream.readall().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return {}
    return epochs_from_lines(text.splitlines())


def stored_trials(sweep_dir: str) -> list[StoredTrial]:
    """Every trial of the sweep Tune has a record of (empty when Tune never saved its state there)."""
    from ray.tune import ExperimentAnalysis

    try:
        analysis = ExperimentAnalysis(str(sweep_dir))
    except (ValueError, FileNotFoundError):
        return []
    return [StoredTrial(t.trial_id, dict(t.config or {}), str(t.status),
                        read_epochs(t.storage.storage_filesystem, t.storage.trial_fs_path),
                        t.storage.storage_filesystem, t.storage.trial_fs_path, tune_kept(t)) for t in analysis.trials]


def tune_kept(trial) -> tuple[KeptCheckpoint, ...]:
    """The checkpoints Tune kept for a trial (a Tune `Trial`, live or restored from the storage)."""
    manager = trial.run_metadata.checkpoint_manager
    return tuple(KeptCheckpoint(r.checkpoint.path, dict(r.metrics)) for r in manager.best_checkpoint_results)
