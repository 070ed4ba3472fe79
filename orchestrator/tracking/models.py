"""A trial's best student as an MLflow 3 model (`LoggedModel`), and the sweep's best model on the parent run.

The model is the student file Ray Train kept in the trial's best checkpoint (trainables.student_file), plus an
`MLmodel` descriptor whose pyfunc flavour loads it with `orchestrator.models.pyfunc` (no pickle: the weights are
read with `torch.load(weights_only=True)`). It is created with the trial's child run as its source run, its
val (and, when the trial reached its last epoch, test) metrics are linked to it, and the child run lists it as
an output, so the experiment's Models tab lists it and `mlflow.search_logged_models` ranks it.

`best_source` is pure (which of the checkpoints Ray kept, linked with which scores); the MLflow calls go through
tracking.client's cached clients, from the sweep's background writer only.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.core.selection import Selection
from orchestrator.tracking import client as mlflow_runs
from orchestrator.tracking.client import REPORTED_AT
from orchestrator.tracking.stored import BEST_MODEL_KEY, KeptCheckpoint

MODEL_NAME = "best_student"          # `runs:/<trial run id>/best_student` resolves to the trial's model
ROLE_MODEL = "trial_model"           # tag `role` of a sweep trial's model (beside tags sweep_name, trial_id)
ROLE_RUN_MODEL = "run_model"         # ... of a single run's (`run.py train`)
MODEL_METRIC_PREFIXES = ("val_iou.", "test_iou.")
MODEL_METRICS = ("val_miou", "test_miou")
LOADER_MODULE = "orchestrator.models.pyfunc"
MODEL_FILE = "model.pt"              # trainables.student_file.MODEL_FILE (not imported: no torch in the driver)


@dataclass(frozen=True)
class ModelPoint:
    """A metric the model is linked with: the very point its run logged (same step and time), so that MLflow
    links that point instead of adding a second one to the run's history."""
    key: str
    value: float
    step: int
    at: float | None                  # the report's `reported_at` (s); None: now


@dataclass(frozen=True)
class ModelSource:
    """Where a trial's best model is: its checkpoint folder in the storage, and the epoch it was saved at."""
    folder: str                       # a path of the storage's pyarrow filesystem
    epoch: int
    points: tuple[ModelPoint, ...]    # what the model is linked with: val (and test) scores

    @property
    def metrics(self) -> dict[str, float]:
        return {p.key: p.value for p in self.points}


def epoch_rows(epochs: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """A trial's reported epochs, oldest first, without the report that hands Tune the best model."""
    return [epochs[e] for e in sorted(epochs) if not epochs[e].get(BEST_MODEL_KEY)]


def best_source(kept: list[KeptCheckpoint], last: dict[str, Any] | None, selection: Selection) -> ModelSource | None:
    """The best of the kept checkpoints by the selection rule (Ray kept it by the same rule), linked with its
    epoch's val scores and, when `last` (the trial's last epoch report) scored that model on the test split,
    with those too. None when nothing was kept."""
    kept = sorted((k for k in kept if isinstance(k.metrics.get("epoch"), int)), key=lambda k: k.metrics["epoch"])
    best = selection.best(kept, lambda k: k.metrics)
    if best is None:
        return None
    epoch = best.metrics["epoch"]
    points = _points(best.metrics, epoch, lambda k: not k.startswith("test"))
    if last and last.get("test_epoch") == epoch:   # the test split scored this very model
        points += _points(last, int(last["epoch"]), lambda k: k.startswith("test"))
    return ModelSource(best.folder, epoch, tuple(points))


def _points(row: dict[str, Any], step: int, wanted) -> list[ModelPoint]:
    return [ModelPoint(k, float(v), step, row.get(REPORTED_AT)) for k, v in sorted(row.items())
            if _is_model_metric(k) and wanted(k)]


def _is_model_metric(key: str) -> bool:
    return key in MODEL_METRICS or key.startswith(MODEL_METRIC_PREFIXES)


def train_kept(filesystem, sweep_fs_path: str, trial_id: str) -> list[KeptCheckpoint]:
    """The checkpoints Ray Train kept for a trial's run (`train-<trial id>/` in the sweep's storage)."""
    import logging

    from ray.train import Result

    from orchestrator.core.paths import train_run_name

    folder = f"{sweep_fs_path.rstrip('/')}/{train_run_name(trial_id)}"
    if filesystem.get_file_info(f"{folder}/checkpoint_manager_snapshot.json").type.name != "File":
        return []   # a local-mode trial (its checkpoints are Tune's), or one that never checkpointed
    quiet = logging.getLogger("ray.train.v2._internal.execution.checkpoint.checkpoint_manager")
    level, quiet.level = quiet.level, logging.WARNING   # it announces the snapshot it reads, in three lines
    try:
        result = Result.from_path(folder, storage_filesystem=filesystem)
    finally:
        quiet.setLevel(level)
    return [KeptCheckpoint(c.path, dict(m)) for c, m in result.best_checkpoints or ()]


def score_of(epochs: dict[int, dict[str, Any]], selection: Selection) -> float | None:
    """A trial's best score by the selection rule (None before its first epoch)."""
    best = selection.best(epoch_rows(epochs))
    return None if best is None else selection.score(best)


# ---- MLflow ---------------------------------------------------------------------------------------

def write_model_folder(model_file: Path, folder: Path) -> None:
    """An MLflow model folder: `MLmodel` (pyfunc flavour, our loader) and `data/model.pt`."""
    from mlflow.models import Model
    import mlflow.pyfunc

    (folder / "data").mkdir(parents=True)
    shutil.copyfile(model_file, folder / "data" / MODEL_FILE)
    descriptor = Model()
    mlflow.pyfunc.add_to_model(descriptor, loader_module=LOADER_MODULE, data=f"data/{MODEL_FILE}")
    descriptor.save(str(folder / "MLmodel"))


def trial_models(uri: str, experiment_id: str, sweep_name: str) -> dict[str, Any]:
    """trial id → its logged model (READY or not), every page of the search."""
    query = f"tags.sweep_name = {mlflow_runs.quoted(sweep_name)}" if mlflow_runs.quoted(sweep_name) else None
    found: dict[str, Any] = {}
    for model in mlflow_runs.all_logged_models(uri, experiment_id, query):
        if model.tags.get("sweep_name") == sweep_name and model.tags.get("role") == ROLE_MODEL:
            found.setdefault(model.tags.get("trial_id", ""), model)
    return found


def log_model(uri: str, experiment_id: str, run_id: str, tags: dict[str, str], source: ModelSource, filesystem,
              params: dict[str, Any]) -> str:
    """Create a run's LoggedModel from `source` (read through the storage's pyarrow `filesystem`); returns its
    id. `tags` say whose model it is (a sweep's trial, or a single run)."""
    from mlflow.entities import Metric

    c = mlflow_runs.client(uri)
    model = c.create_logged_model(experiment_id, name=MODEL_NAME, source_run_id=run_id,
                                  tags={**tags, "epoch": str(source.epoch)},
                                  params={k: str(v) for k, v in params.items()}, model_type="semantic-segmentation")
    try:
        with tempfile.TemporaryDirectory(prefix="semiovs-model-") as tmp:
            local = Path(tmp) / MODEL_FILE
            with filesystem.open_input_stream(f"{source.folder}/{MODEL_FILE}") as stream, open(local, "wb") as out:
                shutil.copyfileobj(stream, out, 1 << 20)
            write_model_folder(local, Path(tmp) / "model")
            c.log_model_artifacts(model.model_id, str(Path(tmp) / "model"))
        now = time.time()
        metrics = [Metric(p.key, p.value, int((now if p.at is None else p.at) * 1000), p.step, model_id=model.model_id)
                   for p in source.points]
        for start in range(0, len(metrics), 1000):
            c.log_batch(run_id, metrics=metrics[start:start + 1000])
        c.finalize_logged_model(model.model_id, "READY")
    except BaseException:
        c.finalize_logged_model(model.model_id, "FAILED")   # found again and replaced by the next attempt
        raise
    add_output(uri, run_id, model.model_id, source.epoch)
    c.set_tag(run_id, "best_model_id", model.model_id)
    return model.model_id


def add_output(uri: str, run_id: str, model_id: str, step: int) -> None:
    """List the model as the run's output, once: MLflow refuses the same pair twice (a retry, a sync)."""
    from mlflow.entities import LoggedModelOutput

    c = mlflow_runs.client(uri)
    if model_id not in {o.model_id for o in c.get_run(run_id).outputs.model_outputs}:
        c.log_outputs(run_id, [LoggedModelOutput(model_id, step)])


def name_best_model(uri: str, parent_run_id: str, model_id: str, trial_id: str, score: float,
                    selection: Selection) -> None:
    """Tag the sweep's parent run with its best model and list that model as the run's output."""
    c = mlflow_runs.client(uri)
    for key, value in {"best_model_id": model_id, "best_model_uri": f"models:/{model_id}",
                       "best_trial_id": trial_id, "best_model_selected_by": f"{selection.metric} {selection.mode}"
                       }.items():
        c.set_tag(parent_run_id, key, value)
    mlflow_runs.log_metrics(uri, parent_run_id, {f"best_model.{selection.metric}": score})
    add_output(uri, parent_run_id, model_id, 0)
