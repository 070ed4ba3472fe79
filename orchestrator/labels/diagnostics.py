"""Teacher diagnostics for one labeling run: what the teacher said, how sure it was, and (where the corpus has
ground truth) how right it was. Pure numpy + matplotlib (Agg); no Ray, no parquet — the labeling executor
feeds it decoded arrays and it writes files into `<entry>/diagnostics/`:

    class_pixel_share.png     bar chart: share of labeled pixels per class
    confidence_histogram.png  histogram of the teacher's max-softmax confidence over all labeled pixels
    overlays.png              a fixed handful of images: image | pseudo-label overlay | confidence [| ground truth]
    teacher_iou.png           per-class IoU against ground truth (only when the corpus has masks)
    diagnostics.json          the numbers behind the plots
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from orchestrator.core.masks import IGNORE, colorize, voc_palette

OVERLAY_IMAGES = 8      # images in the overlay grid: the first labeled ones by image id (fixed across runs)
GT_MAX_IMAGES = 500     # images scored against ground truth: the first ones with a mask by image id (bounded cost)


@dataclass
class Sample:
    image_id: str
    image: np.ndarray                 # uint8 HxWx3
    label: np.ndarray                 # uint8 HxW class ids
    confidence: np.ndarray            # uint8 HxW, round(255·p)
    ground_truth: np.ndarray | None = None


@dataclass
class GroundTruthScore:
    """Confusion matrix of teacher labels against ground truth, accumulated image by image (255 = ignore)."""
    num_classes: int
    cm: Any = field(init=False)      # trainables.metrics.ConfusionMatrix
    images: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self):
        from trainables.metrics import ConfusionMatrix

        self.cm = ConfusionMatrix(self.num_classes)

    def update(self, image_id: str, label: np.ndarray, gt: np.ndarray) -> None:
        if gt.shape != label.shape:
            self.skipped.append({"image_id": image_id, "reason": f"mask {gt.shape} vs image {label.shape}"})
            return
        bad = gt[(gt != IGNORE) & (gt >= self.num_classes)]
        if bad.size:
            self.skipped.append({"image_id": image_id, "reason": f"mask holds id {int(bad.max())} outside the "
                                                                 f"teacher's {self.num_classes} classes"})
            return
        import torch

        self.cm.update(torch.from_numpy(np.array(label)), torch.from_numpy(np.array(gt)))   # decoded PNGs are read-only
        self.images += 1

    def compute(self, names: Sequence[str]) -> dict[str, Any]:
        iou, miou = self.cm.compute()
        precision = self.object_precision()
        return {"images": self.images, "miou": round(miou, 3) if math.isfinite(miou) else None,
                "object_precision": round(precision, 3) if math.isfinite(precision) else None,
                "per_class_iou": {n: (round(v, 3) if math.isfinite(v) else None) for n, v in zip(names, iou)},
                "pixel_acc": round(self.cm.pixel_accuracy(), 3),
                "skipped": self.skipped[:20], "skipped_count": len(self.skipped)}

    def object_precision(self) -> float:
        """Percent of the pixels labeled as an object (any class but background 0) whose ground truth is that
        class: the teacher's OOD precision. A distractor or an object called the wrong target lowers it."""
        if self.cm.mat is None:
            return math.nan
        k = self.num_classes
        mat = self.cm.mat.double()
        labeled = float(mat[:, 1:k].sum())
        return 100.0 * float(mat.diag()[1:].sum()) / labeled if labeled > 0 else math.nan


def palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 colours of the first classes in the VOC colour map."""
    return np.asarray(voc_palette(), dtype=np.uint8).reshape(256, 3)[:max(1, num_classes)]


def overlay(image: np.ndarray, label: np.ndarray, num_classes: int, alpha: float = 0.55) -> np.ndarray:
    """Image blended with the label colours; background (0) and ignore (255) pixels stay as the image."""
    out = image.astype(np.float32)
    fg = (label > 0) & (label != IGNORE)
    out[fg] = (1 - alpha) * out[fg] + alpha * colorize(label)[fg]
    return out.clip(0, 255).astype(np.uint8)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_class_share(names: Sequence[str], share: Sequence[float], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(names) + 2), 3.2))
    colours = palette(len(names)) / 255.0
    ax.bar(range(len(names)), [100.0 * s for s in share], color=colours, edgecolor="black", linewidth=0.5)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_ylabel("% of labeled pixels")
    ax.set_title("teacher: pixel share per class")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_confidence_histogram(hist: Sequence[int], path: Path) -> None:
    plt = _pyplot()
    counts = np.asarray(hist, np.float64)
    edges = np.linspace(0.0, 1.0, len(counts) + 1)
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.bar(edges[:-1], 100.0 * counts / max(1.0, counts.sum()), width=np.diff(edges), align="edge",
           edgecolor="black", linewidth=0.5)
    ax.set_xlabel("teacher confidence (max softmax)")
    ax.set_ylabel("% of labeled pixels")
    ax.set_title("teacher confidence")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_overlays(samples: Sequence[Sample], num_classes: int, path: Path) -> None:
    plt = _pyplot()
    with_gt = any(s.ground_truth is not None for s in samples)
    cols = 4 if with_gt else 3
    fig, axes = plt.subplots(len(samples), cols, figsize=(1.9 * cols, 1.9 * len(samples)), squeeze=False)
    titles = ["image", "pseudo-label", "confidence", "ground truth"][:cols]
    for r, s in enumerate(samples):
        panels = [s.image, overlay(s.image, s.label, num_classes), s.confidence]
        if with_gt:
            panels.append(overlay(s.image, s.ground_truth, num_classes) if s.ground_truth is not None
                          and s.ground_truth.shape == s.label.shape else np.zeros_like(s.image))
        for c, panel in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(panel, cmap="viridis" if c == 2 else None, vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(s.image_id[-18:], fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_teacher_iou(per_class_iou: dict[str, float | None], miou: float | None, path: Path) -> None:
    plt = _pyplot()
    names = list(per_class_iou)
    values = [per_class_iou[n] if per_class_iou[n] is not None else 0.0 for n in names]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(names) + 2), 3.2))
    ax.bar(range(len(names)), values, color=palette(len(names)) / 255.0, edgecolor="black", linewidth=0.5)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_ylim(0, 100)
    ax.set_ylabel("IoU (%)")
    ax.set_title(f"teacher vs ground truth (mIoU {miou:.1f})" if miou is not None else "teacher vs ground truth")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_diagnostics(out: Path, *, names: Sequence[str], class_pixel_share: Sequence[float],
                      confidence_histogram: Sequence[int], samples: Sequence[Sample],
                      ground_truth: GroundTruthScore | None) -> dict[str, Any]:
    """Write the plots and diagnostics.json into `out`; return the numbers (they also go into the manifest)."""
    out.mkdir(parents=True, exist_ok=True)
    hist = np.asarray(confidence_histogram, np.float64)
    centres = (np.arange(len(hist)) + 0.5) / max(1, len(hist))
    summary: dict[str, Any] = {
        "class_pixel_share": dict(zip(names, [round(float(s), 5) for s in class_pixel_share])),
        "confidence_histogram": [int(v) for v in confidence_histogram],
        "confidence_bins": len(hist),
        "mean_confidence": round(float((hist * centres).sum() / hist.sum()), 4) if hist.sum() else None,
        "overlay_images": [s.image_id for s in samples],
        "ground_truth": ground_truth.compute(names) if ground_truth is not None and ground_truth.images else None,
        "files": [],
    }
    if len(class_pixel_share):
        plot_class_share(names, class_pixel_share, out / "class_pixel_share.png")
        plot_confidence_histogram(confidence_histogram, out / "confidence_histogram.png")
        summary["files"] += ["class_pixel_share.png", "confidence_histogram.png"]
    if samples:
        plot_overlays(samples, len(names), out / "overlays.png")
        summary["files"].append("overlays.png")
    gt = summary["ground_truth"]
    if gt is not None:
        plot_teacher_iou(gt["per_class_iou"], gt["miou"], out / "teacher_iou.png")
        summary["files"].append("teacher_iou.png")
    (out / "diagnostics.json").write_text(json.dumps(summary, indent=1))
    return summary


def _metric_name(text: str) -> str:
    """MLflow metric names allow letters, digits, `_ - . / ` and spaces; anything else becomes `_`."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", text)


def metrics_for_mlflow(summary: dict[str, Any], prefix: str = "teacher.") -> dict[str, float]:
    """Flat `teacher.*` metrics (the MLflow layout in README.md) from a diagnostics summary."""
    out: dict[str, float] = {}
    for name, share in summary.get("class_pixel_share", {}).items():
        out[f"{prefix}pixel_share.{_metric_name(name)}"] = float(share)
    if summary.get("mean_confidence") is not None:
        out[f"{prefix}mean_confidence"] = float(summary["mean_confidence"])
    gt = summary.get("ground_truth")
    if gt:
        if gt.get("miou") is not None:
            out[f"{prefix}miou"] = float(gt["miou"])
        if gt.get("object_precision") is not None:
            out[f"{prefix}object_precision"] = float(gt["object_precision"])
        out[f"{prefix}gt_images"] = float(gt["images"])
        for name, iou in gt["per_class_iou"].items():
            if iou is not None:
                out[f"{prefix}iou.{_metric_name(name)}"] = float(iou)
    return out
