"""The labeling path's ceilings, measured with a teacher that costs nothing. Prints one JSON line of figures.

    nice -n 5 python benchmarks/labeling_ceiling.py   # 2,000 × 64 px, 600 + 2,000 (textured) × 512 px, 1M rows
    python benchmarks/labeling_ceiling.py --rows 20000 --skip-absorb  # the store part only, small

1. Driver absorption. `FreeTeacher` is a plug-in teacher (docs/extending.md; teacher.kind =
   benchmarks.labeling_ceiling:FreeTeacher) that returns a constant mask at once; `TexturedTeacher` costs nothing
   either, but its masks' PNGs are as large as a real teacher's (at 512 px: label ~4 KB, confidence ~150 KB). Real
   JPEGs written with Pillow are labeled through the real path, `orchestrator.labels.job.ensure_labels` (what
   `run.py label` calls), with ood.root = their folder, a fresh cache, and Ray started once by
   `orchestrator.runtime.init_ray`. Measured in this process, the driver: images/s end to end; its CPU seconds over
   the whole call (getrusage before and after) and by phase, marked by a stand-in progress bar (setup; start-up
   until the first labeled batch; streaming; finish: checksums, manifest, diagnostics); its CPU per image while the
   batches stream in (first batch → last shard written), by thread; and its main thread's CPU in Ray Data's
   iterator, the tally and the shard writer (wrapped, not changed). The driver's ceiling is 1 / (streaming CPU-s
   per image), in images/s per core. The window also holds what the driver spends per second whatever the rate
   (Ray Data's scheduling loop, Ray's threads): when the actors are slower than the driver, the ceiling is a lower
   bound. Goal: >= 500 images/s at 512 px (about 50 GPUs of a SED-class teacher at ~10 images/s/GPU).
2. The label store at --rows rows (1,000,000). Rows are simulated, the parquet is real: the store's own shard writer
   (labels.pipeline._write_shard, batches gathered to SHARD_ROWS rows as `_write_shards` does) and a manifest built
   as the writer builds it (Tally, `_manifest`, shard checksums, written last), with unique 64 px masks whose PNGs
   are about as large as textseg's on `shapes` (~2.8 KB a row; textseg's: ~2.5 KB). The corpus is a list file of
   --rows paths; only the --subset images a trial draws exist as files. In a fresh process: the manifest's size,
   and the time and peak RSS to load it; then a trial's path to its first OOD batch with ood.num_images=--subset:
   build_plan (list the corpus, take the seeded subset) → make_trial_input → make_sampler (the shards' checksums,
   the label table) → StreamSampler.ood_batch, each stage timed, with the peak and retained RSS. Python, torch and
   Ray Train start-up are not counted (they do not grow with the store). Goal: first OOD batch <= 10 s at 1M rows.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FREE = "benchmarks.labeling_ceiling:FreeTeacher"
TEXTURED = "benchmarks.labeling_ceiling:TexturedTeacher"
# A tiny generated dataset: the run needs one for its vocabulary and ID splits; the OOD corpus is ours (ood.root).
TINY_DATASET = {"data.num_train": 20, "data.num_val": 4, "data.num_test": 0, "data.num_ood": 8, "data.num_source": 8}
MASK_PX = 64          # the store's masks (part 2)
GOAL_ABSORB = 500     # images/s at 512 px
GOAL_FIRST_BATCH = 10.0   # seconds at 1M rows


# ---- the stand-in teachers (imported by name in the labeling actors: keep this module's top level light) ----------

class FreeTeacher:
    """Costs no compute: every pixel background, at confidence 1 (views of one scalar: it allocates nothing)."""
    pretrained_kind = "none"   # no weights: teacher.pretrained stays empty

    def __init__(self, spec, vocabulary):
        pass

    def predict(self, images):
        shape = images.shape[:3]
        return np.broadcast_to(np.uint8(0), shape), np.broadcast_to(np.float32(1.0), shape)


class TexturedTeacher(FreeTeacher):
    """Costs (almost) no compute, but its masks compress like a real teacher's: shapes in the labels, a noisy
    confidence. Made once per image size; each call stamps a counter into the first pixels, so that no two rows are
    equal (parquet would otherwise store a repeated value once)."""

    def __init__(self, spec, vocabulary):
        self.made: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self.count = int.from_bytes(os.urandom(4), "little") << 20   # distinct per actor

    def predict(self, images):
        b, h, w = images.shape[:3]
        if (h, w) not in self.made:
            label, conf = textured_mask(h, w, np.random.default_rng(h * 7919 + w))
            self.made[(h, w)] = (label, conf.astype(np.float32) / 255)
        label, conf = (np.repeat(a[None], b, axis=0) for a in self.made[(h, w)])
        for i in range(b):
            self.count += 1
            conf[i, 0, :8] = np.frombuffer(self.count.to_bytes(8, "little"), np.uint8) / 255
        return label, conf


def textured_mask(h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(labels of 1-3 disks and boxes, classes 1-3; confidence uint8, smooth, lower at edges, noisy)."""
    from PIL import Image

    yy, xx = np.mgrid[0:h, 0:w]
    label = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = int(rng.integers(h // 8, h - h // 8)), int(rng.integers(w // 8, w - w // 8))
        r = int(rng.integers(max(2, h // 16), max(3, h // 4)))
        inside = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) if rng.random() < 0.5 else \
            (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
        label[inside] = rng.integers(1, 4)
    coarse = Image.fromarray((rng.random((8, 8)) * 255).astype(np.uint8))
    smooth = np.asarray(coarse.resize((w, h), Image.BILINEAR), np.float32) / 255
    edge = np.zeros((h, w), bool)
    edge[1:] |= label[1:] != label[:-1]
    edge[:, 1:] |= label[:, 1:] != label[:, :-1]
    conf = 150 + 90 * smooth - 60 * edge + rng.normal(0, 2.5, (h, w))
    return label, np.clip(np.rint(conf), 0, 255).astype(np.uint8)


# ---- measuring this process ----------------------------------------------------------------------------------------

def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)   # every thread of the process, exited ones too
    return usage.ru_utime + usage.ru_stime


def thread_cpu() -> dict[int, tuple[str, float]]:
    """tid → (name, CPU seconds) of this process's live threads: Python's name where Python knows the thread,
    else the kernel's (Ray's C++ threads name themselves)."""
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in map(int, os.listdir("/proc/self/task")):
        try:
            text = Path(f"/proc/self/task/{tid}/stat").read_text()
            fields = text[text.rindex(")") + 2:].split()   # after "(comm)": state is field 3, utime 14, stime 15
            cpu = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, ValueError, IndexError):   # the thread ended while it was read (Ray Data's end theirs)
            continue
        out[tid] = (names.get(tid) or text[text.index("(") + 1:text.rindex(")")], cpu)
    return out


def thread_groups(before: dict, after: dict, total: float) -> dict[str, float]:
    """CPU seconds between two thread_cpu() snapshots, by thread name without its numbers; threads that ended in
    between are only in `total` (getrusage), so they show as `exited`."""
    groups: dict[str, float] = {}
    for tid, (name, cpu) in after.items():
        key = "main" if tid == os.getpid() else re.split(r"[-_ ]?\d", name, maxsplit=1)[0] or name
        groups[key] = groups.get(key, 0.0) + cpu - before.get(tid, (name, 0.0))[1]
    groups["exited"] = total - sum(groups.values())
    return dict(sorted(groups.items(), key=lambda kv: -kv[1]))


def rss_kib(field: str = "VmRSS") -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+)", text, re.M).group(1))


def reset_peak_rss() -> None:
    """VmHWM := VmRSS (Linux: '5' to clear_refs), so that a later VmHWM is the peak of what follows."""
    Path("/proc/self/clear_refs").write_text("5")


class Stages:
    """Seconds spent in wrapped functions, by name, on `clock` (wall time, or the calling thread's CPU time);
    wrapping does not change what they do."""

    def __init__(self, clock=time.perf_counter):
        self.seconds: dict[str, float] = {}
        self.clock = clock

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            start = self.clock()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + self.clock() - start
        return timed


class TimedBatches:
    """A Ray Data dataset whose iter_batches() times, on `stages`, each hand-over of a batch to this thread
    (the first apart: it starts the execution)."""

    def __init__(self, dataset, stages: Stages):
        self.dataset, self.stages = dataset, stages

    def iter_batches(self, **kwargs):
        batches = iter(self.dataset.iter_batches(**kwargs))
        take = self.stages.wrap("iterator_first", next)   # the first starts the execution: a fixed cost
        while (batch := take(batches, None)) is not None:
            take = self.stages.wrap("iterator", next)
            yield batch


class Phases:
    """A core.progress stand-in (the factory and its bar) that marks the labeling phases: `open` when the labeling
    bar is made (just before labels.pipeline._write_shards), `first` at the first labeled batch, `end` when the
    bar closes (the last shard written), each as (wall, this process's CPU, images so far, its threads' CPU)."""

    def __init__(self):
        self.marks: dict[str, tuple] = {}
        self.done = 0

    def _mark(self, name: str) -> None:
        self.marks[name] = (time.perf_counter(), cpu_seconds(), self.done, thread_cpu())

    def __call__(self, label: str, total: float, unit: str = "it") -> "Phases":
        self._mark("open")
        return self

    def __enter__(self) -> "Phases":
        return self

    def __exit__(self, *exc) -> None:
        self._mark("end")

    def update(self, n: float = 1) -> None:
        self.done += int(n)
        if "first" not in self.marks:
            self._mark("first")

    def set(self, done: float) -> None:
        self.update(done - self.done)

    def close(self) -> None:
        pass


# ---- part 1: how fast the driver absorbs labeled images -----------------------------------------------------------

def write_jpegs(folder: Path, n: int, size: int, seed: int = 0) -> None:
    """n real JPEGs (smooth colour fields with a few shapes), kept if already there."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        path = folder / f"img_{i:06d}.jpg"
        if path.is_file():
            continue
        img = Image.fromarray((rng.random((4, 4, 3)) * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
        draw = ImageDraw.Draw(img)
        for _ in range(3):
            x, y = rng.integers(0, size * 3 // 4, 2).tolist()
            r = int(rng.integers(size // 16, size // 4))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x, y, x + r, y + r),
                                                                    fill=tuple(rng.integers(0, 256, 3).tolist()))
        img.save(path, quality=90)


def tiny_dataset(workdir: Path) -> Path:
    """A small generated `shapes` dataset (no Ray): the vocabulary and ID splits the runs need."""
    from orchestrator.core.config import build_config
    from orchestrator.data.plan import dataset_root

    return dataset_root(build_config(TINY_DATASET, "benchmark"), workdir / "data")


def absorb(workdir: Path, images: int, size: int, kind: str = FREE, actors: int = 1, batch_size: int = 64) -> dict:
    """Label `images` JPEGs of `size` px through ensure_labels in a fresh cache (Ray must be started). The driver's
    CPU over the whole call (getrusage before and after), by phase, and per image while the labels stream in."""
    from orchestrator.core.config import build_config
    from orchestrator.labels import pipeline
    from orchestrator.labels.job import ensure_labels
    from orchestrator.labels.tally import Tally

    real_dataset = pipeline._dataset
    corpus = workdir / f"corpus{size}-{images}"
    write_jpegs(corpus, images, size)
    cache = workdir / f"cache-{uuid.uuid4().hex[:8]}"   # fresh: a cached entry would be reused, not labeled
    cfg = build_config({**TINY_DATASET, "data.root": str(tiny_dataset(workdir)), "ood.root": str(corpus),
                        "teacher.kind": kind, "teacher.batch_size": batch_size, "resources.teacher_actors": actors},
                       "benchmark")
    phases, main = Phases(), Stages(time.thread_time)   # the shard writer and the tally run in this thread
    reset_peak_rss()
    cpu_start, start = cpu_seconds(), time.perf_counter()
    try:
        with mock.patch.object(pipeline, "_write_shard", main.wrap("write_shard", pipeline._write_shard)), \
                mock.patch.object(Tally, "add", main.wrap("tally", Tally.add)), \
                mock.patch.object(pipeline, "_dataset", lambda job: TimedBatches(real_dataset(job), main)):
            outcome = ensure_labels(cfg, cache, log=lambda line: None, progress=phases)
        wall, cpu_end, peak = time.perf_counter() - start, cpu_seconds(), rss_kib("VmHWM")
        manifest = json.loads((Path(outcome.path) / "manifest.json").read_text())
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    assert not outcome.reused and outcome.labeled == images, outcome
    (t_open, c_open, _, _), (t0, c0, n0, th0), (t1, c1, n1, th1) = (phases.marks[k] for k in ("open", "first", "end"))
    per_image = (c1 - c0) / (n1 - n0) if n1 > n0 else 0.0   # 0: a single batch, no window
    cpu = cpu_end - cpu_start
    return {"images": images, "px": size, "teacher": kind.rsplit(":", 1)[1], "actors": actors,
            "batch_size": batch_size, "seconds": round(wall, 2), "images_per_s": round(images / wall, 1),
            "first_batch_after_s": round(t0 - t_open, 2),
            "streaming_images_per_s": round((n1 - n0) / max(1e-9, t1 - t0), 1),
            "driver_cpu_s": round(cpu, 2), "driver_cpu_s_per_image": round(cpu / images, 5),
            # setup: the job and its cache key; startup: Ray Data's plan, the actors, the first batch;
            # streaming: the batches after the first, tallied and written as shards; finish: checksums, manifest,
            # the diagnostics' plots
            "driver_cpu_s_by_phase": {"setup": round(c_open - cpu_start, 2), "startup": round(c0 - c_open, 2),
                                      "streaming": round(c1 - c0, 2), "finish": round(cpu_end - c1, 2)},
            "driver_cpu_us_per_image_streaming": round(1e6 * per_image),
            "driver_ceiling_images_per_s_per_core": round(1 / per_image) if per_image > 0 else None,
            "streaming_cpu_us_per_image_by_thread": {k: round(1e6 * v / (n1 - n0)) for k, v in
                                                     thread_groups(th0, th1, c1 - c0).items()
                                                     if abs(v) >= 0.005} if n1 > n0 else {},
            "exited_threads": sorted({name for tid, (name, _) in th0.items() if tid not in th1}),
            # this thread's CPU taking the batches from Ray Data, tallying them and writing the shards (whole run)
            "main_thread_cpu_us_per_image": {k: round(1e6 * v / images) for k, v in main.seconds.items()},
            "driver_peak_rss_mib": round(peak / 1024),
            "parquet_bytes_per_row": round(sum(s["bytes"] for s in manifest["shards"].values()) / images)}


# ---- part 2: the label store at a million rows ---------------------------------------------------------------------

POOL = 64   # distinct mask patterns; every row's PNGs are made unique by a text chunk naming the row


def tagged(png: bytes, row: int) -> bytes:
    """`png` with a tEXt chunk `row` before its IEND chunk (its last 12 bytes): the same pixels, bytes unique to the
    row (parquet would store a repeated value once), and a reader's row can be told apart from every other."""
    data = b"row\0" + str(row).encode()
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data + struct.pack(">I", zlib.crc32(b"tEXt" + data))
    return png[:-12] + chunk + png[-12:]


def row_of(png: bytes) -> int:
    """The row a tagged PNG names."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(png))
    image.load()   # text chunks after the image data are read with it
    return int(image.text["row"])


def store_config(workdir: Path, rows: int, subset: int):
    """A trial's config: the tiny dataset, the --rows corpus list as ood.root, a subset of --subset images."""
    from orchestrator.core.config import build_config

    return build_config({**TINY_DATASET, "data.root": str(tiny_dataset(workdir)), "teacher.kind": FREE,
                         "ood.root": str(workdir / f"store{rows}" / "corpus" / "list.txt"), "ood.num_images": subset},
                        "benchmark")


def store_entry(cfg) -> Path:
    from orchestrator.labels.store import LabelStore
    from orchestrator.teachers.registry import folder_name

    cache = Path(cfg.ood.root).parent.parent / "cache"
    return LabelStore.at(cache, f"{folder_name(FREE)}-simulated").root


def build_store(cfg, rows: int) -> dict:
    """The corpus list (`rows` paths), the subset's image files, and the label entry of `rows` simulated rows,
    written by the store's writer; kept when a complete entry of that size is there. Returns figures."""
    from orchestrator.data.mixing import subsample_corpus

    listing, entry = Path(cfg.ood.root), store_entry(cfg)
    ids = [f"images/img_{i:07d}.jpg" for i in range(rows)]   # image ids are paths relative to the list's folder
    listing.parent.mkdir(parents=True, exist_ok=True)
    listing.write_text("\n".join(ids))
    jpegs = subset_jpegs()
    for n, image_id in enumerate(subsample_corpus(ids, cfg.ood.num_images, cfg.seed)):   # only these are read
        path = listing.parent / image_id
        path.parent.mkdir(exist_ok=True)
        if not path.is_file():
            path.write_bytes(jpegs[n % len(jpegs)])
    manifest = entry / "manifest.json"
    start = time.perf_counter()
    if not (manifest.is_file() and json.loads(manifest.read_text())["images"] == rows):
        shutil.rmtree(entry, ignore_errors=True)
        write_entry(cfg, entry, ids)
    shards = [p.stat().st_size for p in (entry / "shards").iterdir()]
    return {"rows": rows, "build_seconds": round(time.perf_counter() - start, 1), "shards": len(shards),
            "store_mib": round(sum(shards) / 2**20, 1), "bytes_per_row": round(sum(shards) / rows),
            "manifest_kib": round(manifest.stat().st_size / 1024, 1)}


def subset_jpegs() -> list[bytes]:
    """A few real 64 px JPEGs' bytes (the subset's files repeat them: only decoding them matters)."""
    import io

    from PIL import Image

    rng, out = np.random.default_rng(1), []
    for _ in range(16):
        buf = io.BytesIO()
        Image.fromarray((rng.random((MASK_PX, MASK_PX, 3)) * 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def write_entry(cfg, entry: Path, ids: list[str]) -> None:
    """Shards and manifest as labels.pipeline writes them: 64-row batches shaped like TeacherActor's output,
    gathered into shards of >= SHARD_ROWS rows, counted by a Tally, checksums and manifest last."""
    from orchestrator.core.label_format import shard_checksums
    from orchestrator.core.masks import encode_png
    from orchestrator.data.plan import teacher_vocabulary
    from orchestrator.data.voc import load_vocabulary
    from orchestrator.labels.pipeline import CONF_BINS, SHARD_ROWS, LabelingJob, _manifest, _write_shard
    from orchestrator.labels.store import LabelStore, corpus_fingerprint, key_inputs
    from orchestrator.labels.tally import Tally

    start = time.perf_counter()
    vocab = teacher_vocabulary(Path(cfg.data.root), load_vocabulary(cfg.data.root))
    k = vocab.num_classes
    rng = np.random.default_rng(0)
    pool = [textured_mask(MASK_PX, MASK_PX, rng) for _ in range(POOL)]
    pngs = [(encode_png(label), encode_png(conf)) for label, conf in pool]
    pixels = [np.bincount(label.ravel(), minlength=k)[:k] for label, _ in pool]
    hists = [np.histogram(conf / 255, bins=CONF_BINS, range=(0.0, 1.0))[0] for _, conf in pool]
    tally = Tally.for_items(list(vocab.names), CONF_BINS, ids, {})
    shards = entry / "shards"
    shards.mkdir(parents=True)
    pending, written = [], 0
    for first in range(0, len(ids), 64):
        rows = range(first, min(first + 64, len(ids)))
        labels = [tagged(pngs[i % POOL][0], i) for i in rows]
        confs = [tagged(pngs[i % POOL][1], i) for i in rows]
        batch = {"image_id": _objects(ids[first:first + len(rows)]), "label": _objects(labels),
                 "confidence": _objects(confs), "error": _objects([""] * len(rows)),
                 "class_pixels": [pixels[i % POOL] for i in rows], "conf_hist": [hists[i % POOL] for i in rows],
                 "node": _objects(["benchmark"] * len(rows))}
        tally.add(batch)
        pending.append(batch)
        if sum(len(b["image_id"]) for b in pending) >= SHARD_ROWS:
            _write_shard(pending, shards / f"part-{written:05d}.parquet")
            pending, written = [], written + 1
    if pending:
        _write_shard(pending, shards / f"part-{written:05d}.parquet")
    inputs = key_inputs(teacher_kind=FREE, weights_digest="none", arch="", templates="single", resolution=0,
                        sliding_window=False, vocabulary=vocab.to_dict(), corpus=corpus_fingerprint([cfg.ood.root]))
    job = LabelingJob(store=LabelStore(entry), key_inputs=inputs, items=[], teacher_spec={}, vocabulary=vocab.to_dict())
    manifest = _manifest(job, tally, time.perf_counter() - start)
    manifest["shards"] = shard_checksums(entry)
    manifest["timing"] = {"pipeline_seconds": manifest["seconds"], "diagnostics_seconds": 0.0}
    (entry / "manifest.json").write_text(json.dumps(manifest, indent=1))   # last: marks the entry complete


def _objects(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def first_ood_batch(cfg, entry: Path):
    """A trial's path from its start to its first OOD batch, as orchestrator.trial.run_trial and
    trainables.train_loop take it (rank 0 of 1, train.loader_workers 0). Returns (seconds by stage, the plan,
    the sampler, the batch): wall seconds, and this process's CPU seconds under `cpu`. No Ray: make_trial_input's
    node lookup is stubbed (it would start one)."""
    import pyarrow.parquet as pq

    from orchestrator import trial as trial_module
    from orchestrator.core import label_format
    from orchestrator.data.plan import build_plan
    from orchestrator.labels.job import LabelRequest
    from trainables.distributed import make_context
    from trainables.streams import BrokenSamples
    from trainables.train_loop import make_sampler

    wall, cpu = Stages(), Stages(cpu_seconds)   # both: on a busy machine the wall time is mostly waiting

    def timed(name: str, fn):
        return wall.wrap(name, cpu.wrap(name, fn))

    with ExitStack() as patches:
        patches.enter_context(mock.patch.object(trial_module, "this_node", lambda: "benchmark"))
        patches.enter_context(mock.patch.object(label_format, "verify_entry",
                                                timed("checksums", label_format.verify_entry)))
        patches.enter_context(mock.patch.object(pq, "read_table", timed("parquet_read", pq.read_table)))
        start = time.perf_counter()
        plan = timed("plan", build_plan)(cfg, entry.parent.parent)
        store = trial_module.label_store_for(cfg, {LabelRequest.from_config(cfg): str(entry)})
        trial = trial_module.make_trial_input(cfg, plan, store, None, mode="local")
        ctx = make_context("local", 0)
        sampler = timed("sampler", make_sampler)(trial, ctx, cfg.seed * 1000 + ctx.rank, BrokenSamples())
        sampler.reseed(0)
        batch = timed("ood_batch", sampler.ood_batch)(cfg.train.batch_size)
        total = time.perf_counter() - start
    return {"total": round(total, 3), **_by_stage(wall.seconds), "cpu": _by_stage(cpu.seconds)}, plan, sampler, batch


def _by_stage(s: dict[str, float]) -> dict[str, float]:
    """The stages of first_ood_batch; `label_table`: make_sampler's rest (building the table from the columns)."""
    out = {"plan": s["plan"], "checksums": s["checksums"], "parquet_read": s["parquet_read"],
           "label_table": s["sampler"] - s["checksums"] - s["parquet_read"], "ood_batch": s["ood_batch"]}
    return {k: round(v, 3) for k, v in out.items()}


def measure_store(workdir: Path, rows: int, subset: int) -> dict:
    """Run in a fresh process (so that earlier allocations hide nothing): the manifest, then a trial's first OOD
    batch, each with its peak RSS above what the process held before it."""
    # imported before the baseline (their cost does not grow with the store; a worker has torch already)
    import pyarrow.dataset  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import torch  # noqa: F401

    import orchestrator.trial  # noqa: F401
    import trainables.train_loop  # noqa: F401
    from orchestrator.labels.store import LabelStore

    cfg = store_config(workdir, rows, subset)
    entry = store_entry(cfg)
    before = rss_kib()
    reset_peak_rss()
    start = time.perf_counter()
    manifest = LabelStore(entry).manifest()
    manifest_s, manifest_peak = time.perf_counter() - start, rss_kib("VmHWM") - before
    before = rss_kib()
    reset_peak_rss()
    cpu = cpu_seconds()
    seconds, plan, sampler, batch = first_ood_batch(cfg, entry)
    cpu = cpu_seconds() - cpu
    assert len(plan.ood) == subset and manifest["labeled"] == rows
    return {"manifest_load_s": round(manifest_s, 4), "manifest_load_peak_rss_mib": round(manifest_peak / 1024, 1),
            "first_ood_batch_s": seconds["total"], "first_ood_batch_cpu_s": round(cpu, 2),
            "first_ood_batch_stages_s": seconds, "ood_batch_images": int(batch["o_w"].shape[0]),
            "label_table_rows": len(sampler.ood_labels.table),   # rows the reader holds for its subset
            "trial_peak_rss_mib": round((rss_kib("VmHWM") - before) / 1024),
            "trial_retained_rss_mib": round((rss_kib() - before) / 1024)}


def store_figures(workdir: Path, rows: int, subset: int) -> dict:
    cfg = store_config(workdir, rows, subset)
    built = build_store(cfg, rows)
    child = subprocess.run([sys.executable, __file__, "--measure-store", "--workdir", str(workdir), "--rows", str(rows),
                            "--subset", str(subset)], capture_output=True, text=True, env=_env())
    if child.returncode != 0:
        raise SystemExit(f"the store measurement failed:\n{child.stderr[-3000:]}")
    out = {**built, "subset": subset, **json.loads(child.stdout.strip().splitlines()[-1])}
    if rows != 1_000_000:   # every stage but the one batch reads the whole store: scaled linearly in rows
        f, batch = 1_000_000 / rows, out["first_ood_batch_stages_s"]["ood_batch"]
        out["linear_estimate_at_1m"] = {"first_ood_batch_s": round((out["first_ood_batch_s"] - batch) * f + batch, 1),
                                        "trial_peak_rss_mib": round(out["trial_peak_rss_mib"] * f),
                                        "store_mib": round(out["store_mib"] * f)}
    return out


# ---- the command ---------------------------------------------------------------------------------------------------

def _env() -> dict:
    """This process's environment with the repository on PYTHONPATH: Ray's workers import the teachers by name."""
    paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}


def absorb_figures(workdir: Path, args) -> list[dict]:
    import ray

    from orchestrator.runtime import init_ray

    os.environ.update(_env())   # before Ray starts: its workers inherit it
    init_ray(quiet=True)
    try:
        absorb(workdir, args.batch_size, 64, FREE, args.actors, args.batch_size)   # warm-up: first imports
        runs = [(args.small, args.small_px, FREE), (args.large, args.large_px, FREE)]
        if args.textured:
            runs.append((args.textured, args.large_px, TEXTURED))
        return [absorb(workdir, n, px, kind, args.actors, args.batch_size) for n, px, kind in runs]
    finally:
        ray.shutdown()


def goals(absorbed: list[dict], store: dict | None) -> dict:
    out = {}
    large = [a for a in absorbed if a["px"] >= 512]
    if large:
        ceiling = {a["teacher"]: a["driver_ceiling_images_per_s_per_core"] for a in large}
        out["driver_absorbs_500_per_s_at_512px"] = {"met": (ceiling.get("FreeTeacher") or 0) >= GOAL_ABSORB,
                                                    "ceiling_images_per_s_per_core": ceiling}
    if store:
        at_1m = store.get("linear_estimate_at_1m", store)["first_ood_batch_s"]
        out["first_ood_batch_10s_at_1m_rows"] = {"met": at_1m <= GOAL_FIRST_BATCH, "seconds": at_1m,
                                                 "measured_rows": store["rows"]}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", type=int, default=2000, help="images labeled at --small-px")
    p.add_argument("--small-px", type=int, default=64)
    p.add_argument("--large", type=int, default=600, help="images labeled at --large-px")
    p.add_argument("--large-px", type=int, default=512)
    p.add_argument("--actors", type=int, default=1, help="resources.teacher_actors (the default config's)")
    p.add_argument("--batch-size", type=int, default=64, help="teacher.batch_size")
    p.add_argument("--rows", type=int, default=1_000_000, help="rows of the simulated label store")
    p.add_argument("--subset", type=int, default=10_000, help="ood.num_images of the trial that reads it")
    p.add_argument("--skip-absorb", action="store_true")
    p.add_argument("--textured", type=int, default=2000,
                   help="images labeled by TexturedTeacher at --large-px (0 = none); several shards' worth, since "
                        "the writer's first shard of a size costs more (its memory is new)")
    p.add_argument("--skip-store", action="store_true")
    p.add_argument("--workdir", default="", help="images, dataset and store (default: a temp folder, removed)")
    p.add_argument("--measure-store", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))   # `benchmarks.labeling_ceiling` by name, as teacher.kind says
    os.environ.pop("RAY_ADDRESS", None)   # a private Ray: never a cluster this shell may point at
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="labeling-ceiling-")).resolve()
    if args.measure_store:
        print(json.dumps(measure_store(workdir, args.rows, args.subset)), flush=True)
        return
    load = [round(os.getloadavg()[0], 2)]
    try:
        absorbed = [] if args.skip_absorb else absorb_figures(workdir, args)
        store = None if args.skip_store else store_figures(workdir, args.rows, args.subset)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    load.append(round(os.getloadavg()[0], 2))
    print(json.dumps({"figure": "labeling_ceiling", "date": time.strftime("%F"), "cpus": os.cpu_count(),
                      "load_avg_1min": load, "absorb": absorbed, "store": store, "goals": goals(absorbed, store)}),
          flush=True)


if __name__ == "__main__":
    main()
