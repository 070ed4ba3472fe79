"""How much of each training step waits for its input, with and without loader processes.

The project's own epoch loop (`trainables.train_loop.train_one_epoch`, real `shapes` images, the real
three-stream sampler and augmentation of a SemiOVS step) drives a stand-in student that is fast enough to
expose the input path, as a GPU would:
  * a 1×1 convolution (real forward and backward passes, negligible CPU time), and
  * a fixed device time per step, spent asleep in the optimizer step: while a GPU computes, the CPU thread
    that drives it waits, and leaves its core to the loader processes.
The device time is given as multiples of P, the time one process takes to make one step's batch (measured
again before each device time: on a shared machine it moves). Waiting share = time the loop blocked on its next batch ÷ the steps' wall time.
With `train.loader_workers: 0` the loop makes each batch itself, so it waits P every step; with one loader
process it waits only when the device time is shorter than P.

    python benchmarks/input_pipeline.py [--steps 60] [--device-times 0.5 1 1.5 2] [--workers 0 1 2]

OOD labels: the teacher's when `python run.py label` has made them for the default config, else the
student's own (`ood.label_source: self`, one PNG decode less per OOD image); the output says which.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from orchestrator.core.config import build_config
from orchestrator.core.paths import default_cache_root, resolve_root
from orchestrator.data.plan import build_plan
from orchestrator.trial import make_trial_input
from trainables.distributed import WorkerContext
from trainables.inputs import TrialInput
from trainables.loader import make_step_batch
from trainables.streams import BrokenSamples
from trainables.train_loop import make_sampler, runner_for, step_plan, train_one_epoch


class StandIn(nn.Module):
    """A student with the interface run_step needs (need_fp), costing next to nothing on the CPU."""

    def __init__(self, classes: int):
        super().__init__()
        self.head = nn.Conv2d(3, classes, 1)
        self.drop = nn.Dropout2d(0.5)

    def forward(self, x: torch.Tensor, need_fp: bool = False):
        out = self.head(x)
        return (out, self.head(self.drop(x))) if need_fp else out


class DeviceTimeSGD(torch.optim.SGD):
    """SGD whose step also waits `device_seconds`: the time a GPU would compute the step."""

    def __init__(self, params, device_seconds: float):
        super().__init__(params, lr=0.01)
        self.device_seconds = device_seconds

    def step(self, closure=None):
        time.sleep(self.device_seconds)
        return super().step(closure)


def batch_seconds(trial: TrialInput, steps: int) -> float:
    """P: seconds one process takes to make one step's batch (the mean over `steps` steps)."""
    cfg = trial.config
    ctx = WorkerContext("local", 0, 1, torch.device("cpu"))
    sampler, plan = make_sampler(trial, ctx, 0, BrokenSamples()), step_plan(cfg, steps + 3)
    for step in range(3):   # warm the image cache, as the first epoch of a run does
        make_step_batch(sampler, plan, step)
    started = time.perf_counter()
    for step in range(3, steps + 3):
        make_step_batch(sampler, plan, step)
    return (time.perf_counter() - started) / steps


def waiting_share(trial: TrialInput, workers: int, device_seconds: float, steps: int) -> dict[str, float]:
    cfg = replace(trial.config, train=replace(trial.config.train, loader_workers=workers))
    ctx = WorkerContext("local", 0, 1, torch.device("cpu"))
    model = StandIn(len(trial.class_names))
    runner = runner_for(model, DeviceTimeSGD(model.parameters(), device_seconds),
                        make_sampler(trial, ctx, 0, BrokenSamples()), cfg, ctx, 0, steps)
    try:
        runner.iters = 3
        train_one_epoch(runner, 0)                       # warm-up: loader start, image cache
        runner.iters = steps - 3
        waited, started = runner.batches.wait_seconds, time.perf_counter()
        train_one_epoch(runner, 3)
        wall = time.perf_counter() - started
    finally:
        runner.batches.close()
    return {"wait_share": (runner.batches.wait_seconds - waited) / wall, "step_ms": 1000 * wall / (steps - 3)}


def make_trial(cache: Path, steps: int) -> tuple[TrialInput, str]:
    base = {"train.method": "semiovs", "train.epochs": 1, "train.iters_per_epoch": steps}
    cfg = build_config(base)
    from orchestrator.labels.job import label_job

    store = label_job(cfg, cache).store
    if store.is_complete():
        return make_trial_input(cfg, build_plan(cfg, cache), str(store.root), None, "local"), "teacher"
    cfg = build_config({**base, "ood.label_source": "self"})
    return make_trial_input(cfg, build_plan(cfg, cache), None, None, "local"), "self"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--device-times", type=float, nargs="+", default=[0.5, 1.0, 1.5, 2.0],
                        help="device time per step, in multiples of P")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cache")
    args = parser.parse_args()
    torch.set_num_threads(1)
    trial, labels = make_trial(resolve_root(args.cache, default_cache_root()), args.steps)
    print(json.dumps({"ood_labels": labels, "crop": trial.config.data.crop_size, "method": "semiovs",
                      "batch_size": trial.config.train.batch_size, "steps": args.steps}), flush=True)
    for multiple in args.device_times:
        p = batch_seconds(trial, 20)
        for workers in args.workers:
            out = waiting_share(trial, workers, multiple * p, args.steps)
            print(json.dumps({"device_time_x_P": multiple, "P_ms": round(1000 * p, 1), "loader_workers": workers,
                              "wait_share": round(out["wait_share"], 3), "step_ms": round(out["step_ms"], 1)}),
                  flush=True)


if __name__ == "__main__":
    main()
