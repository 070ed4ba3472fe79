"""Per-epoch evaluation pictures of a trial: the confusion matrix and the prediction overlays.

Rank 0 of a training worker group draws them after each evaluation and writes them as files
(`write_epoch_pictures`) into the run's files folder; the driver logs them to MLflow from there, so an epoch's
report to Tune carries numbers only. Rendering is pure (arrays in, PNG bytes out; matplotlib's Agg canvas,
no pyplot state).
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from orchestrator.core.masks import colorize

MAX_TILE_SIDE = 160
GAP = 2  # pixels between tiles


# ---- confusion matrix ---------------------------------------------------------------------------

def row_normalised(matrix: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
    """Percent of each ground-truth row (rows = ground truth, cols = prediction); NaN for an absent class."""
    counts = np.asarray(matrix, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, 100.0 * counts / totals, np.nan)


def _count_text(n: float) -> str:
    return f"{n:.0f}" if n < 1000 else f"{n / 1000:.1f}k" if n < 1e6 else f"{n / 1e6:.1f}M"


def confusion_matrix_png(matrix: Sequence[Sequence[int]] | np.ndarray, class_names: Sequence[str],
                         title: str = "") -> bytes:
    """Row-normalised heat map with class names on both axes; each cell says its percent (and its pixel
    count while the matrix is small enough for two lines per cell)."""
    from matplotlib.figure import Figure

    counts = np.asarray(matrix, dtype=np.float64)
    k = counts.shape[0]
    if counts.shape != (k, k) or len(class_names) != k:
        raise ValueError(f"confusion matrix {counts.shape} does not match {len(class_names)} class names")
    pct = row_normalised(counts)
    names = [n if np.isfinite(pct[i]).any() else f"{n} (absent)" for i, n in enumerate(class_names)]
    font = 8.0 if k <= 8 else 6.5
    # room for the names: rows (with "(absent)") on the left, columns at 45° below
    left_in = 0.6 + 0.075 * max(map(len, names)) * font / 8
    bottom_in = 0.5 + 0.05 * max(map(len, class_names)) * font / 8
    grid_in = max(2.4, 0.42 * k)
    fig = Figure(figsize=(left_in + grid_in + 0.3, bottom_in + grid_in + 0.4), dpi=100)
    w, h = fig.get_size_inches()
    ax = fig.add_axes((left_in / w, bottom_in / h, grid_in / w, grid_in / h))  # fixed layout: no tight_layout
    ax.imshow(np.nan_to_num(pct, nan=0.0), cmap="Blues", vmin=0, vmax=100)
    with_counts = k <= 10
    for t, p in zip(*np.nonzero(counts)):
        text = f"{pct[t, p]:.0f}%" + (f"\n{_count_text(counts[t, p])}" if with_counts else "")
        ax.text(p, t, text, ha="center", va="center", fontsize=font,
                color="white" if pct[t, p] > 55 else "black")
    ax.set_xticks(range(k), list(class_names), rotation=45, ha="right", rotation_mode="anchor", fontsize=font)
    ax.set_yticks(range(k), names, fontsize=font)
    ax.set_xlabel("prediction", fontsize=9)
    ax.set_ylabel("ground truth (row = 100%)", fontsize=9)
    ax.set_title(title or "confusion matrix", fontsize=10)
    return _figure_png(fig)


def _figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# ---- prediction overlays ------------------------------------------------------------------------

def tile_size(h: int, w: int, max_side: int = MAX_TILE_SIDE) -> tuple[int, int]:
    """(height, width) of a tile: aspect kept, longest side at most max_side (small images stay as they are)."""
    scale = min(1.0, max_side / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def _tile(array: np.ndarray, size: tuple[int, int], is_label: bool) -> Image.Image:
    image = Image.fromarray(colorize(array) if is_label else array)
    h, w = size
    return image if image.size == (w, h) else image.resize((w, h), Image.NEAREST if is_label else Image.BILINEAR)


def overlay_grid_png(images: Sequence[np.ndarray], truths: Sequence[np.ndarray], preds: Sequence[np.ndarray],
                     max_side: int = MAX_TILE_SIDE) -> bytes:
    """One row per image: image | ground truth | prediction, labels in the VOC palette, tiles ≤ max_side."""
    if not (len(images) == len(truths) == len(preds)) or not images:
        raise ValueError(f"need as many images, ground truths and predictions (got {len(images)}, "
                         f"{len(truths)}, {len(preds)}), at least one")
    sizes = [tile_size(*img.shape[:2], max_side) for img in images]
    col_w = max(w for _, w in sizes)
    font = ImageFont.load_default()
    header = 12
    height = header + sum(h for h, _ in sizes) + GAP * (len(sizes) - 1)
    grid = Image.new("RGB", (3 * col_w + 2 * GAP, height), "white")
    draw = ImageDraw.Draw(grid)
    for c, name in enumerate(("image", "ground truth", "prediction")):
        draw.text((c * (col_w + GAP) + 2, 0), name, fill="black", font=font)
    top = header
    for img, gt, pred, size in zip(images, truths, preds, sizes):
        for c, (array, is_label) in enumerate(((img, False), (gt, True), (pred, True))):
            grid.paste(_tile(array, size, is_label), (c * (col_w + GAP), top))
        top += size[0] + GAP
    return _image_png(grid)


def _image_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


# ---- files ---------------------------------------------------------------------------------------

def write_epoch_pictures(folder: str | Path, epoch: int, confusion: Sequence[Sequence[int]],
                         class_names: Sequence[str], samples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]
                         ) -> list[Path]:
    """confusion_matrix_epoch_NNN.png (and overlays_epoch_NNN.png when `samples` holds (image, truth,
    prediction) triples) into `folder`, each written whole before it gets its name."""
    files = {f"confusion_matrix_epoch_{epoch:03d}.png":
             confusion_matrix_png(confusion, class_names, f"val confusion matrix, epoch {epoch}")}
    if samples:
        files[f"overlays_epoch_{epoch:03d}.png"] = overlay_grid_png(*zip(*samples))
    return [write_atomically(Path(folder) / name, data) for name, data in files.items()]


def write_atomically(path: Path, data: bytes) -> Path:
    """A reader never sees a half-written file: write a hidden temporary, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path
