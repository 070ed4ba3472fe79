"""Scoring a student on a labeled split: whole images at native size, one confusion matrix over the split.

The loop scores every epoch on val with it, the best model once on test, and `run.py evaluate` a logged
model on any split: one function, so a model's score is the same number wherever it is computed.
"""
from __future__ import annotations

from collections import defaultdict
from typing import NamedTuple

import numpy as np
import torch

from trainables.distributed import WorkerContext
from trainables.metrics import ConfusionMatrix
from trainables.streams import BrokenSamples, load_image_cached, load_mask_cached

EVAL_BATCH = 32


class Evaluation(NamedTuple):
    ious: list[float]
    miou: float
    confusion: list[list[int]]                               # summed over ranks
    samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # (image, ground truth, prediction), first `keep`


def evaluate(model: torch.nn.Module, pairs: list, num_classes: int, ctx: WorkerContext, keep: int = 0,
             broken: BrokenSamples | None = None) -> Evaluation:
    """Whole images of `pairs` ((image, mask) paths) at native size (the paper's 'original' mode); same-size
    images are batched. Under DDP each rank passes its shard and the ranks' matrices are summed.

    The predictions of the first `keep` images (fixed across epochs) are kept for the overlays.
    """
    from orchestrator.core.images import SampleError, check_classes
    from trainables.augment import to_tensor_normalized

    was_training = model.training
    model.eval()
    matrix = ConfusionMatrix(num_classes)
    by_size: dict[tuple, list] = defaultdict(list)
    for index, (image_path, mask_path) in enumerate(pairs):
        try:
            image, mask = load_image_cached(image_path), check_classes(load_mask_cached(mask_path), num_classes,
                                                                       mask_path)
        except SampleError as err:  # left out, and counted and listed with the run's broken samples
            if broken is not None:
                broken.add(err.path, err.reason)
            continue
        by_size[image.shape].append((index, image, mask))
    kept = {}
    with torch.inference_mode():
        for group in by_size.values():
            for start in range(0, len(group), EVAL_BATCH):
                chunk = group[start:start + EVAL_BATCH]
                x = torch.stack([to_tensor_normalized(img) for _, img, _ in chunk]).to(ctx.device)
                y = torch.from_numpy(np.stack([m for _, _, m in chunk])).to(ctx.device)
                pred = model(x).argmax(1)
                matrix.update(pred, y)
                kept.update({i: (img, m, pred[j].to(torch.uint8).cpu().numpy())
                             for j, (i, img, m) in enumerate(chunk) if i < keep})
    if ctx.distributed:
        matrix.reduce_from_all_processes()
    model.train(was_training)
    return Evaluation(*matrix.compute(), matrix.as_lists(), [kept[i] for i in sorted(kept)])
