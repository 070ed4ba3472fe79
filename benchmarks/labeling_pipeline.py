"""How efficient is the Ray Data labeling pipeline, and does it stream? Prints one JSON line per figure.

    python benchmarks/labeling_pipeline.py                      # 8,000 images; memory 20,000 vs 2,000
    python benchmarks/labeling_pipeline.py --images 2000 --skip-memory

1. Efficiency: images/s of `run_labeling` (decode → actor pool → parquet) ÷ images/s of a plain single-process
   loop doing the same work (the same decode and TeacherActor code, a teacher loaded beforehand, the same batch
   size, torch threads = actors × cpus_per_actor), on 64×64 JPEGs. Both run in this process, one after the other,
   so machine load hits both (the loop runs before and after the pipeline; its mean is used). `ratio_end_to_end`
   divides by the whole `run_labeling` call (start-up, labels, manifest and diagnostics); `ratio` by the time
   until the last shard is written. Start-up (Ray Data
   planning, actor start, teacher load) is measured on a one-batch-per-actor corpus and reported separately.
2. Streaming: peak memory labeling 20,000 images ÷ 2,000, each in a fresh process that starts its own Ray;
   sampled every 0.2 s: PSS summed over the process tree (driver, raylet, workers, object store pages), and
   the driver's own peak RSS.

The teacher is the benchmark's textseg architecture (FitConfig defaults) fitted for one step: throughput does not
depend on how well it is fitted.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

VOCAB = {"classes": [{"name": n, "synonyms": []} for n in ("background", "disk", "square", "triangle")],
         "background_concepts": ["hexagon", "cross"]}


def make_corpus(root: Path, n: int, size: int = 64, seed: int = 0) -> list[tuple[str, str]]:
    """n JPEGs (noise + a few filled disks and boxes), reused across runs if already there."""
    from PIL import Image

    folder = root / f"corpus{size}" / "JPEGImages"
    folder.mkdir(parents=True, exist_ok=True)
    have = len(list(folder.iterdir()))
    rng = np.random.default_rng(seed + have)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(have, n):
        img = rng.integers(40, 200, (size, size, 3)).astype(np.uint8)
        for _ in range(rng.integers(1, 4)):
            cy, cx, r = rng.integers(8, size - 8, 2).tolist() + [int(rng.integers(4, 12))]
            shape = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) if rng.random() < 0.5 else \
                (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
            img[shape] = rng.integers(0, 256, 3)
        Image.fromarray(img).save(folder / f"img_{i:06d}.jpg", quality=90)
    return [(f"img_{i:06d}", str(folder / f"img_{i:06d}.jpg")) for i in range(n)]


def make_teacher(root: Path) -> str:
    from orchestrator.teachers import fit_textseg, save_checkpoint
    from orchestrator.core.vocab import Vocabulary

    path = root / "textseg.pt"
    if not path.is_file():
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (16, 64, 64, 3)).astype(np.uint8)
        masks = rng.integers(0, 4, (16, 64, 64)).astype(np.uint8)
        save_checkpoint(fit_textseg(images, masks, Vocabulary.from_dict(VOCAB), steps=1), str(path))
    return str(path)


def make_job(root: Path, items, ckpt: str, args):
    from orchestrator.labels.store import LabelStore
    from orchestrator.labels.pipeline import LabelingJob

    return LabelingJob(store=LabelStore.at(root / "cache", f"bench-{uuid.uuid4().hex[:8]}"), key_inputs={},
                       items=list(items), teacher_spec={"kind": "textseg", "pretrained": ckpt}, vocabulary=VOCAB,
                       actors=args.actors, cpus_per_actor=args.cpus_per_actor, batch_size=args.batch_size)


def plain_loop(items, ckpt: str, args, out: Path) -> float:
    """The same work in one process: decode, label, encode, write parquet. Returns seconds (teacher preloaded)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from orchestrator.labels.pipeline import TeacherActor, decode_batch

    threads = max(1, int(args.actors * args.cpus_per_actor))
    actor = TeacherActor({"kind": "textseg", "pretrained": ckpt}, VOCAB, threads)
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    for part, first in enumerate(range(0, len(items), 1000)):   # a parquet file per 1,000 rows, as shards
        tables = []
        for i in range(first, min(first + 1000, len(items)), args.batch_size):
            chunk = items[i:i + args.batch_size]
            batch = {"image_id": np.array([c[0] for c in chunk], object), "path": np.array([c[1] for c in chunk])}
            res = actor(decode_batch(batch))
            tables.append(pa.table({"image_id": list(res["image_id"]), "label": list(res["label"]),
                                    "confidence": list(res["confidence"]), "error": list(res["error"]),
                                    "class_pixels": [c.tolist() for c in res["class_pixels"]],
                                    "conf_hist": [h.tolist() for h in res["conf_hist"]]}))
        pq.write_table(pa.concat_tables(tables), out / f"part-{part:05d}.parquet")
    return time.perf_counter() - start


def pipeline(root: Path, items, ckpt: str, args) -> dict:
    from orchestrator.labels.pipeline import run_labeling

    job = make_job(root, items, ckpt, args)
    start = time.perf_counter()
    outcome = run_labeling(job)
    wall = time.perf_counter() - start
    assert outcome.labeled == len(items), outcome
    timing = job.store.manifest()["timing"]
    return {"wall": wall, "pipeline": timing["pipeline_seconds"], "diagnostics": timing["diagnostics_seconds"]}


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def efficiency(root: Path, args) -> None:
    import ray

    from orchestrator.runtime import init_ray

    items = make_corpus(root, args.images)
    ckpt = make_teacher(root)
    cpus = args.actors * args.cpus_per_actor
    init_ray(num_cpus=int(np.ceil(cpus)), quiet=True)
    load_before = os.getloadavg()[0]
    small = pipeline(root, items[: args.actors * args.batch_size], ckpt, args)    # start-up: one batch per actor
    loop_a = plain_loop(items, ckpt, args, root / "loop")
    big = pipeline(root, items, ckpt, args)
    loop_b = plain_loop(items, ckpt, args, root / "loop")
    loop = (loop_a + loop_b) / 2
    n = len(items)
    emit(figure="pipeline_vs_loop", images=n, batch_size=args.batch_size, actors=args.actors,
         cpus_per_actor=args.cpus_per_actor, ratio_end_to_end=round(loop / big["wall"], 3),
         end_to_end_seconds=round(big["wall"], 2), ratio=round(loop / big["pipeline"], 3),
         ratio_after_startup=round(loop / max(1e-9, big["pipeline"] - small["pipeline"]), 3),
         pipeline_images_per_s=round(n / big["pipeline"], 1), loop_images_per_s=round(n / loop, 1),
         loop_seconds=[round(loop_a, 2), round(loop_b, 2)], pipeline_seconds=round(big["pipeline"], 2),
         diagnostics_seconds=round(big["diagnostics"], 2), load_avg_1min=[round(load_before, 2),
                                                                         round(os.getloadavg()[0], 2)])
    emit(figure="pipeline_startup_seconds", seconds=round(small["pipeline"], 2), images=args.actors * args.batch_size,
         note="Ray Data planning + actor start + teacher load + one batch per actor")
    ray.shutdown()


# ------------------------------------------------------------------------------------------ memory


def _tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_memory(root: Path, n: int, args) -> dict:
    cmd = [sys.executable, __file__, "--memory-child", str(n), "--workdir", str(root), "--actors", str(args.actors),
           "--cpus-per-actor", str(args.cpus_per_actor), "--batch-size", str(args.batch_size)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, sum(_pss_kib(p) for p in _tree(proc.pid)))
        time.sleep(0.2)
    out = proc.stdout.read().strip().splitlines()
    if proc.returncode != 0 or not out:
        raise SystemExit(f"memory child for {n} images failed (exit {proc.returncode})")
    return {"tree_pss_mib": peak / 1024, **json.loads(out[-1])}


def memory_child(root: Path, n: int, args) -> None:
    import resource

    from orchestrator.runtime import init_ray

    items = make_corpus(root, n)
    ckpt = make_teacher(root)
    init_ray(num_cpus=int(np.ceil(args.actors * args.cpus_per_actor)), quiet=True)
    result = pipeline(root, items, ckpt, args)
    print(json.dumps({"driver_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "seconds": round(result["wall"], 1)}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=8000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--cpus-per-actor", type=float, default=1.0)
    p.add_argument("--memory-sizes", type=int, nargs=2, default=(2000, 20000))
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-efficiency", action="store_true")
    p.add_argument("--workdir", default="", help="corpus, teacher and outputs (default: a temp folder)")
    p.add_argument("--memory-child", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="labeling-bench-"))
    os.environ.pop("RAY_ADDRESS", None)
    # Ray runs its workers at nice 15; the plain loop runs here at nice 0. On a shared machine that alone
    # hands the loop most of the contended CPU: compare at the same priority.
    os.environ.setdefault("RAY_worker_niceness", "0")
    if args.memory_child:
        return memory_child(root, args.memory_child, args)
    if not args.skip_efficiency:
        efficiency(root, args)
    if not args.skip_memory:
        make_corpus(root, max(args.memory_sizes))
        make_teacher(root)
        small, large = (peak_memory(root, n, args) for n in args.memory_sizes)
        emit(figure="peak_memory_ratio", images=list(args.memory_sizes),
             tree_pss_ratio=round(large["tree_pss_mib"] / small["tree_pss_mib"], 3),
             driver_rss_ratio=round(large["driver_peak_rss_mib"] / small["driver_peak_rss_mib"], 3),
             tree_pss_mib=[round(small["tree_pss_mib"]), round(large["tree_pss_mib"])],
             driver_peak_rss_mib=[round(small["driver_peak_rss_mib"]), round(large["driver_peak_rss_mib"])],
             seconds=[small["seconds"], large["seconds"]], goal="<= 1.25")


if __name__ == "__main__":
    main()
