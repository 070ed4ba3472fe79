"""The per-worker training loop: SemiOVS / UniMatch / supervised, with per-epoch evaluation and checkpoints.

Read top to bottom: `train_loop_per_worker` (Ray Train's entry point) → `run_training` → `train_one_epoch`
and `evaluate`. One checkpoint dict per epoch (model, optimizer, epoch, step, best, resolved config, and with
`train.prevmatch` the past models), saved by rank 0; a restarted worker group or a resumed trial continues from it.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from collections import defaultdict
from typing import Any, NamedTuple

import numpy as np
import torch

from orchestrator.config import ExperimentConfig, config_from_flat
from orchestrator.label_cache import LabelStore, read_label_table
from trainables.distributed import WorkerContext, make_context
from trainables.metrics import OOD_GT_COUNTS, ConfusionMatrix, label_agreement
from trainables.models import build_student
from trainables.optim import apply_poly_lr, build_optimizer, unwrap
from trainables.prevmatch import (PrevGuidance, make_generator, restore_snapshots, snapshot_states,
                                  triangle_weight, update_snapshots)
from trainables.recipe import train_step
from trainables.streams import BrokenSamples, OODLabels, StreamSampler, load_image_cached, load_mask_cached

EVAL_BATCH = 32


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point. loop_config: config (flat), data (lists of paths), mode, optional on_report."""
    cfg = config_from_flat(loop_config["config"], "trial config")
    ctx = make_context(loop_config["mode"], cfg.resources.gpus_per_worker, loop_config.get("on_report"))
    run_training(cfg, loop_config["config"], loop_config["data"], ctx)


def unlabeled_sizes(cfg: ExperimentConfig) -> tuple[int, int]:
    """(ID unlabeled per step, total unlabeled per step before the OOD share is taken)."""
    b = cfg.train.batch_size
    if cfg.train.method == "supervised":
        return 0, 0
    if cfg.uses_ood:
        return b, 2 * b       # the paper: B ID + B OOD at ratio 0.5; ood.ratio moves the split of the 2B
    return b, b


def ood_counts(cfg: ExperimentConfig, steps: int, seed: int) -> np.ndarray:
    """OOD images in each step's unlabeled batch (pure; realises ood.ratio over the run)."""
    _, total = unlabeled_sizes(cfg)
    if not cfg.uses_ood or total == 0:
        return np.zeros(steps, dtype=int)
    from orchestrator.data.mixing import plan_ood_counts

    return np.asarray(plan_ood_counts(total, cfg.ood.ratio, steps, seed), dtype=int)


def run_training(cfg: ExperimentConfig, flat: dict[str, Any], data: dict[str, Any], ctx: WorkerContext) -> None:
    torch.set_num_threads(max(1, int(cfg.resources.cpus_per_worker)))
    seed = cfg.seed * 1000 + ctx.rank
    torch.manual_seed(seed)
    class_names = data["class_names"]
    model = build_student(cfg.model.arch, len(class_names), width=cfg.model.width,
                          fp_dropout=cfg.model.fp_dropout, pretrained_backbone=cfg.model.pretrained_backbone)
    model = ctx.prepare_model(model, cfg.train.sync_bn)
    optimizer = build_optimizer(model, cfg.train.lr, cfg.train.lr_multi, momentum=cfg.train.momentum,
                                weight_decay=cfg.train.weight_decay)
    amp = cfg.train.amp and ctx.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    epoch, step, best = 0, 0, 0.0
    snapshots, new_best = [], False   # PrevMatch: frozen past best models; did the last epoch set a new best?
    state = ctx.latest_checkpoint()
    if state is not None:
        check_resumable(state["config"], flat)
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        epoch, step, best = state["epoch"], state["step"], state["best_val_miou"]
        snapshots = restore_snapshots(state.get("prev_models", []), unwrap(model))
        new_best = state.get("prev_new_best", False)

    broken = BrokenSamples()
    sampler = make_sampler(cfg, data, ctx, seed + 7919 * epoch, broken)
    iters = steps_per_epoch(cfg, sampler)
    total = iters * cfg.train.epochs
    counts = ood_counts(cfg, total, cfg.seed)
    prev_rng = make_generator(seed + 7919 * epoch)   # PrevMatch draws; reseeded on resume like the sampler

    resumed_from = epoch
    while epoch < cfg.train.epochs:
        started = time.time()
        guide = None
        if cfg.train.prevmatch:  # the model that ended a best epoch joins the past models (method.md §3b)
            snapshots = update_snapshots(snapshots, unwrap(model), new_best, cfg.train.prev_max_models)
            guide = PrevGuidance(snapshots, prev_rng, triangle_weight(epoch, cfg.train.epochs),
                                 cfg.train.prev_max_k, cfg.train.prev_thresh)
        logs = train_one_epoch(model, optimizer, scaler, sampler, cfg, ctx, counts, step, iters, total, amp,
                               prev=guide)
        logs["train_seconds"] = time.time() - started
        if "launched_at" in data and epoch == resumed_from:   # trainer built → first training step
            logs["startup_seconds"] = started - data["launched_at"]
        step += iters
        epoch += 1
        ev = evaluate(unwrap(model), data["val"][ctx.rank::ctx.world_size], len(class_names), ctx,
                      keep=cfg.train.overlay_images if ctx.is_main else 0)
        ious, miou = ev.ious, ev.miou
        pictures = eval_pictures(ev, class_names)
        new_best = math.isfinite(miou) and miou > best
        best = max(best, miou if math.isfinite(miou) else 0.0)
        metrics = {"epoch": epoch, "val_miou": miou, "best_val_miou": best, **logs,
                   "broken_samples": len(broken), "epoch_seconds": time.time() - started, "step": step,
                   "resumed_from_epoch": resumed_from}
        metrics.update({f"val_iou.{name}": v for name, v in zip(class_names, ious) if math.isfinite(v)})
        metrics.update(pictures)
        checkpoint = {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                      "step": step, "best_val_miou": best, "config": flat} if ctx.is_main else None
        if checkpoint is not None and cfg.train.prevmatch:
            # Costly: every snapshot is a full set of weights, so a checkpoint grows to (1 + prev_max_models)
            # models, e.g. ~9 × 240 MB for DeepLabV3+ R101 (and Tune keeps two checkpoints per trial).
            checkpoint.update(prev_models=snapshot_states(snapshots), prev_new_best=new_best)
        if ctx.is_main and broken.paths:
            metrics["broken_sample_list"] = sorted(broken.paths)[:100]
        ctx.report(metrics, checkpoint)


def make_sampler(cfg: ExperimentConfig, data: dict[str, Any], ctx: WorkerContext, seed: int,
                 broken: BrokenSamples) -> StreamSampler:
    """This worker's streams: all labeled images, its shard of the ID unlabeled and OOD images."""
    ood_labels = None
    if data.get("label_store"):
        table = read_label_table(LabelStore(Path(data["label_store"])))
        ood_labels = OODLabels(table, cfg.ood.teacher_thresh)
    return StreamSampler(
        labeled=data["labeled"], unlabeled=data["unlabeled"][ctx.rank::ctx.world_size],
        ood=data["ood"][ctx.rank::ctx.world_size], ood_labels=ood_labels, crop=cfg.data.crop_size,
        seed=seed, broken=broken, max_broken_share=cfg.data.max_broken_share,
        ood_masks=data.get("ood_masks", [])[ctx.rank::ctx.world_size])


def steps_per_epoch(cfg: ExperimentConfig, sampler: StreamSampler) -> int:
    """train.iters_per_epoch, or one pass over this worker's ID unlabeled shard (the paper's epoch)."""
    n_id, _ = unlabeled_sizes(cfg)
    return cfg.train.iters_per_epoch or max(1, len(sampler.unlabeled) // max(1, n_id or cfg.train.batch_size))


# Keys a resumed run may change: how long it runs and with what resources, not what it computes.
RESUMABLE_CHANGES = ("train.epochs", "train.max_failures", "train.num_workers", "train.overlay_images",
                     "resources.")


def check_resumable(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """A checkpoint only continues the run it came from (same config but for RESUMABLE_CHANGES)."""
    changed = sorted(k for k in set(saved) | set(current)
                     if saved.get(k) != current.get(k) and not k.startswith(RESUMABLE_CHANGES))
    if changed:
        raise ValueError(f"the checkpoint being resumed was made with other settings ({', '.join(changed)}); "
                         f"start a new run (another --name) instead of resuming this one")


def train_one_epoch(model, optimizer, scaler, sampler: StreamSampler, cfg: ExperimentConfig, ctx: WorkerContext,
                    counts: np.ndarray, first_step: int, iters: int, total: int, amp: bool,
                    prev: PrevGuidance | None = None) -> dict[str, float]:
    model.train()
    sums: dict[str, float] = defaultdict(float)
    n_id, n_total = unlabeled_sizes(cfg)
    lr = cfg.train.lr
    for i in range(iters):
        step = first_step + i
        lr = apply_poly_lr(optimizer, cfg.train.lr, step, total)
        batch = sampler.labeled_batch(cfg.train.batch_size)
        if cfg.train.method != "supervised":
            n_ood = int(counts[step]) if cfg.uses_ood else 0
            n_u = n_total - n_ood if cfg.uses_ood else n_id
            batch.update(sampler.unlabeled_batch(n_u, "u"))
            batch.update(sampler.unlabeled_batch(n_u, "m"))
            if cfg.uses_ood:
                batch.update(sampler.ood_batch(n_ood))
        batch = {k: v.to(ctx.device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(ctx.device.type, enabled=amp):
            loss, logs = train_step(model, cfg.train.method, batch, tau=cfg.train.conf_thresh,
                                    lambda_ood=cfg.train.lambda_ood, ood_label_source=cfg.ood.label_source,
                                    prev=prev)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        for key, value in logs.items():
            sums[key] += value
    # OOD label agreement: pixel counts pooled over the epoch's steps (steps without OOD images add nothing)
    pooled = [sums.pop(key, 0.0) for key in OOD_GT_COUNTS]
    out = {key: value / iters for key, value in sums.items()}
    out.update(label_agreement(*pooled))
    out["lr"] = lr
    if prev is not None:
        out.update(lambda_prev=prev.weight, prev_models=len(prev.models))
    return out


class Evaluation(NamedTuple):
    ious: list[float]
    miou: float
    confusion: list[list[int]]                               # summed over ranks
    samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # (image, ground truth, prediction), first `keep`


def evaluate(model: torch.nn.Module, val: list, num_classes: int, ctx: WorkerContext, keep: int = 0) -> Evaluation:
    """Whole val images at native size (the paper's 'original' mode); same-size images are batched.

    The predictions of the first `keep` images of `val` (fixed across epochs) are kept for the overlays.
    """
    from trainables.augment import to_tensor_normalized

    model.eval()
    matrix = ConfusionMatrix(num_classes)
    from orchestrator.data.voc import SampleError

    by_size: dict[tuple, list] = defaultdict(list)
    for index, (image_path, mask_path) in enumerate(val):
        try:
            image, mask = load_image_cached(image_path), load_mask_cached(mask_path)
        except SampleError:  # unreadable val files are left out (`run.py data check` lists them)
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
    model.train()
    return Evaluation(*matrix.compute(), matrix.as_lists(), [kept[i] for i in sorted(kept)])


def eval_pictures(ev: Evaluation, class_names: list[str]) -> dict[str, Any]:
    """The report's non-metric part, drawn into MLflow artifacts by the driver: the confusion matrix, and
    the overlay grid (rendered here, from predictions evaluate() already made, so only PNG bytes travel)."""
    from orchestrator import eval_artifacts

    out: dict[str, Any] = {eval_artifacts.MATRIX_KEY: ev.confusion, eval_artifacts.CLASSES_KEY: list(class_names)}
    if ev.samples:
        png = eval_artifacts.overlay_grid_png(*zip(*ev.samples))
        out[eval_artifacts.OVERLAY_KEY] = eval_artifacts.encode_png(png)
    return out
