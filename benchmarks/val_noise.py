"""How much of a run's val mIoU is the val set's sampling noise? Bootstrap over val images of trained models.

Trains the CPU student (plain PyTorch, the project's own step and evaluation, as benchmarks/method_effect.py does)
for each `--methods` at one split and seed, on a `shapes` benchmark generated with `--num-val` val images (the
generator draws each image from its own seed, so the first 300 are exactly the default val set). Then, per
model, it scores every val image on its own (a confusion matrix per image) and resamples the images with
replacement (`--draws` times) for val sets of each `--sizes`: the std of the resampled mIoU is the val set's
sampling noise. With two methods it also gives the noise of their *paired* difference (same resampled images
for both), which is what a paired gain sees. It prints the evaluation time per val set size (the cost).

    python benchmarks/val_noise.py                                   # supervised + unimatch, 16 labels, seed 0
    python benchmarks/val_noise.py --sizes 300 1000 2000 --num-val 2000 --split 8

Measured here with the defaults (591 s under a load average of ~30): std of mIoU 1.97 / 1.75 (supervised /
UniMatch) at 300 val images, 1.05 / 0.88 at 1,000, 0.73 / 0.63 at 2,000; paired difference 1.71, 0.76, 0.54
(docs/results.md). Its `eval_seconds` are wall times and were distorted by that load; the README's cost
column is CPU time from one process.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def train_model(config: dict[str, Any], cache_root: Path):
    """A trained student and its plan, mirroring the sweep's loop in local mode (no Ray, no checkpoints)."""
    import torch

    from orchestrator.core.config import build_config
    from orchestrator.data.plan import build_plan
    from trainables.distributed import WorkerContext
    from trainables.models import build_student
    from trainables.optim import build_optimizer
    from trainables.streams import BrokenSamples, StreamFiles, StreamSampler
    from trainables.train_loop import EpochRunner, ood_counts, steps_per_epoch, train_one_epoch

    cfg = build_config(config)
    plan = build_plan(cfg, cache_root)
    ctx = WorkerContext("local", 0, 1, torch.device("cpu"))
    torch.manual_seed(cfg.seed * 1000)
    model = build_student(cfg.model.arch, len(plan.vocabulary.names), width=cfg.model.width,
                          fp_dropout=cfg.model.fp_dropout)
    optimizer = build_optimizer(model, cfg.train.lr, cfg.train.lr_multi, momentum=cfg.train.momentum,
                                weight_decay=cfg.train.weight_decay)
    sampler = StreamSampler(StreamFiles(plan.labeled, plan.unlabeled), ood_labels=None, crop=cfg.data.crop_size,
                            seed=cfg.seed * 1000, broken=BrokenSamples(), max_broken_share=cfg.data.max_broken_share)
    iters = steps_per_epoch(cfg, sampler)
    total = iters * cfg.train.epochs
    runner = EpochRunner(model, optimizer, torch.amp.GradScaler("cuda", enabled=False), sampler, cfg, ctx,
                         ood_counts(cfg, total, cfg.seed), iters, total, amp=False)
    for epoch in range(cfg.train.epochs):
        train_one_epoch(runner, epoch * iters)
    return model.eval(), plan


def per_image_confusion(model, val: list, num_classes: int) -> np.ndarray:
    """(images, k, k) confusion matrices, one per val image (ground truth rows, prediction columns)."""
    import torch

    from orchestrator.core.images import load_image, load_mask
    from trainables.augment import to_tensor_normalized

    out = np.zeros((len(val), num_classes, num_classes), np.int64)
    with torch.inference_mode():
        for start in range(0, len(val), 64):
            chunk = val[start:start + 64]
            x = torch.stack([to_tensor_normalized(load_image(p)) for p, _ in chunk])
            pred = model(x).argmax(1).numpy()
            for j, (_, mask_path) in enumerate(chunk):
                gt = load_mask(mask_path).astype(np.int64)
                keep = gt < num_classes
                out[start + j] = np.bincount(num_classes * gt[keep] + pred[j][keep],
                                             minlength=num_classes ** 2).reshape(num_classes, num_classes)
    return out


def miou_of(cm: np.ndarray) -> np.ndarray:
    """mIoU (%) of summed confusion matrices (..., k, k); classes absent from truth and prediction left out."""
    inter = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
    union = cm.sum(-1) + cm.sum(-2) - inter
    iou = np.where(union > 0, 100.0 * inter / np.maximum(union, 1), np.nan)
    return np.nanmean(iou, axis=-1)


def bootstrap(cms: list[np.ndarray], size: int, draws: int, seed: int) -> list[np.ndarray]:
    """mIoU of each model on `draws` val sets of `size` images drawn with replacement from the first `size`
    (the same draws for every model, so differences between models are paired)."""
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(size, np.full(size, 1.0 / size), size=draws)          # (draws, size)
    return [miou_of((counts @ cm[:size].reshape(size, -1)).reshape(draws, *cm.shape[1:])) for cm in cms]


def eval_seconds(model, val: list, num_classes: int) -> float:
    """Wall time of the sweep's own evaluation on `val` (what each epoch pays)."""
    import torch

    from trainables.distributed import WorkerContext
    from trainables.streams import load_image_cached, load_mask_cached
    from trainables.evaluation import evaluate

    load_image_cached.cache_clear()
    load_mask_cached.cache_clear()
    ctx = WorkerContext("local", 0, 1, torch.device("cpu"))
    evaluate(model, val, num_classes, ctx)                      # first pass reads the files (cached after)
    started = time.time()
    evaluate(model, val, num_classes, ctx)
    return time.time() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=["supervised", "unimatch"])
    parser.add_argument("--split", default="16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-val", type=int, default=2000, help="val images generated (the largest size)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[300, 1000, 2000])
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--cache", help="cache folder (default: the project's)")
    args = parser.parse_args(argv)

    import torch

    from orchestrator.core.paths import default_cache_root, resolve_root

    torch.set_num_threads(1)
    cache_root = resolve_root(args.cache, default_cache_root())
    started = time.time()
    cms, models = [], []
    for method in args.methods:
        config = {"train.method": method, "data.split": args.split, "seed": args.seed, "data.num_val": args.num_val}
        t0 = time.time()
        model, plan = train_model(config, cache_root)
        k = len(plan.vocabulary.names)
        cms.append(per_image_confusion(model, list(plan.val), k))
        models.append(model)
        print(json.dumps({"method": method, "train_seconds": round(time.time() - t0, 1),
                          **{f"miou_{n}": round(float(miou_of(cms[-1][:n].sum(0))), 2) for n in args.sizes}}),
              flush=True)
    for size in args.sizes:
        boot = bootstrap(cms, size, args.draws, seed=size)
        row: dict[str, Any] = {"val_images": size, "eval_seconds": round(eval_seconds(models[0], list(plan.val)[:size],
                                                                                       k), 3)}
        for method, values in zip(args.methods, boot):
            row[f"{method}_std"] = round(float(np.std(values, ddof=1)), 3)
        if len(boot) > 1:
            row[f"paired_diff_std ({args.methods[1]} - {args.methods[0]})"] = round(
                float(np.std(boot[1] - boot[0], ddof=1)), 3)
        print(json.dumps(row), flush=True)
    print(f"# wall time {time.time() - started:.0f} s; {math.nan if not cms else len(cms[0])} val images scored")


if __name__ == "__main__":
    main()
