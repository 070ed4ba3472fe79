"""The per-worker training loop: SemiOVS / UniMatch / supervised, with per-epoch evaluation and checkpoints.

Read top to bottom: `train_loop_per_worker` (Ray Train's entry point) → `run_training` → `train_epochs` →
`train_one_epoch` (trainables.evaluation scores it). Each epoch reports numbers and a checkpoint folder
(trainables.run_state: the student file and the training state), saved by rank 0; a restarted worker group or
a resumed trial continues from it. After the last epoch the best epoch's model is scored once on the test
split, when the dataset has one. Rank 0 writes the epoch's pictures as files (trainables.pictures).
"""
from __future__ import annotations

import json
import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from orchestrator.core.config import ExperimentConfig, flatten
from orchestrator.core.label_format import read_label_quality, read_label_table
from trainables.device_setup import Precision, apply_model_settings, device_precision
from trainables.distributed import WorkerContext, make_context
from trainables.evaluation import Evaluation, evaluate
from trainables.inputs import TrialInput
from trainables.loader import BatchStream, StepBatches, StepPlan, loader_options, to_device
from trainables.metrics import OOD_GT_COUNTS, label_agreement
from trainables.mixing import plan_ood_counts
from trainables.models import build_student_from_config
from trainables.optim import apply_poly_lr, build_optimizer, unwrap
from trainables.prevmatch import PrevGuidance, make_generator, triangle_weight, update_snapshots
from trainables.recipe import StepOptions, run_step
from trainables.run_state import BestEpoch, RunState, checkpoint_files, restore_state
from trainables.streams import BrokenSamples, OODLabels, StreamFiles, StreamSampler

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
    model = build_student_from_config(len(trial.class_names), cfg.model)
    if trial.encoder_file:   # pretrained once before the trials (orchestrator.students)
        model.backbone.load_state_dict(torch.load(trial.encoder_file, map_location="cpu", weights_only=True))
    model = apply_model_settings(model, cfg.train.channels_last, cfg.train.cudnn_benchmark)
    model = ctx.prepare_model(model, cfg.train.sync_bn)
    optimizer = build_optimizer(model, cfg.train.lr, cfg.train.lr_multi, momentum=cfg.train.momentum,
                                weight_decay=cfg.train.weight_decay)
    flat = flatten(cfg)
    state = restore_state(ctx.latest_checkpoint(), flat, model, optimizer,
                          BestEpoch(trial.selection))
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
        metrics.update(class_scores("val", trial.class_names, ev))
        state.chosen.offer(state.epoch, metrics, model)
        if state.epoch == cfg.train.epochs and trial.test:   # the selected model, scored once on held-out data
            metrics.update(test_scores(trial, ctx, state.chosen, model, broken))
        if ctx.is_main:
            try:
                write_epoch_files(trial, state.epoch, ev, broken)
            except Exception as err:  # a picture that cannot be drawn or written must not stop training
                print(f"warning: no evaluation pictures for epoch {state.epoch}: {err!r}", file=sys.stderr, flush=True)
        metrics["reported_at"] = time.time()   # MLflow stamps the epoch's metrics with it (tracking.client)
        files = checkpoint_files(model, runner.optimizer, state, flat, trial.class_names, metrics,
                                 cfg.train.prevmatch) if ctx.is_main else None
        ctx.report(metrics, files)


def class_scores(split: str, class_names: tuple[str, ...], ev: Evaluation) -> dict[str, float]:
    """`<split>_iou.<class>` for every class the split scores (an absent class has no IoU)."""
    return {f"{split}_iou.{name}": v for name, v in zip(class_names, ev.ious) if math.isfinite(v)}


def test_scores(trial: TrialInput, ctx: WorkerContext, chosen: BestEpoch, model: torch.nn.Module,
                broken: BrokenSamples) -> dict[str, float]:
    """The best epoch's model on the test split: `test_miou`, per-class `test_iou.*`, and which epoch it was."""
    ev = evaluate(chosen.model(model, trial.config.train.epochs), list(trial.test[ctx.rank::ctx.world_size]), len(trial.class_names), ctx,
                  broken=broken)
    return {"test_miou": ev.miou, "test_epoch": chosen.epoch, **class_scores("test", trial.class_names, ev)}


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
