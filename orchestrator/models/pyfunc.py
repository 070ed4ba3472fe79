"""MLflow's pyfunc flavour of a student: `mlflow.pyfunc.load_model("models:/<id>")` lands here.

The model folder's `MLmodel` names this module as its loader and `data/model.pt` as its data (written by
orchestrator.tracking.models). Loading reads the student file with `torch.load(weights_only=True)`: nothing
is unpickled. `predict` takes uint8 RGB images, one [H,W,3] array, a batch [B,H,W,3] of one size, or a list of
arrays of any sizes, and returns the class-id masks (uint8), one per image.
"""
from __future__ import annotations

from typing import Any

import numpy as np


class PyfuncStudent:
    def __init__(self, package: dict[str, Any]):
        from trainables.student_file import build_from_package

        self.package = package
        self.model = build_from_package(package)
        self.class_names = list(package["class_names"])

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        from trainables.student_file import predict

        if isinstance(model_input, np.ndarray) and model_input.ndim == 3:
            return predict(self.model, self.package, model_input[None])[0][0]
        if isinstance(model_input, np.ndarray):
            return predict(self.model, self.package, model_input)[0]
        return [predict(self.model, self.package, np.asarray(image)[None])[0][0] for image in model_input]


def _load_pyfunc(data_path: str) -> PyfuncStudent:
    from trainables.student_file import load_package

    return PyfuncStudent(load_package(data_path))
