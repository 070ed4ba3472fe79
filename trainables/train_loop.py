"""The per-worker training loop: SemiOVS / UniMatch / supervised, with per-epoch evaluation and checkpoints.

Read top to bottom: `train_loop_per_worker` (Ray Train's entry point) → `run_training` → `train_one_epoch`
and `evaluate`. One checkpoint dict per epoch (model, optimizer, epoch, step, best, resolved config, and with
`train.prevmatch` the past models), saved by rank 0; a restarted worker group or a resumed trial continues from
it. Each epoch reports numbers only; rank 0 writes the epoch's pictures as files (trainables.pictures).
"""
from __future__ import annotations

import json
import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from orchestrator.core.config import ExperimentConfig, flatten
from orchestrator.core.label_format import read_label_quality, read_label_table
from trainables.device_setup import Precision, apply_model_settings, device_precision
from trainables.distributed import WorkerContext, make_context
from trainables.inputs import TrialInput
from trainables.loader import BatchStream, StepBatches, StepPlan, loader_options, to_device
from trainables.metrics import OOD_GT_COUNTS, ConfusionMatrix, label_agreement
from trainables.mixing import plan_ood_counts
from trainables.models import build_student
from trainables.optim import apply_poly_lr, build_optimizer, unwrap
from trainables.prevmatch import (PrevGuidance, make_generator, restore_snapshots, snapshot_states,
                                  triangle_weight, update_snapshots)
from trainables.recipe import StepOptions, run_step
from trainables.streams import (BrokenSamples, OODLabels, StreamFiles, StreamSampler, load_image_cached,
                               load_mask_cached)

EVAL_BATCH = 32
BROKEN_LIST = "broken_samples.txt"
NODES_FILE = "nodes.json"   # where the run's driver and rank 0 ran (the driver tags the MLflow run)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point. loop_config: `trial` (a TrialInput), optional `on_report` (local mode)."""
    trial: TrialInput = loop_config["trial"]
    ctx = make_context(trial.mode, trial.config.resources.gpus_per_worker, loop_config.get("on_report"))
    run_training(trial, ctx)


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
    return np.asarray(plan_ood_counts(total, cfg.ood.ratio, steps, seed), dtype=int)


@dataclass
class RunState:
    """What a checkpoint carries forward besides the weights."""
    epoch: int = 0
    step: int = 0
    best: float = 0.0
    snapshots: list = field(default_factory=list)   # PrevMatch: frozen past best models
    new_best: bool = False                          # did the last epoch set a new best?
    # The report of the checkpoint's epoch, sent again after a restart: if the node that ran the trial's
    # Tune function died after Train stored the checkpoint but before Tune got the report, that epoch
    # would otherwise never reach Tune or MLflow (MLflow logs each epoch once, so a repeat is skipped).
    last_report: dict = field(default_factory=dict)


def step_plan(cfg: ExperimentConfig, steps: int) -> StepPlan:
    """Images per stream of each of the run's `steps` global steps (pure)."""
    n_id, n_total = unlabeled_sizes(cfg)
    counts = ood_counts(cfg, steps, cfg.seed) if cfg.uses_ood else np.zeros(0, dtype=int)
    return StepPlan(cfg.train.batch_size, None if cfg.train.method == "supervised" else n_id, n_total, counts)


@dataclass
class EpochRunner:
    """Everything one epoch of training uses, built once per run."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    batches: BatchStream     # the run's batches in step order (trainables.loader)
    cfg: ExperimentConfig
    ctx: WorkerContext
    iters: int               # steps per epoch
    total: int               # steps of the whole run (the poly schedule's horizon)
    precision: Precision


def build_runner(trial: TrialInput, ctx: WorkerContext, seed: int, first_step: int,
                 model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> EpochRunner:
    """The run's input pipeline from `first_step` on, and its precision, around a prepared model."""
    sampler = make_sampler(trial, ctx, seed, BrokenSamples())
    iters = steps_per_epoch(trial.config, sampler)
    return runner_for(model, optimizer, sampler, trial.config, ctx, first_step, iters)


def runner_for(model: torch.nn.Module, optimizer: torch.optim.Optimizer, sampler: StreamSampler,
               cfg: ExperimentConfig, ctx: WorkerContext, first_step: int, iters: int) -> EpochRunner:
    """An EpochRunner whose batches start at global step `first_step` (also what benchmarks and tests use)."""
    total = iters * cfg.train.epochs
    batches = BatchStream(StepBatches(sampler, step_plan(cfg, total)), first_step, total,
                          loader_options(cfg.train.loader_workers, ctx.device))
    precision = device_precision(cfg.train.amp, cfg.train.amp_dtype, ctx.device)
    if precision.note and ctx.is_main:
        print(f"note: {precision.note}", file=sys.stderr, flush=True)
    scaler = torch.amp.GradScaler("cuda", enabled=precision.scaled)
    return EpochRunner(model, optimizer, scaler, batches, cfg, ctx, iters, total, precision)


def run_training(trial: TrialInput, ctx: WorkerContext) -> None:
    cfg = trial.config
    torch.set_num_threads(max(1, int(cfg.resources.cpus_per_worker)))
    seed = cfg.seed * 1000 + ctx.rank
    torch.manual_seed(seed)
    model = build_student(cfg.model.arch, len(trial.class_names), width=cfg.model.width,
                          fp_dropout=cfg.model.fp_dropout, pretrained_backbone=cfg.model.pretrained_backbone)
    model = apply_model_settings(model, cfg.train.channels_last, cfg.train.cudnn_benchmark)
    model = ctx.prepare_model(model, cfg.train.sync_bn)
    optimizer = build_optimizer(model, cfg.train.lr, cfg.train.lr_multi, momentum=cfg.train.momentum,
                                weight_decay=cfg.train.weight_decay)
    flat = flatten(cfg)
    state = restore_state(ctx, flat, model, optimizer)
    runner = build_runner(trial, ctx, seed, state.step, model, optimizer)
    try:
        train_epochs(trial, ctx, runner, state, flat, seed)
    finally:
        runner.batches.close()


def train_epochs(trial: TrialInput, ctx: WorkerContext, runner: EpochRunner, state: RunState,
                 flat: dict[str, Any], seed: int) -> None:
    cfg, model, iters = trial.config, runner.model, runner.iters
    broken = runner.batches.dataset.sampler.broken
    prev_rng = make_generator(seed + 7919 * state.epoch)   # PrevMatch draws; reseeded on resume
    label_quality = read_label_quality(trial.label_store) if trial.label_store else {}   # the teacher's, per set
    resumed_from = state.epoch
    if ctx.is_main and trial.files_dir:   # again after every restart: a restarted worker may run elsewhere
        record_nodes(trial, ctx)
    if state.last_report:
        ctx.report(state.last_report, None)
    while state.epoch < cfg.train.epochs:
        started = time.time()
        guide = None
        if cfg.train.prevmatch:  # the model that ended a best epoch joins the past models (docs/method.md §5)
            state.snapshots = update_snapshots(state.snapshots, unwrap(model), state.new_best,
                                               cfg.train.prev_max_models)
            guide = PrevGuidance(state.snapshots, prev_rng, triangle_weight(state.epoch, cfg.train.epochs),
                                 cfg.train.prev_max_k, cfg.train.prev_thresh)
        waited = runner.batches.wait_seconds
        logs = train_one_epoch(runner, state.step, prev=guide)
        logs["train_seconds"] = time.time() - started
        # share of the epoch's training time spent waiting for input (the loader's job is to make it ~0)
        logs["input_wait_share"] = (runner.batches.wait_seconds - waited) / max(logs["train_seconds"], 1e-9)
        if trial.launched_at and state.epoch == resumed_from:   # trainer built → first training step
            logs["startup_seconds"] = started - trial.launched_at
        state.step += iters
        state.epoch += 1
        ev = evaluate(unwrap(model), list(trial.val[ctx.rank::ctx.world_size]), len(trial.class_names), ctx,
                      keep=cfg.train.overlay_images if ctx.is_main else 0, broken=broken)
        state.new_best = math.isfinite(ev.miou) and ev.miou > state.best
        state.best = max(state.best, ev.miou if math.isfinite(ev.miou) else 0.0)
        metrics = {"epoch": state.epoch, "val_miou": ev.miou, "best_val_miou": state.best, **logs,
                   "broken_samples": len(broken), "epoch_seconds": time.time() - started, "step": state.step,
                   "resumed_from_epoch": resumed_from, **label_quality}
        metrics.update({f"val_iou.{name}": v for name, v in zip(trial.class_names, ev.ious) if math.isfinite(v)})
        if ctx.is_main:
            try:
                write_epoch_files(trial, state.epoch, ev, broken)
            except Exception as err:  # a picture that cannot be drawn or written must not stop training
                print(f"warning: no evaluation pictures for epoch {state.epoch}: {err!r}", file=sys.stderr, flush=True)
        ctx.report(metrics, checkpoint_dict(runner, state, flat, metrics) if ctx.is_main else None)


def restore_state(ctx: WorkerContext, flat: dict[str, Any], model: torch.nn.Module,
                  optimizer: torch.optim.Optimizer) -> RunState:
    """Load the run's latest checkpoint into model and optimizer (after a worker failure or a resume)."""
    saved = ctx.latest_checkpoint()
    if saved is None:
        return RunState()
    check_resumable(saved["config"], flat)
    unwrap(model).load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    return RunState(saved["epoch"], saved["step"], saved["best_val_miou"],
                    restore_snapshots(saved.get("prev_models", []), unwrap(model)), saved.get("prev_new_best", False),
                    saved.get("metrics", {}))


def checkpoint_dict(runner: EpochRunner, state: RunState, flat: dict[str, Any],
                    metrics: dict[str, Any]) -> dict[str, Any]:
    checkpoint = {"model": unwrap(runner.model).state_dict(), "optimizer": runner.optimizer.state_dict(),
                  "epoch": state.epoch, "step": state.step, "best_val_miou": state.best, "config": flat,
                  "metrics": plain_numbers(metrics)}
    if runner.cfg.train.prevmatch:
        # Costly: every snapshot is a full set of weights, so a checkpoint grows to (1 + prev_max_models)
        # models, e.g. ~9 × 240 MB for DeepLabV3+ R101 (and Tune keeps two checkpoints per trial).
        checkpoint.update(prev_models=snapshot_states(state.snapshots), prev_new_best=state.new_best)
    return checkpoint


def plain_numbers(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics with numpy scalars as Python numbers: what `torch.load(weights_only=True)` reads back."""
    return {key: value.item() if isinstance(value, np.generic) else value for key, value in metrics.items()}


def write_epoch_files(trial: TrialInput, epoch: int, ev: "Evaluation", broken: BrokenSamples) -> None:
    """Rank 0: the epoch's pictures, and the unreadable samples seen so far, as files the driver logs."""
    if not trial.files_dir:
        return
    from trainables.pictures import write_atomically, write_epoch_pictures

    write_epoch_pictures(trial.files_dir, epoch, ev.confusion, trial.class_names, ev.samples)
    if broken.paths:
        text = "\n".join(sorted(broken.paths)) + "\n"   # one path a line (the run's metric counts them)
        write_atomically(Path(trial.files_dir) / BROKEN_LIST, text.encode())


def record_nodes(trial: TrialInput, ctx: WorkerContext) -> None:
    from orchestrator.core.nodes import this_node
    from trainables.pictures import write_atomically

    nodes = {"trial": trial.driver_node, "train_rank0": this_node() if ctx.mode == "train" else trial.driver_node,
             "train_workers": ctx.world_size}
    write_atomically(Path(trial.files_dir) / NODES_FILE, json.dumps(nodes).encode())


def make_sampler(trial: TrialInput, ctx: WorkerContext, seed: int, broken: BrokenSamples) -> StreamSampler:
    """This worker's streams: all labeled images, its shard of the ID unlabeled and OOD images."""
    cfg = trial.config
    ood_labels = OODLabels(read_label_table(trial.label_store), cfg.ood.teacher_thresh) if trial.label_store \
        else None
    shard = slice(ctx.rank, None, ctx.world_size)
    files = StreamFiles(trial.labeled, trial.unlabeled[shard], trial.ood[shard], trial.ood_masks[shard])
    return StreamSampler(files, ood_labels=ood_labels, crop=cfg.data.crop_size, seed=seed, broken=broken,
                         max_broken_share=cfg.data.max_broken_share, num_classes=len(trial.class_names))


def steps_per_epoch(cfg: ExperimentConfig, sampler: StreamSampler) -> int:
    """train.iters_per_epoch, or one pass over this worker's ID unlabeled shard (the paper's epoch)."""
    n_id, _ = unlabeled_sizes(cfg)
    return cfg.train.iters_per_epoch or max(1, len(sampler.unlabeled) // max(1, n_id or cfg.train.batch_size))


# Keys a resumed run may change: how long it runs and with what resources, not what it computes.
RESUMABLE_CHANGES = ("train.epochs", "train.max_failures", "train.num_workers", "train.overlay_images",
                     "train.loader_workers", "train.cudnn_benchmark", "train.channels_last", "resources.")


def check_resumable(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """A checkpoint only continues the run it came from (same config but for RESUMABLE_CHANGES)."""
    changed = sorted(k for k in set(saved) | set(current)
                     if saved.get(k) != current.get(k) and not k.startswith(RESUMABLE_CHANGES))
    if changed:
        raise ValueError(f"the checkpoint being resumed was made with other settings ({', '.join(changed)}); "
                         f"start a new run (another --name) instead of resuming this one")


def train_one_epoch(run: EpochRunner, first_step: int, prev: PrevGuidance | None = None) -> dict[str, float]:
    cfg, model, optimizer = run.cfg, run.model, run.optimizer
    model.train()
    sums: dict[str, float] = defaultdict(float)
    opts = StepOptions(cfg.train.method, tau=cfg.train.conf_thresh, lambda_ood=cfg.train.lambda_ood,
                       ood_label_source=cfg.ood.label_source, prev=prev)
    lr = cfg.train.lr
    for i in range(run.iters):
        step = first_step + i
        lr = apply_poly_lr(optimizer, cfg.train.lr, step, run.total)
        batch = to_device(run.batches.next(step), run.ctx.device, cfg.train.channels_last)
        with torch.autocast(run.ctx.device.type, dtype=run.precision.dtype, enabled=run.precision.enabled):
            loss, logs = run_step(model, batch, opts)
        optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(optimizer)
        run.scaler.update()
        for key, value in logs.items():
            sums[key] += value
    # OOD label agreement: pixel counts pooled over the epoch's steps (steps without OOD images add nothing)
    pooled = [sums.pop(key, 0.0) for key in OOD_GT_COUNTS]
    out = {key: value / run.iters for key, value in sums.items()}
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


def evaluate(model: torch.nn.Module, val: list, num_classes: int, ctx: WorkerContext, keep: int = 0,
             broken: BrokenSamples | None = None) -> Evaluation:
    """Whole val images at native size (the paper's 'original' mode); same-size images are batched.

    The predictions of the first `keep` images of `val` (fixed across epochs) are kept for the overlays.
    """
    from orchestrator.core.images import SampleError, check_classes
    from trainables.augment import to_tensor_normalized

    model.eval()
    matrix = ConfusionMatrix(num_classes)
    by_size: dict[tuple, list] = defaultdict(list)
    for index, (image_path, mask_path) in enumerate(val):
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
    model.train()
    return Evaluation(*matrix.compute(), matrix.as_lists(), [kept[i] for i in sorted(kept)])
