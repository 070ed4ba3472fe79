"""A trained student as one self-contained file: what inference needs, nothing that only training needs.

`model.pt` holds the weights, the architecture and its settings, the resolved run config, the class names,
the palette the masks are drawn in and the input normalisation, plus the epoch and metrics it was saved at.
Only tensors and plain Python values, so it loads with `torch.load(weights_only=True)`. Every checkpoint
folder of a run holds one (beside the training state, see trainables.distributed), and an MLflow model is
this file plus an `MLmodel` descriptor (orchestrator.tracking.models).

    package = load_package("model.pt")
    model = build_from_package(package)              # eval mode, on the CPU
    labels, confidence = predict(model, package, images)   # uint8 [B,H,W,3] -> uint8 [B,H,W], float32 [B,H,W]
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from orchestrator.core.masks import voc_palette

FORMAT = "semiovs.student/1"
MODEL_FILE = "model.pt"


def make_package(model: torch.nn.Module, flat_config: dict[str, Any], class_names: tuple[str, ...] | list[str],
                 epoch: int, metrics: dict[str, float]) -> dict[str, Any]:
    """The package of `model` (its bare module, not a DDP wrapper) as trained with `flat_config`."""
    from trainables.augment import IMAGENET_MEAN, IMAGENET_STD

    k = len(class_names)
    return {
        "format": FORMAT,
        "arch": flat_config["model.arch"],
        "num_classes": k,
        "class_names": list(class_names),
        "palette": [list(voc_palette()[3 * i:3 * i + 3]) for i in range(k)],   # class i's RGB colour
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "scale": 1 / 255},
        "config": dict(flat_config),
        "epoch": int(epoch),
        "metrics": {key: float(value) for key, value in metrics.items()},
        "state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()},
    }


def load_package(path: str | Path) -> dict[str, Any]:
    """Read a student file; a file that is not one raises ValueError naming the path and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist")
    if not zipfile.is_zipfile(path):   # torch.save writes a zip archive; a truncated one is not
        raise ValueError(f"{path} is not a complete torch file (truncated, or another format)")
    try:
        package = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:   # noqa: BLE001 - any unpickling error means: not a student file
        raise ValueError(f"{path} cannot be read as a student file ({type(err).__name__}: {err})") from None
    if not isinstance(package, dict) or package.get("format") != FORMAT:
        got = package.get("format") if isinstance(package, dict) else type(package).__name__
        raise ValueError(f"{path} is not a student file (format {got!r}, expected {FORMAT!r})")
    return package


def build_from_package(package: dict[str, Any], device: str | torch.device = "cpu") -> torch.nn.Module:
    """The package's student with its weights, in eval mode on `device`."""
    from orchestrator.core.config import config_from_flat
    from trainables.models import build_student_from_config

    m = config_from_flat(package["config"], "student file").model
    # the weights come from the package: no backbone initialisation file is read
    model = build_student_from_config(package["num_classes"], m, read_backbone=False)
    model.load_state_dict(package["state_dict"])
    return model.to(device).eval()


def to_input(images: np.ndarray, package: dict[str, Any], device: torch.device) -> torch.Tensor:
    """uint8 [B,H,W,3] RGB -> the normalised float batch [B,3,H,W] the student was trained on."""
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4 and images.shape[-1] == 3):
        got = f"{type(images).__name__} {getattr(images, 'dtype', '')} {getattr(images, 'shape', '')}"
        raise ValueError(f"a student predicts on np.uint8 images shaped [B,H,W,3] (RGB); got {got}")
    norm = package["normalization"]
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float() * norm["scale"]
    mean = torch.tensor(norm["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(norm["std"], device=device).view(1, 3, 1, 1)
    return (x - mean) / std


def predict(model: torch.nn.Module, package: dict[str, Any], images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Same-size uint8 images [B,H,W,3] -> (class ids uint8 [B,H,W], max softmax probability float32 [B,H,W])."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        probs = torch.softmax(model(to_input(images, package, device)).float(), dim=1)
        confidence, labels = probs.max(dim=1)
    return labels.to(torch.uint8).cpu().numpy(), confidence.cpu().numpy()
