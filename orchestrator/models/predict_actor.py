"""What runs in each inference actor of `run.py predict` (orchestrator.models.predict): the student, loaded
once from the student file's bytes (tensors and plain values only: `torch.load(weights_only=True)`), run on
same-size groups of decoded images, and the PNGs of each image written straight into the output folder.
The actor returns only small rows (name, error, pixels per class) to the driver.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.labels.pipeline import decode_batch
from orchestrator.models.predict_inputs import CONFIDENCE, MASKS, OVERLAYS

# Pixels per model call: a same-size group larger than this is run in slices, so --batch-size 32 of large
# photos does not hold 32 full-size logit maps at once (32 images of 512×512).
PIXELS_PER_CALL = 32 * 512 * 512


def package_from_bytes(data: bytes) -> dict[str, Any]:
    """A student file's bytes -> its package. Tensors and plain values only (weights_only): nothing else is
    unpickled."""
    import torch

    from trainables.student_file import FORMAT

    package = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(package, dict) or package.get("format") != FORMAT:
        raise ValueError(f"not a student file (expected format {FORMAT!r})")
    return package


class PredictActor:
    """Holds one student (loaded once per actor; on the GPU when Ray gave it one) and writes the PNGs of the
    batches it is handed."""

    def __init__(self, model, folder: str, overlays: bool, confidence: bool, threads: int = 1):
        import ray
        import torch

        from trainables.student_file import build_from_package

        torch.set_num_threads(max(1, threads))
        data = ray.get(model) if isinstance(model, ray.ObjectRef) else model
        self.package = package_from_bytes(data)
        # Ray shows an actor only the GPUs it was given (CUDA_VISIBLE_DEVICES): none with --gpus-per-actor 0
        self.model = build_from_package(self.package, "cuda" if torch.cuda.is_available() else "cpu")
        self.num_classes = int(self.package["num_classes"])
        self.folder, self.overlays, self.confidence = Path(folder), overlays, confidence

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        from trainables.student_file import predict

        if "image" not in batch:   # no CPUs left for decode tasks: decode here (labels.pipeline.decode_cpus)
            batch = decode_batch(batch)
        k = self.num_classes
        pixels = np.zeros((len(batch["image_id"]), k), np.int64)
        for rows in _same_size_groups(batch["image"], batch["error"]):   # the student takes same-size batches
            stack = np.stack([np.asarray(batch["image"][i]) for i in rows])
            labels, confidence = predict(self.model, self.package, stack)
            for j, i in enumerate(rows):
                self._write(str(batch["image_id"][i]), stack[j], labels[j], confidence[j])
                pixels[i] = np.bincount(labels[j].ravel(), minlength=k)[:k]
        return {"image_id": batch["image_id"], "error": batch["error"], "class_pixels": list(pixels)}

    def _write(self, name: str, image: np.ndarray, label: np.ndarray, confidence: np.ndarray) -> None:
        from PIL import Image

        from orchestrator.core.masks import colorize
        from orchestrator.data.voc import mask_to_image

        _save(mask_to_image(label), self.folder / MASKS / name)
        if self.overlays:
            _save(Image.fromarray(np.concatenate([image, colorize(label)], axis=1)), self.folder / OVERLAYS / name)
        if self.confidence:
            grey = np.clip(np.rint(confidence * 255), 0, 255).astype(np.uint8)
            _save(Image.fromarray(grey), self.folder / CONFIDENCE / name)


def _same_size_groups(images, errors) -> list[list[int]]:
    """Row indices of the readable images, grouped by size, each group cut to at most PIXELS_PER_CALL pixels."""
    by_shape: dict[tuple, list[int]] = {}
    for i, (image, error) in enumerate(zip(images, errors)):
        if not error:
            by_shape.setdefault(tuple(np.asarray(image).shape), []).append(i)
    groups = []
    for shape, rows in by_shape.items():
        per_call = max(1, PIXELS_PER_CALL // max(1, shape[0] * shape[1]))
        groups += [rows[s:s + per_call] for s in range(0, len(rows), per_call)]
    return groups


def _save(image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)   # names keep the input's subfolders
    image.save(path, format="PNG")
