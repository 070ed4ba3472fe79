"""Training steps/s under Ray Train ÷ the same loop in plain PyTorch on the same cores, in one run.

    python benchmarks/train_throughput.py [--method semiovs] [--iters 60] [--cache DIR]

Four measurements of the project's own epoch loop (`trainables.train_loop.train_one_epoch`), each on
the default `shapes` benchmark with 1 thread per process:
  plain      one process, no Ray                      vs  Ray Train local mode (train.num_workers: 0)
  plain DDP  2 processes, torch.distributed (gloo)   vs  Ray Train, 2 DDP workers
Ray-side figures use the loop's own `train_seconds` (steps only, no evaluation); Ray start-up and the
time from building the trainer to its first step (`startup_seconds`) are reported separately.
Prints one JSON line per figure. Needs the benchmark's OOD labels for semiovs (`python run.py label`).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from orchestrator.core.config import build_config
from orchestrator.data.plan import build_plan
from orchestrator.core.paths import default_cache_root, resolve_root
from trainables.distributed import WorkerContext
from trainables.models import build_student
from trainables.optim import build_optimizer
from orchestrator.trial import build_trainer, make_trial_input
from trainables.streams import BrokenSamples
from trainables.inputs import TrialInput
from trainables.train_loop import make_sampler, runner_for, train_one_epoch


def plain_steps_per_s(trial: TrialInput, rank: int = 0, world: int = 1) -> float:
    """The loop with no Ray at all (DDP through torch.distributed when world > 1)."""
    torch.set_num_threads(1)
    torch.manual_seed(rank)
    ctx = WorkerContext("local", rank, world, torch.device("cpu"))
    cfg = trial.config
    model = build_student(cfg.model.arch, len(trial.class_names), width=cfg.model.width)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    opt = build_optimizer(model, cfg.train.lr, cfg.train.lr_multi)
    iters = cfg.train.iters_per_epoch
    one_epoch = replace(cfg, train=replace(cfg.train, epochs=1))
    warm = runner_for(model, opt, make_sampler(trial, ctx, rank, BrokenSamples()), one_epoch, ctx, 0, 3)
    train_one_epoch(warm, 0)  # warm-up
    warm.batches.close()
    runner = runner_for(model, opt, make_sampler(trial, ctx, rank, BrokenSamples()), one_epoch, ctx, 0, iters)
    start = time.time()
    train_one_epoch(runner, 0)
    runner.batches.close()
    return iters / (time.time() - start)


def _ddp_worker(rank: int, trial: TrialInput, port: int, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    rate = plain_steps_per_s(trial, rank, 2)
    out[rank] = rate
    dist.destroy_process_group()


def plain_ddp_steps_per_s(trial: TrialInput) -> float:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(trial, port, out), nprocs=2, join=True)
    return min(out.values())          # the slower rank sets the pace of synchronous DDP


def ray_steps_per_s(trial: TrialInput, storage: Path, name: str) -> tuple[float, float]:
    cfg = trial.config
    metrics = build_trainer(trial, name=name, storage=str(storage), callbacks=[]).fit().metrics
    return cfg.train.iters_per_epoch / metrics["train_seconds"], metrics.get("startup_seconds", float("nan"))


def label_store(cfg, cache: Path) -> str | None:
    """The cached teacher labels the run reads (made by `python run.py label`), or None without them."""
    if not cfg.uses_teacher_labels:
        return None
    from orchestrator.labels.job import label_job

    store = label_job(cfg, cache).store
    if not store.is_complete():
        raise SystemExit(f"no OOD labels in {store.root}: run `python run.py label` first")
    return str(store.root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", default="semiovs", choices=["supervised", "unimatch", "semiovs"])
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--cache")
    args = parser.parse_args()
    cache = resolve_root(args.cache, default_cache_root())
    base = {"train.method": args.method, "train.epochs": 1, "train.iters_per_epoch": args.iters,
            "resources.cpus_per_worker": 1.0}
    import tempfile

    import ray

    from orchestrator.runtime import init_ray

    t0 = time.time()
    init_ray(quiet=True)
    print(json.dumps({"figure": "ray_init_seconds", "value": round(time.time() - t0, 1)}), flush=True)
    storage = Path(tempfile.mkdtemp(prefix="bench-train-"))
    for workers in (0, 2):
        cfg = build_config({**base, "train.num_workers": workers})
        trial = make_trial_input(cfg, build_plan(cfg, cache), label_store(cfg, cache), None,
                                 "local" if workers == 0 else "train")
        plain = plain_steps_per_s(trial) if workers == 0 else plain_ddp_steps_per_s(trial)
        rate, startup = ray_steps_per_s(trial, storage, f"bench-{workers}")
        label = "local mode vs plain loop" if workers == 0 else "2-worker DDP vs plain torch DDP"
        print(json.dumps({"figure": label, "method": args.method, "iters": args.iters,
                          "ray_steps_per_s": round(rate, 2), "plain_steps_per_s": round(plain, 2),
                          "ratio": round(rate / plain, 3), "trainer_to_first_step_s": round(startup, 1)}),
              flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
