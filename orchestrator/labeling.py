"""Pseudo-label an OOD corpus with a teacher on Ray Data, into the content-addressed label store.

Pipeline: image paths → decode in tasks → `map_batches(TeacherActor, compute=ActorPoolStrategy(size=N),
num_gpus=G)` → parquet shards. It streams (the corpus is never held whole in memory), writes into a
temporary folder, writes the manifest last and renames the folder into place: a crash leaves no entry
that looks complete, and a concurrent request for the same key waits on a lock and reuses the result.
"""
from __future__ import annotations

import json
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.label_cache import LabelStore, encode_png

CONF_BINS = 10


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
    from orchestrator.data.voc import SampleError, load_image

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

    def __init__(self, teacher_spec: dict[str, Any], vocabulary: dict[str, Any], threads: int):
        import torch

        from orchestrator.teachers import TeacherSpec, build_teacher
        from orchestrator.vocab import Vocabulary

        torch.set_num_threads(max(1, threads))
        self.vocab = Vocabulary.from_dict(vocabulary)
        self.teacher = build_teacher(TeacherSpec(**teacher_spec), self.vocab)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
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
                labels[i] = encode_png(pred[j])
                confs[i] = encode_png(conf_u8[j])
                class_pixels[i] = np.bincount(pred[j].ravel(), minlength=self.vocab.num_classes)[: self.vocab.num_classes]
                hists[i] = np.histogram(conf[j], bins=CONF_BINS, range=(0.0, 1.0))[0]
        return {"image_id": batch["image_id"], "label": np.array(labels, dtype=object),
                "confidence": np.array(confs, dtype=object), "error": batch["error"],
                "class_pixels": list(class_pixels), "conf_hist": list(hists)}


def run_labeling(job: LabelingJob) -> LabelingOutcome:
    """Label the job's corpus unless its key is already stored (then reuse). Needs ray.init()."""
    start = time.time()
    store = job.store
    with store.lock():
        if store.is_complete():
            m = store.manifest()
            return LabelingOutcome(store.key, str(store.root), m["images"], m["labeled"], m["rejected"],
                                   True, time.time() - start)
        tmp = store.root.parent / f".{store.key}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            _write_shards(job, tmp / "shards")
            manifest = _manifest(job, tmp / "shards", time.time() - start)
            _check_broken_share(job, manifest)  # before committing: a bad corpus must not become a cache hit
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
            if store.root.exists():  # a torn leftover without manifest: replace it
                shutil.rmtree(store.root)
            tmp.rename(store.root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return LabelingOutcome(store.key, str(store.root), manifest["images"], manifest["labeled"],
                           manifest["rejected"], False, time.time() - start)


def _write_shards(job: LabelingJob, out: Path) -> None:
    import ray

    blocks = max(4 * job.actors, min(200, len(job.items) // max(1, job.batch_size)))
    rows = [{"image_id": i, "path": p} for i, p in job.items]
    ds = ray.data.from_items(rows, override_num_blocks=max(1, min(blocks, len(rows))))
    ds = ds.map_batches(decode_batch, batch_size=job.batch_size, num_cpus=0.5)
    ds = ds.map_batches(
        TeacherActor,
        compute=ray.data.ActorPoolStrategy(size=job.actors),
        fn_constructor_kwargs={"teacher_spec": job.teacher_spec, "vocabulary": job.vocabulary,
                               "threads": max(1, int(job.cpus_per_actor))},
        batch_size=job.batch_size,
        num_cpus=job.cpus_per_actor,
        num_gpus=job.gpus_per_actor,
    )
    ds.write_parquet(str(out))


def _manifest(job: LabelingJob, shards: Path, seconds: float) -> dict[str, Any]:
    import pyarrow.parquet as pq

    table = pq.read_table(shards, columns=["image_id", "error", "class_pixels", "conf_hist"])
    errors = table.column("error").to_pylist()
    ids = table.column("image_id").to_pylist()
    rejected = [{"image_id": i, "error": e} for i, e in zip(ids, errors) if e]
    ok = [k for k, e in enumerate(errors) if not e]
    pixels = np.array(table.column("class_pixels").to_pylist(), np.int64)[ok].sum(axis=0) if ok else None
    hist = np.array(table.column("conf_hist").to_pylist(), np.int64)[ok].sum(axis=0) if ok else None
    names = [c["name"] for c in job.vocabulary["classes"]]
    share = (pixels / max(1, pixels.sum())).round(5).tolist() if pixels is not None else []
    return {
        "key": job.store.key, "key_inputs": job.key_inputs, "images": len(ids), "labeled": len(ok),
        "rejected": len(rejected), "rejected_images": rejected, "seconds": round(seconds, 2),
        "diagnostics": {"class_pixel_share": dict(zip(names, share)),
                        "confidence_histogram": hist.tolist() if hist is not None else [],
                        "confidence_bins": CONF_BINS},
    }


def _check_broken_share(job: LabelingJob, manifest: dict[str, Any]) -> None:
    from orchestrator.errors import UserError

    if manifest["images"] and manifest["rejected"] / manifest["images"] > job.max_broken_share:
        first = manifest["rejected_images"][0]
        raise UserError(f"{manifest['rejected']} of {manifest['images']} OOD images could not be read "
                        f"(more than {job.max_broken_share:.0%}), e.g. {first['image_id']}: {first['error']}. "
                        f"Fix: repair or remove them (see {job.store.manifest_path}), or check ood.root.")
