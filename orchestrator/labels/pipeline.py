"""Pseudo-label an OOD corpus with a teacher on Ray Data, into the content-addressed label store.

Pipeline: image paths → decode in tasks → `map_batches(TeacherActor, compute=ActorPoolStrategy(size=N),
num_gpus=G)` → parquet shards. It streams (the corpus is never held whole in memory), writes into a
temporary folder, writes the manifest last and renames the folder into place: a crash leaves no entry
that looks complete, and a concurrent request for the same key waits on a lock and reuses the result.
"""
from __future__ import annotations

import gc
import itertools
import json
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.core.atomic import is_no_space, no_space_error
from orchestrator.core.console import HARMLESS_RAY_LINES, is_verbose, note, restyle_logger, stderr_without
from orchestrator.core.label_format import shard_checksums, shard_problems
from orchestrator.core.masks import encode_png
from orchestrator.labels.store import LabelStore

CONF_BINS = 10
TMP_PREFIX = "."  # temp folders are hidden: `.<key>.tmp-<random>` beside the entries


@dataclass(frozen=True)
class LabelingJob:
    store: LabelStore
    key_inputs: dict[str, Any]
    items: list[tuple[str, str]]          # (image_id, absolute image path)
    teacher_spec: dict[str, Any]          # TeacherSpec fields (plain, so it ships to actors)
    vocabulary: dict[str, Any]            # Vocabulary.to_dict()
    actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    batch_size: int = 64
    max_broken_share: float = 0.05
    # Ground-truth mask per item (None = none), for the teacher-IoU diagnostic only. Empty = look for the
    # VOC layout's `<corpus>/SegmentationClass/<stem>.png` beside `<corpus>/JPEGImages/<stem>.<ext>`.
    masks: tuple[str | None, ...] = ()
    label_noise: float = 0.0              # teacher.label_noise: share of object segments relabeled (labels/noise.py)


@dataclass(frozen=True)
class LabelingOutcome:
    key: str
    path: str
    images: int
    labeled: int
    rejected: int
    reused: bool
    seconds: float

    def summary(self) -> dict[str, Any]:
        rate = self.labeled / self.seconds if self.seconds > 0 and not self.reused else 0.0
        return {"cache_key": self.key, "path": self.path, "images": self.images, "labeled": self.labeled,
                "reused": self.reused, "rejected": self.rejected, "seconds": round(self.seconds, 2),
                "images_per_s": round(rate, 1)}


def decode_batch(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """Ray Data task: read and decode images; a broken file becomes a row with `error` set."""
    from orchestrator.core.images import SampleError, load_image

    images, errors = [], []
    for path in batch["path"]:
        try:
            images.append(load_image(str(path)))
            errors.append("")
        except SampleError as err:
            images.append(np.zeros((1, 1, 3), np.uint8))
            errors.append(str(err))
    return {"image_id": batch["image_id"], "image": _ragged(images), "error": np.array(errors, dtype=object)}


def _ragged(arrays: list[np.ndarray]) -> np.ndarray:
    out = np.empty(len(arrays), dtype=object)
    out[:] = arrays
    return out


class TeacherActor:
    """Holds one teacher (loaded once per actor) and labels batches of decoded images."""

    def __init__(self, teacher_spec: dict[str, Any], vocabulary: dict[str, Any], threads: int,
                 label_noise: float = 0.0):
        import torch

        from orchestrator.core.nodes import this_node
        from orchestrator.core.vocab import Vocabulary
        from orchestrator.teachers import TeacherSpec, build_teacher

        torch.set_num_threads(max(1, threads))
        self.vocab = Vocabulary.from_dict(vocabulary)
        self.teacher = build_teacher(TeacherSpec(**teacher_spec), self.vocab)
        self.node = this_node()   # recorded per row: which nodes labeled (the manifest lists them)
        self.label_noise = label_noise

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        if "image" not in batch:  # no CPUs left for decode tasks: decode here (see decode_cpus)
            batch = decode_batch(batch)
        n = len(batch["image_id"])
        labels: list[bytes] = [b""] * n
        confs: list[bytes] = [b""] * n
        class_pixels = np.zeros((n, self.vocab.num_classes), np.int64)
        hists = np.zeros((n, CONF_BINS), np.int64)
        by_shape: dict[tuple, list[int]] = {}
        for i, (img, err) in enumerate(zip(batch["image"], batch["error"])):
            if not err:
                by_shape.setdefault(tuple(np.asarray(img).shape), []).append(i)
        for rows in by_shape.values():  # the teacher takes same-size batches
            stack = np.stack([np.asarray(batch["image"][i]) for i in rows])
            pred, conf = self.teacher.predict(stack)
            conf_u8 = np.clip(np.rint(conf * 255), 0, 255).astype(np.uint8)
            for j, i in enumerate(rows):
                label = self._weakened(pred[j], str(batch["image_id"][i]))
                labels[i] = encode_png(label)
                confs[i] = encode_png(conf_u8[j])
                class_pixels[i] = np.bincount(label.ravel(), minlength=self.vocab.num_classes)[: self.vocab.num_classes]
                hists[i] = np.histogram(conf[j], bins=CONF_BINS, range=(0.0, 1.0))[0]
        return {"image_id": batch["image_id"], "label": np.array(labels, dtype=object),
                "confidence": np.array(confs, dtype=object), "error": batch["error"],
                "class_pixels": list(class_pixels), "conf_hist": list(hists),
                "node": np.array([self.node] * n, dtype=object)}

    def _weakened(self, label: np.ndarray, image_id: str) -> np.ndarray:
        if self.label_noise <= 0:
            return label
        from orchestrator.labels.noise import corrupt_label

        return corrupt_label(label, self.label_noise, self.vocab.num_classes, image_id)


def run_labeling(job: LabelingJob, progress=None) -> LabelingOutcome:
    """Label the job's corpus unless its key is already stored (then reuse). Needs ray.init().
    `progress`: a core.progress factory for the labeling bar (default silent)."""
    start = time.time()
    store = job.store
    with store.lock():
        if store.is_complete() and not shard_problems(store.root):   # a damaged entry is relabeled
            m = store.manifest()
            return LabelingOutcome(store.key, str(store.root), m["images"], m["labeled"], m["rejected"],
                                   True, time.time() - start)
        _remove_leftovers(store)  # we hold the key's lock: any temp folder of this key is a dead run's
        tmp = store.root.parent / f"{TMP_PREFIX}{store.key}.tmp-{uuid.uuid4().hex[:8]}"
        full = False
        try:
            manifest = _label_into(job, tmp, start, progress)
            if store.root.exists():  # a torn leftover without manifest: replace it
                shutil.rmtree(store.root)
            tmp.rename(store.root)
        except Exception as exc:
            if not is_no_space(exc):
                raise
            full = True
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if full:   # raised here, not in `except`: the failed run's frames (and its teacher actors) are let go
        gc.collect()
        raise no_space_error(store.root.parent, f"labeling {len(job.items)} OOD images",
                             "run the same command again (finished keys are reused)")
    return LabelingOutcome(store.key, str(store.root), manifest["images"], manifest["labeled"],
                           manifest["rejected"], False, time.time() - start)


def _label_into(job: LabelingJob, tmp: Path, start: float, progress=None) -> dict[str, Any]:
    """Shards, diagnostics and, last, the manifest, into the temp folder `tmp`."""
    from orchestrator.core.progress import silent

    with (progress or silent)(f"labeling on {job.actors} actor(s)", len(job.items), "image") as bar:
        tally = _write_shards(job, tmp / "shards", bar)
    pipeline_seconds = time.time() - start
    manifest = _manifest(job, tally, pipeline_seconds)
    manifest["shards"] = shard_checksums(tmp)   # a reader finds a shard truncated or changed later
    _check_broken_share(job, manifest)  # before committing: a bad corpus must not become a cache hit
    began = time.time()
    manifest["diagnostics"] = _write_diagnostics(job, tmp, manifest, tally)
    manifest["timing"] = {"pipeline_seconds": round(pipeline_seconds, 2),
                          "diagnostics_seconds": round(time.time() - began, 2)}
    manifest["seconds"] = round(time.time() - start, 2)
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))  # last: marks the entry complete
    return manifest


def _remove_leftovers(store: LabelStore) -> None:
    for old in store.root.parent.glob(f"{TMP_PREFIX}{store.key}.tmp-*"):
        shutil.rmtree(old, ignore_errors=True)
    if store.root.exists():  # an entry without a manifest never completed; one with damaged shards is rebuilt
        shutil.rmtree(store.root, ignore_errors=True)


def decode_cpus(cluster_cpus: float, actors: int, cpus_per_actor: float) -> float:
    """CPUs reserved per decode task: 0.5 while the actor pool leaves that much free, else 0 = decode inside
    the actors. A decode task that reserves CPUs the pool holds never starts, and the pipeline hangs (2 one-CPU
    actors on 2 CPUs); unreserved (num_cpus=0) tasks make Ray start a worker process per task (measured: 28
    workers, 28 images/s on 2 cores). Decoding is a few percent of the teacher's time, so the actors absorb it."""
    return 0.5 if cluster_cpus - actors * cpus_per_actor >= 0.5 else 0.0


def num_blocks(images: int, actors: int, batch_size: int) -> int:
    """Input blocks: a whole number of batches each, at least 4 per actor (the pool pulls blocks dynamically,
    so several per actor keep them all busy to the end), at most 200 (per-block overhead)."""
    return max(1, min(images, max(4 * actors, min(200, images // max(1, batch_size)))))


SHARD_ROWS = 1000   # rows per parquet file the driver writes (a few hundred KiB of PNG bytes)


def _dataset(job: LabelingJob):
    """decode → TeacherActor pool, as a lazy Ray Data dataset (nothing runs until it is iterated)."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False   # the caller shows one bar for the whole job
    _ray_data_console(ctx)
    rows = [{"image_id": i, "path": p} for i, p in job.items]
    ds = ray.data.from_items(rows, override_num_blocks=num_blocks(len(rows), job.actors, job.batch_size))
    cpus = decode_cpus(ray.cluster_resources().get("CPU", 0.0), job.actors, job.cpus_per_actor)
    if cpus > 0:
        ds = ds.map_batches(decode_batch, batch_size=job.batch_size, num_cpus=cpus)
    return ds.map_batches(
        TeacherActor,
        compute=ray.data.ActorPoolStrategy(size=job.actors),
        fn_constructor_kwargs={"teacher_spec": job.teacher_spec, "vocabulary": job.vocabulary,
                               "threads": max(1, int(job.cpus_per_actor)), "label_noise": job.label_noise},
        batch_size=job.batch_size,
        num_cpus=job.cpus_per_actor,
        num_gpus=job.gpus_per_actor,
    )


def _ray_data_console(ctx) -> None:
    """What Ray Data prints on this console: its warnings and errors as our `warning:`/`error:` lines, as they
    come (e.g. an actor pool that cannot be placed: "Cluster resources are not enough to run any task from
    ActorPoolMapOperator[...]"); its INFO lines (execution start, plan, end) only with --verbose. Its files
    under the Ray session keep every level."""
    import logging

    ctx.print_on_execution_start = is_verbose()
    restyle_logger("ray.data")
    if not is_verbose():   # its bars are off on purpose (the caller shows one): its warning saying so is no news
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


FIRST_BATCH_PATIENCE_S = 60.0   # no labeled batch after this long: say what the pool waits for


def _first_batch(batches, job: LabelingJob):
    """The first labeled batch (None for an empty corpus). The actor pool starts with it, and this process's
    Ray core then flags a harmless detail of Ray Data's actors in red on stderr (core.console.HARMLESS_RAY_LINES):
    dropped there, every other line passes at once. When it is long in coming, one line says what the pool
    waits for."""
    timer = threading.Timer(FIRST_BATCH_PATIENCE_S, _say_pool_waits, args=(job,))
    timer.daemon = True
    timer.start()
    try:
        with stderr_without(HARMLESS_RAY_LINES):
            return next(batches, None)
    finally:
        timer.cancel()


def _say_pool_waits(job: LabelingJob) -> None:
    """One line: are the teacher's actors waiting to be placed (and for what), or placed and still busy?"""
    import ray

    wait = f"labeling: no labeled image yet after {FIRST_BATCH_PATIENCE_S:.0f} s"
    try:
        pending = _pending_teacher_actors()
    except Exception as err:   # a diagnostic only: the labeling goes on whatever it finds
        note(f"{wait}; Ray's state API could not say whether the teacher's actors are placed ({err})")
        return
    if not pending:
        note(f"{wait}: the teacher's {job.actors} actor(s) are placed, and still loading the teacher or labeling "
             f"the first batch")
        return
    free, total = ray.available_resources(), ray.cluster_resources()
    gpus = f" + {job.gpus_per_actor:g} GPU" if job.gpus_per_actor else ""
    note(f"{wait}: {pending} of the teacher's {job.actors} actor(s) wait to be placed; each needs "
         f"{job.cpus_per_actor:g} CPU{gpus}, and Ray has {free.get('CPU', 0):g} of {total.get('CPU', 0):g} CPU(s) "
         f"and {free.get('GPU', 0):g} of {total.get('GPU', 0):g} GPU(s) free (other work holds them, or a cluster "
         f"is still adding nodes)")


def _pending_teacher_actors() -> int:
    from ray.util.state import list_actors

    # Ray's state API returns 100 entries unless told; 10,000 is the most its server gives (a pool never nears it)
    actors = list_actors(filters=[("state", "=", "PENDING_CREATION")], limit=10_000, raise_on_missing_output=False)
    return sum("TeacherActor" in (a.class_name or "") for a in actors)


def _write_shards(job: LabelingJob, out: Path, bar):
    """Stream the labeled rows to this process: write them as parquet shards of SHARD_ROWS rows and tally
    what the manifest and the diagnostics need on the way, in one pass."""
    from orchestrator.labels.tally import Tally

    names = [c["name"] for c in job.vocabulary["classes"]]
    tally = Tally.for_items(names, CONF_BINS, [i for i, _ in job.items], _ground_truth_paths(job))
    out.mkdir(parents=True, exist_ok=True)
    pending: list[dict] = []
    batches = iter(_dataset(job).iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2))
    first = _first_batch(batches, job)
    for batch in itertools.chain([first] if first is not None else [], batches):
        tally.add(batch)
        pending.append(batch)
        bar.update(len(batch["image_id"]))
        if sum(len(b["image_id"]) for b in pending) >= SHARD_ROWS:
            _write_shard(pending, out / f"part-{len(list(out.iterdir())):05d}.parquet")
            pending = []
    if pending:
        _write_shard(pending, out / f"part-{len(list(out.iterdir())):05d}.parquet")
    return tally


def _write_shard(batches: list[dict], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {"image_id": pa.string(), "label": pa.binary(), "confidence": pa.binary(), "error": pa.string(),
               "class_pixels": pa.list_(pa.int64()), "conf_hist": pa.list_(pa.int64()), "node": pa.string()}
    data = {k: [] for k in columns}
    for batch in batches:
        for k in columns:
            values = batch[k]
            data[k] += [np.asarray(v).tolist() for v in values] if k in ("class_pixels", "conf_hist") else \
                [v if isinstance(v, bytes) else str(v) for v in values]
    table = pa.table({k: pa.array(v, type=columns[k]) for k, v in data.items()})
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def _manifest(job: LabelingJob, tally, seconds: float) -> dict[str, Any]:
    return {"key": job.store.key, "key_inputs": job.key_inputs, **tally.manifest_fields(),
            "seconds": round(seconds, 2)}


def _ground_truth_paths(job: LabelingJob) -> dict[str, str]:
    """image_id → mask path for the items that have ground truth (explicit, or found by the VOC layout)."""
    if job.masks:
        return {i: m for (i, _), m in zip(job.items, job.masks) if m}
    found = {}
    for image_id, path in job.items:
        p = Path(path)
        if p.parent.name == "JPEGImages":
            mask = p.parent.parent / "SegmentationClass" / f"{p.stem}.png"
            if mask.is_file():
                found[image_id] = str(mask)
    return found


def _write_diagnostics(job: LabelingJob, entry: Path, manifest: dict[str, Any], tally) -> dict[str, Any]:
    """Plots and numbers into `<entry>/diagnostics/`, from what the tally kept while labeling: a fixed handful
    of images (overlays) and the teacher's IoU on a bounded slice with ground truth."""
    from orchestrator.core.images import SampleError, load_image, load_mask
    from orchestrator.core.masks import decode_png
    from orchestrator.labels.diagnostics import Sample, write_diagnostics

    paths = dict(job.items)
    samples = []
    for image_id in tally.overlay_ids():
        label, conf = (decode_png(b) for b in tally.kept[image_id])
        mask = tally.overlay_masks.get(image_id)
        try:
            gt = load_mask(mask) if mask else None
        except SampleError:
            gt = None
        samples.append(Sample(image_id, load_image(paths[image_id]), label, conf, gt))
    share = list(manifest["diagnostics"]["class_pixel_share"].values())
    return write_diagnostics(entry / "diagnostics", names=tally.names, class_pixel_share=share,
                             confidence_histogram=manifest["diagnostics"]["confidence_histogram"],
                             samples=samples, ground_truth=tally.score)


def _check_broken_share(job: LabelingJob, manifest: dict[str, Any]) -> None:
    from orchestrator.core.errors import UserError

    if manifest["images"] and manifest["rejected"] / manifest["images"] > job.max_broken_share:
        first = manifest["rejected_images"][0]
        raise UserError(f"{manifest['rejected']} of {manifest['images']} OOD images could not be read "
                        f"(more than {job.max_broken_share:.0%}), e.g. {first['image_id']}: {first['error']}. "
                        f"Fix: repair or remove them (see {job.store.manifest_path}), or check ood.root.")
