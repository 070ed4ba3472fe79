"""A model URI to a student file on this machine: `models:/<model_id>`, `runs:/<run_id>/<path>`, or a path.

A path may name a student file (`model.pt`), a checkpoint folder that holds one (Ray Train's or Tune's, as
`ExperimentAnalysis(...).best_checkpoint` gives), or an MLflow model folder (`MLmodel` + `data/model.pt`).
MLflow URIs are downloaded from the tracking server into a temporary folder. Anything that does not resolve
is one UserError naming the URI, why, and what to pass instead.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.core.errors import UserError
from orchestrator.tracking import client as mlflow_runs

MODEL_FILE = "model.pt"     # trainables.student_file.MODEL_FILE
URI_HELP = ("pass models:/<model_id> (the sweep's last lines and MLflow's Models tab name it), "
            "runs:/<trial run id>/best_student, or a checkpoint folder or model.pt file")


@dataclass(frozen=True)
class ResolvedModel:
    uri: str
    package: dict[str, Any]      # the student file, read (trainables.student_file.load_package)
    data: bytes                  # the file's bytes, for workers on other machines (ray.put)
    model_id: str | None         # the MLflow LoggedModel, when the URI names one

    @property
    def class_names(self) -> list[str]:
        return list(self.package["class_names"])


def resolve_model(uri: str, tracking_uri: str) -> ResolvedModel:
    from trainables.student_file import load_package

    with tempfile.TemporaryDirectory(prefix="semiovs-model-") as scratch:
        file, model_id = _local_file(uri, tracking_uri, Path(scratch))
        try:
            package = load_package(file)
        except ValueError as err:
            raise UserError(f"model '{uri}' is not a student this tool can load: {err}. Fix: {URI_HELP}.") from None
        return ResolvedModel(uri, package, file.read_bytes(), model_id)


def _local_file(uri: str, tracking_uri: str, scratch: Path) -> tuple[Path, str | None]:
    if uri.startswith(("models:/", "runs:/")):
        model_id = _mlflow_call(lambda: _model_id(uri, tracking_uri), uri, tracking_uri)
        # A model's own artifact location, downloaded through the tracking URI given: MLflow's models:/ resolver
        # asks the process-wide tracking URI instead (mlflow 3.17), which is not the server the user named.
        source = _mlflow_call(lambda: mlflow_runs.client(tracking_uri).get_logged_model(model_id).artifact_location,
                              uri, tracking_uri) if model_id else uri
        return _student_file(_download(source, uri, tracking_uri, scratch), uri), model_id
    if "://" in uri:
        raise UserError(f"model '{uri}' does not resolve: only models:/, runs:/ and local paths are read. "
                        f"Fix: {URI_HELP}.")
    path = Path(uri).expanduser()
    if not path.exists():
        raise UserError(f"model '{uri}' does not resolve: no such file or folder. Fix: {URI_HELP}.")
    return (_student_file(path, uri) if path.is_dir() else path), None


def _mlflow_call(fn, uri: str, tracking_uri: str):
    try:
        return fn()
    except UserError:
        raise
    except Exception as err:   # noqa: BLE001 - MLflow raises several kinds for a URI it cannot find
        reason = " ".join(str(err).split())[:300].rstrip(".")
        raise UserError(f"model '{uri}' does not resolve in {tracking_uri}: {reason}. Fix: {URI_HELP}, with "
                        f"the --tracking-uri the sweep logged to.") from None


def _download(source: str, uri: str, tracking_uri: str, scratch: Path) -> Path:
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")   # one file: no bar on the console
    import mlflow.artifacts

    return Path(_mlflow_call(lambda: mlflow.artifacts.download_artifacts(
        artifact_uri=source, tracking_uri=tracking_uri, dst_path=str(scratch)), uri, tracking_uri))


def _student_file(folder: Path, uri: str) -> Path:
    for candidate in (folder / "data" / MODEL_FILE, folder / MODEL_FILE, folder):
        if candidate.is_file():
            return candidate
    raise UserError(f"model '{uri}' resolves to {folder}, which holds no {MODEL_FILE} (nor data/{MODEL_FILE}). "
                    f"Fix: {URI_HELP}.")


def _model_id(uri: str, tracking_uri: str) -> str | None:
    """The LoggedModel a models:/ or runs:/ URI names; None for a run artifact that is not a model."""
    c = mlflow_runs.client(tracking_uri)
    if uri.startswith("models:/"):
        name = uri[len("models:/"):].strip("/")
        if "/" not in name and "@" not in name:
            return name                                                 # models:/<model_id>
        if "@" in name:                                                 # models:/<name>@<alias>
            registered, _, alias = name.partition("@")
            return c.get_model_version_by_alias(registered, alias).model_id
        registered, _, version = name.partition("/")                   # models:/<name>/<version>
        return c.get_model_version(registered, version).model_id
    run_id, _, path = uri[len("runs:/"):].partition("/")
    for output in c.get_run(run_id).outputs.model_outputs:
        if c.get_logged_model(output.model_id).name == path.strip("/"):
            return output.model_id
    return None
