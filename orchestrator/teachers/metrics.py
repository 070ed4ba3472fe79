"""Teacher quality against ground truth: per-class IoU and mIoU in percent (pure numpy; 255 = ignore)."""
from __future__ import annotations

from typing import Protocol

import numpy as np


class _Predicts(Protocol):
    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) int64 counts, rows = ground truth, cols = prediction; gt 255 is skipped.
    Predictions outside [0, num_classes) count as wrong (a bincount overflow row would hide them)."""
    valid = gt != 255
    g = gt[valid].astype(np.int64)
    p = pred[valid].astype(np.int64)
    if g.size and g.max() >= num_classes:
        raise ValueError(f"ground truth holds id {int(g.max())} but num_classes={num_classes} (255 = ignore)")
    p = np.where(p < num_classes, p, num_classes)  # extra column for out-of-range predictions
    cm = np.bincount(g * (num_classes + 1) + p, minlength=num_classes * (num_classes + 1))
    return cm.reshape(num_classes, num_classes + 1)[:, :num_classes]


def iou_from_confusion(cm: np.ndarray, gt_pixels: np.ndarray | None = None) -> np.ndarray:
    """IoU per class in percent; NaN where the class is neither in the ground truth nor predicted."""
    inter = np.diag(cm).astype(np.float64)
    gt_total = cm.sum(1) if gt_pixels is None else gt_pixels
    union = gt_total + cm.sum(0) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, 100.0 * inter / union, np.nan)


def evaluate_teacher(teacher: _Predicts, images: np.ndarray, masks: np.ndarray, num_classes: int,
                     batch_size: int = 32) -> dict:
    """Run `teacher.predict` over images (uint8 [N,H,W,3]) and score against masks (uint8 [N,H,W]).

    Returns {"miou", "per_class_iou" (list, NaN = class absent and never predicted), "pixel_acc",
    "mean_conf", "num_pixels"}; IoU is accumulated over the whole set (UniMatch/SemiOVS convention)."""
    if len(images) != len(masks):
        raise ValueError(f"evaluate_teacher: {len(images)} images but {len(masks)} masks")
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    gt_pixels = np.zeros(num_classes, dtype=np.int64)  # includes pixels predicted out of range
    conf_sum = 0.0
    for start in range(0, len(images), batch_size):
        labels, conf = teacher.predict(images[start:start + batch_size])
        gt = masks[start:start + batch_size]
        cm += confusion_matrix(labels, gt, num_classes)
        gt_pixels += np.bincount(gt[gt != 255].astype(np.int64), minlength=num_classes)[:num_classes]
        conf_sum += float(conf[gt != 255].sum())
    iou = iou_from_confusion(cm, gt_pixels)
    total = int(gt_pixels.sum())
    return {
        "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "per_class_iou": [float(v) for v in iou],
        "pixel_acc": 100.0 * float(np.trace(cm)) / max(1, total),
        "mean_conf": conf_sum / max(1, total),
        "num_pixels": total,
    }
