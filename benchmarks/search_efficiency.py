"""Search that spends less: trial-epochs that ASHA, TPE and TPE+ASHA spend to come within 1 mIoU of the
best that a large random search finds, each ÷ that random search's trial-epochs.

Every trial is a real SemiOVS trial through `run_sweep` (Ray Tune, local-mode training, the teacher's OOD
labels, MLflow), on a space of four continuous knobs:
    train.conf_thresh (τ) ~ U(0.7, 0.99), ood.teacher_thresh ~ U(0, 0.9), ood.ratio ~ U(0, 0.75),
    train.lr ~ logU(0.01, 0.3).
The sweeps, one after the other, with the same seed:
  reference  random search, FIFO: every trial runs all its epochs (the "full search")
  asha       the same random draws (same generator, same seed), ASHA stops the weak ones early
  tpe        Optuna TPE (`search: optuna`), FIFO
  tpe_asha   Optuna TPE under ASHA
Trials are deterministic given their config (seed 0), so the reference's best is a property of the space.
A searcher's cost is the number of trial-epochs reported up to its first val_miou ≥ reference best − 1,
counting every epoch reported in the same second as that one (a conservative tie rule for parallel trials).

Real trials on 2 shared cores are slow, so the scale is reduced and stated in the output: a small `shapes`
benchmark, a short teacher fit, and short trials (--epochs × --steps). Defaults:
    python benchmarks/search_efficiency.py --reference-trials 16 --searcher-trials 10 --epochs 4 --steps 10
Each sweep's per-epoch results are kept in OUT/results.json (default .semiovs/bench/search_efficiency).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

SPACE = {
    "train.conf_thresh": {"uniform": [0.7, 0.99]},
    "ood.teacher_thresh": {"uniform": [0.0, 0.9]},
    "ood.ratio": {"uniform": [0.0, 0.75]},
    "train.lr": {"loguniform": [0.01, 0.3]},
}
SMALL = {"data.num_train": 400, "data.num_val": 100, "data.num_ood": 600, "data.num_source": 400,
         "teacher.fit_steps": 150, "train.method": "semiovs", "train.num_workers": 0, "train.batch_size": 4,
         "train.overlay_images": 0}


def space_doc(name: str, search: str, asha: bool, trials: int, epochs: int, steps: int, seed: int) -> dict:
    scheduler = {"kind": "asha", "max_t": epochs, "grace_period": 1, "reduction_factor": 2} if asha else "fifo"
    return {"name": name, "search": search, "seed": seed, "num_samples": trials, "scheduler": scheduler,
            "fixed": {**SMALL, "train.epochs": epochs, "train.iters_per_epoch": steps}, "parameters": SPACE}


def run(doc: dict, out: Path, cache: Path) -> list[dict]:
    """Run one sweep; return its per-epoch results (trial, epoch, val_miou, timestamp)."""
    from orchestrator.sweep.driver import SweepRequest, run_sweep

    path = out / f"{doc['name']}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    started = time.time()
    run_sweep(SweepRequest(space=str(path), tracking_uri=f"sqlite:///{out / 'mlflow.db'}",
                           storage=str(out / "runs"), cache=str(cache), quiet=True))
    results = []
    for trial_dir in sorted((out / "runs" / doc["name"]).iterdir()):
        lines = (trial_dir / "result.json").read_text().splitlines() if (trial_dir / "result.json").is_file() else []
        for line in lines:
            r = json.loads(line)
            if "val_miou" in r:
                results.append({"trial": trial_dir.name, "epoch": r["training_iteration"],
                                "val_miou": r["val_miou"], "timestamp": r["timestamp"],
                                "config": {k: r["config"][k] for k in SPACE if k in r.get("config", {})}})
    print(json.dumps({"sweep": doc["name"], "results": len(results), "seconds": round(time.time() - started)}),
          flush=True)
    return results


def cost_to_reach(results: list[dict], target: float) -> int | None:
    """Trial-epochs reported up to the first result ≥ target (ties in time counted), or None."""
    hits = [r["timestamp"] for r in results if r["val_miou"] >= target]
    if not hits:
        return None
    return sum(1 for r in results if r["timestamp"] <= min(hits))


def summarize(runs: dict[str, list[dict]]) -> list[dict]:
    reference = runs["reference"]
    best = max(r["val_miou"] for r in reference)
    full = len(reference)
    rows = []
    for name, results in runs.items():
        cost = cost_to_reach(results, best - 1.0)
        rows.append({"search": name, "trials": len({r["trial"] for r in results}), "trial_epochs": len(results),
                     "best_val_miou": round(max(r["val_miou"] for r in results), 2),
                     "trial_epochs_to_within_1": cost,
                     "ratio_to_full_search": round(cost / full, 3) if cost is not None else None})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference-trials", type=int, default=16)
    parser.add_argument("--searcher-trials", type=int, default=10, help="trials given to tpe and tpe_asha")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10, help="train.iters_per_epoch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=".semiovs/bench/search_efficiency")
    parser.add_argument("--cache", help="data, teacher and labels (default: the project's cache)")
    args = parser.parse_args()
    from orchestrator.core.paths import default_cache_root, resolve_root

    out = Path(args.out).resolve() / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    cache = resolve_root(args.cache, default_cache_root())
    plan = [("reference", "random", False, args.reference_trials), ("asha", "random", True, args.reference_trials),
            ("tpe", "optuna", False, args.searcher_trials), ("tpe_asha", "optuna", True, args.searcher_trials)]
    print(json.dumps({"scale": {**SMALL, "train.epochs": args.epochs, "train.iters_per_epoch": args.steps},
                      "space": SPACE, "trials": {name: n for name, _, _, n in plan}, "out": str(out)}), flush=True)
    runs = {}
    for name, search, asha, trials in plan:
        runs[name] = run(space_doc(name, search, asha, trials, args.epochs, args.steps, args.seed), out, cache)
        (out / "results.json").write_text(json.dumps(runs, indent=1))
    for row in summarize(runs):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
