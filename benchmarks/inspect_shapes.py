"""Does the `shapes` benchmark leave room for the paper's effect? Measured, not assumed.

Trains the CPU student (unet_small) supervised on an ID labeled split and reports:
  * its mIoU on ID val and on OOD images (target-vocabulary ground truth),
  * the share of distractor pixels in OOD images that it calls a target class,
then trains the same student with the OOD images and their *ground-truth* target labels added 1:1
(the best any teacher could do) and reports ID val mIoU again; and, for scale, the same student with every
image of the ID train pool labeled (the ceiling that unlabeled data could at most reach at this budget).

    python benchmarks/inspect_shapes.py [--split 16] [--steps 800] [--seeds 0 1 2] [--lr LR] [--cache DIR]

The benchmark is right when the distractor share is high, OOD mIoU is clearly below ID mIoU, and
correct OOD labels raise ID val mIoU (room for SemiOVS to help). The learning rate defaults to the
sweeps' `train.lr` (orchestrator/core/config.py).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from orchestrator.core.config import build_config
from orchestrator.core.images import load_image, load_mask
from orchestrator.data.voc import SegDataset, list_ood_corpus
from orchestrator.data.plan import dataset_root
from orchestrator.core.paths import default_cache_root, resolve_root
from trainables.augment import to_tensor_normalized, weak_pair
from trainables.metrics import ConfusionMatrix
from trainables.models import build_student
from trainables.optim import apply_poly_lr, build_optimizer
from trainables.losses import supervised_ce

NUM_TARGET = 6  # background + 5 target classes of the benchmark


def load_pairs(pairs) -> tuple[np.ndarray, np.ndarray]:
    return np.stack([load_image(i) for i, _ in pairs]), np.stack([load_mask(m) for _, m in pairs])


Pairs = tuple[np.ndarray, np.ndarray]  # (images [N,H,W,3], masks [N,H,W])


def train(labeled: Pairs, extra: Pairs | None, steps: int, seed: int, lr: float, batch: int = 8):
    """Supervised training; with `extra`, each step adds `batch` extra (OOD) images with their labels."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_student("unet_small", NUM_TARGET)
    opt = build_optimizer(model, lr, 1.0)
    images, masks = labeled
    crop = images.shape[1]
    for step in range(steps):
        apply_poly_lr(opt, lr, step, steps)
        pick = rng.integers(len(images), size=batch)
        xs, ys = zip(*(weak_pair(images[i], masks[i], crop, 255, rng) for i in pick))
        if extra is not None:
            extra_images, extra_masks = extra
            pick = rng.integers(len(extra_images), size=batch)
            more = [weak_pair(extra_images[i], extra_masks[i], crop, 255, rng) for i in pick]
            xs, ys = xs + tuple(x for x, _ in more), ys + tuple(y for _, y in more)
        loss = supervised_ce(model(torch.stack(xs)), torch.stack(ys))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@torch.inference_mode()
def predict(model, images) -> np.ndarray:
    out = [model(torch.stack([to_tensor_normalized(im) for im in images[s:s + 64]])).argmax(1).numpy()
           for s in range(0, len(images), 64)]
    return np.concatenate(out)


def miou(pred, gt) -> float:
    m = ConfusionMatrix(NUM_TARGET)
    m.update(torch.from_numpy(pred), torch.from_numpy(gt))
    return m.compute()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", default="16")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lr", type=float, default=build_config().train.lr)
    parser.add_argument("--ood-images", type=int, default=1000, help="OOD images used (train and score)")
    parser.add_argument("--cache")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"# load average at start: {os.getloadavg()}", flush=True)
    root = dataset_root(build_config(), resolve_root(args.cache, default_cache_root()))
    ds = SegDataset.resolve(root, args.split)
    lab_x, lab_y = load_pairs(ds.labeled)
    pool_x, pool_y = load_pairs(ds.labeled + ds.unlabeled)  # the whole ID train pool, labeled
    val_x, val_y = load_pairs(ds.val)
    ood_pairs = list_ood_corpus(root / "ood")[: args.ood_images]
    ood_x, ood_y = load_pairs(ood_pairs)
    ood_src = np.stack([load_mask(m.replace("/SegmentationClass/", "/SegmentationClassSource/"))
                        for _, m in ood_pairs])
    distractor = (ood_src >= NUM_TARGET) & (ood_src != 255)
    rows = []
    for seed in args.seeds:
        started = time.time()
        base = train((lab_x, lab_y), None, args.steps, seed, args.lr)
        ood_pred = predict(base, ood_x)
        with_gt = train((lab_x, lab_y), (ood_x, ood_y), args.steps, seed, args.lr)
        ceiling = train((pool_x, pool_y), None, args.steps, seed, args.lr)
        rows.append({
            "seed": seed,
            "id_val_miou": miou(predict(base, val_x), val_y),
            "ood_miou": miou(ood_pred, ood_y),
            "distractor_pixels_called_target": float((ood_pred[distractor] > 0).mean()),
            "id_val_miou_with_ood_gt_labels": miou(predict(with_gt, val_x), val_y),
            "id_val_miou_all_pool_labeled": miou(predict(ceiling, val_x), val_y),
            "seconds": round(time.time() - started, 1),
        })
        rows[-1]["gain_from_ood_gt_labels"] = rows[-1]["id_val_miou_with_ood_gt_labels"] - rows[-1]["id_val_miou"]
        print(json.dumps(rows[-1]), flush=True)
    keys = [k for k in rows[0] if k not in ("seed", "seconds")]
    mean = {k: round(float(np.mean([r[k] for r in rows])), 3) for k in keys}
    std = {k: round(float(np.std([r[k] for r in rows], ddof=1)), 3) for k in keys} if len(rows) > 1 else {}
    print(json.dumps({"split": args.split, "steps": args.steps, "lr": args.lr, "seeds": args.seeds, "mean": mean,
                      "std": std}))
    print(f"# load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
