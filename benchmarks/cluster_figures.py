"""Cluster figures on one machine (needs root for `unshare -m`; tests/cluster.py builds the cluster).

    python benchmarks/cluster_figures.py [--images 4000]

1. Labeling images/s with 2 worker nodes x 1 teacher actor, divided by 1 worker node x 1 actor, on the same
   local cluster (a head with 0 CPUs, worker nodes of 1 CPU each in their own mount namespaces). The pool
   must spread over the nodes for the ratio to approach 2 on this 2-core machine.
2. The smoke sweep's wall time on the 3-node local cluster (head + 2 worker nodes, submitted with
   `ray job submit`), divided by the same sweep on a single node (`python run.py sweep`, a private local
   Ray with 2 CPUs), each from an empty cache.
Prints one JSON line per figure.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.cluster import make_cluster, unshare_available  # noqa: E402


def submit(cluster, *run_args: str) -> tuple[float, str]:
    started = time.time()
    out = cluster.submit(*run_args)
    if out.returncode != 0:
        raise SystemExit(f"job failed: {(out.stdout + out.stderr)[-3000:]}")
    return time.time() - started, out.stdout + out.stderr


def label_rate(cluster, cache: Path, images: int, actors: int) -> dict:
    """One labeling run from an empty label store: the pipeline's own images/s (its summary line)."""
    shutil.rmtree(cache / "labels", ignore_errors=True)
    sets = {"data.num_train": 150, "data.num_val": 40, "data.num_ood": images, "data.num_source": 120,
            "teacher.fit_steps": 30, "resources.teacher_actors": actors, "resources.cpus_per_teacher": 1}
    args = [arg for k, v in sets.items() for arg in ("--set", f"{k}={v}")]
    _, log = submit(cluster, "label", "--cache", str(cache), "--quiet", *args)
    summary = json.loads([line for line in log.splitlines() if line.startswith('{"cache_key"')][-1])
    return {"images": summary["labeled"], "seconds": summary["seconds"], "images_per_s": summary["images_per_s"]}


def sweep_seconds(log: str) -> float:
    return float(re.search(r"sweep '[^']+' finished in (\d+) s", log).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=4000, help="OOD images labeled per run")
    args = parser.parse_args()
    reason = unshare_available()
    if reason:
        raise SystemExit(f"cannot build a multi-node cluster here: {reason}")
    cluster = make_cluster(ROOT)
    try:
        cluster.start_head()
        cluster.add_worker("w1", cpus=1)
        cache = cluster.shared / "cache"
        label_rate(cluster, cache, args.images, 1)                 # warm: data and teacher made, not timed
        one = label_rate(cluster, cache, args.images, 1)
        cluster.add_worker("w2", cpus=1)
        two = label_rate(cluster, cache, args.images, 2)
        print(json.dumps({"figure": "labeling images/s, 2 worker nodes x 1 actor / 1 node x 1 actor",
                          "one_node": one, "two_nodes": two,
                          "ratio": round(two["images_per_s"] / one["images_per_s"], 2)}), flush=True)

        shared = cluster.shared
        wall_cluster, log = submit(cluster, "sweep", "--space", "search_spaces/smoke.yaml", "--name", "bench",
                                   "--cache", str(shared / "smoke_cache"), "--storage", str(shared / "runs"),
                                   "--tracking-uri", f"sqlite:///{shared / 'mlflow.db'}")
        cluster_sweep = sweep_seconds(log)
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)
    local = Path(tempfile.mkdtemp(prefix="bench-local-"))
    try:
        started = time.time()
        out = subprocess.run([sys.executable, "run.py", "sweep", "--space", "search_spaces/smoke.yaml", "--name", "bench",
                              "--cache", str(local / "cache"), "--storage", str(local / "runs"),
                              "--tracking-uri", f"sqlite:///{local / 'mlflow.db'}"], capture_output=True, text=True,
                             cwd=ROOT, env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
        wall_local = time.time() - started
        if out.returncode != 0:
            raise SystemExit(f"local sweep failed: {(out.stdout + out.stderr)[-3000:]}")
        local_sweep = sweep_seconds(out.stdout)
    finally:
        shutil.rmtree(local, ignore_errors=True)
    print(json.dumps({"figure": "smoke sweep wall, 3-node local cluster / single node",
                      "cluster_s": round(wall_cluster, 1), "single_node_s": round(wall_local, 1),
                      "cluster_sweep_s": cluster_sweep, "single_node_sweep_s": local_sweep,
                      "ratio": round(wall_cluster / wall_local, 2)}), flush=True)


if __name__ == "__main__":
    main()
