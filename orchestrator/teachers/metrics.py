"""Teacher quality against ground truth: per-class IoU and mIoU in percent (255 = ignore), scored with the
same confusion matrix as the student (trainables.metrics)."""
from __future__ import annotations

from typing import Protocol

import numpy as np

from orchestrator.core.masks import IGNORE


class _Predicts(Protocol):
    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def evaluate_teacher(teacher: _Predicts, images: np.ndarray, masks: np.ndarray, num_classes: int,
                     batch_size: int = 32) -> dict:
    """Run `teacher.predict` over images (uint8 [N,H,W,3]) and score against masks (uint8 [N,H,W]).

    Returns {"miou", "per_class_iou" (list, NaN = class absent and never predicted), "pixel_acc",
    "mean_conf", "num_pixels"}; IoU is accumulated over the whole set (UniMatch/SemiOVS convention)."""
    if len(images) != len(masks):
        raise ValueError(f"evaluate_teacher: {len(images)} images but {len(masks)} masks")
    import torch

    from trainables.metrics import ConfusionMatrix

    matrix = ConfusionMatrix(num_classes)
    conf_sum = 0.0
    for start in range(0, len(images), batch_size):
        labels, conf = teacher.predict(images[start:start + batch_size])
        gt = masks[start:start + batch_size]
        matrix.update(torch.from_numpy(np.ascontiguousarray(labels)), torch.from_numpy(np.ascontiguousarray(gt)))
        conf_sum += float(conf[gt != IGNORE].sum())
    iou, miou = matrix.compute()
    total = matrix.pixels()
    return {"miou": miou, "per_class_iou": iou, "pixel_acc": matrix.pixel_accuracy(),
            "mean_conf": conf_sum / max(1, total), "num_pixels": total}
