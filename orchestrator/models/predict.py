"""`run.py predict`: run a trained student on a folder (or a list) of images with Ray Data, into mask PNGs.

Pipeline: input paths → decode in tasks (a broken file becomes a row carrying its error, as in labeling) →
`map_batches(PredictActor, compute=ActorPoolStrategy(size=--actors), num_gpus=--gpus-per-actor)`. Each actor
loads the student once, from the file's bytes in the object store, and writes its own PNGs into the output
folder, so the driver is no funnel for pixels: only small rows (name, error, pixels per class) stream back,
and the driver counts them for the progress bar and the summary. Nothing holds all the images at once.

The output folder (--out) is written whole into a hidden `.<name>.tmp-<random>` beside it and renamed into
place only when complete; on any failure the temp folder is removed (no torn output is left):

    masks/<name>.png        palette PNG in the VOC colours: class ids, same H×W as the input
    overlays/<name>.png     (--overlays) the image and its coloured mask side by side (2W × H), rather than a
                            blend: nothing of the image is hidden and the mask keeps the exact VOC colours
    confidence/<name>.png   (--confidence) greyscale, round(255 · the winning class's softmax probability)
    predictions.json        written last: model URI and id, class names, counts (images, predicted, broken),
                            the broken files and why, pixels per class, seconds and images/s of the pipeline

<name> is the image's path relative to --images (for a list file: to its folder; a listed path outside that
folder: its file name), suffix replaced by .png; -1, -2, ... tell colliding names apart. Broken images are
skipped, counted and listed, never a failure of the whole command.

predict_inputs.py holds the pure decisions (inputs, names, refusals, the summary), predict_actor.py what runs
in an actor; this module runs the pipeline and puts the folder in place.
"""
from __future__ import annotations

import contextlib
import gc
import itertools
import json
import logging
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.core.atomic import is_no_space, no_space_error
from orchestrator.core.console import HARMLESS_RAY_LINES, Console, stderr_without
from orchestrator.core.errors import UserError
from orchestrator.labels.pipeline import decode_batch, decode_cpus, num_blocks
from orchestrator.models.predict_actor import PredictActor
from orchestrator.models.predict_inputs import (CONFIDENCE, MASKS, OVERLAYS, SUMMARY_FILE, InputImage,
                                                PredictionTally, check_out, check_pool, check_request,
                                                check_vocabulary, list_inputs, summary, temp_folder_for)

CPUS_PER_ACTOR = 1.0   # torch threads per actor too; more cores on CPU: more --actors


@dataclass(frozen=True)
class PredictRequest:
    model: str                       # models:/<id>, runs:/<run>/<path>, or a checkpoint folder / model.pt
    images: str                      # a folder (recursive) or a list file
    out: str
    overlays: bool = False
    confidence: bool = False
    data: str | None = None          # a dataset root whose classes the model must have
    actors: int = 1
    gpus_per_actor: float = 0.0
    batch_size: int = 32
    overwrite: bool = False
    tracking_uri: str | None = None  # None: MLFLOW_TRACKING_URI or ./mlflow.db
    quiet: bool = False
    ray_address: str | None = None


def run_predict(req: PredictRequest) -> dict[str, Any]:
    """Predict every image of `req.images` into `req.out`; returns the short summary the CLI prints.
    Every user mistake is refused before Ray starts and before anything is written."""
    import ray

    from orchestrator.models.resolve import resolve_model
    from orchestrator.runtime import init_ray
    from orchestrator.tracking.client import resolve_tracking_uri

    check_request(req.actors, req.gpus_per_actor, req.batch_size)
    model = resolve_model(req.model, req.tracking_uri or resolve_tracking_uri(None))
    check_vocabulary(req.model, model.class_names, req.data)
    out = check_out(req.out, req.overwrite)
    inputs = list_inputs(req.images, out)
    console = Console(req.quiet, sys.stderr)   # stdout holds only the JSON summary
    console.say(init_ray(quiet=req.quiet, address=req.ray_address))
    check_pool(req.actors, CPUS_PER_ACTOR, req.gpus_per_actor, ray.cluster_resources())
    console.say(f"predicting {len(inputs)} image(s) from {req.images} into {out}")
    tmp = temp_folder_for(out)
    full = False
    try:
        _make_temp_folder(tmp, req.out)
        doc = _predict_into(tmp, model, inputs, req, console.progress)
        _put_in_place(tmp, out)
    except Exception as exc:
        if not is_no_space(exc):
            raise
        full = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)   # gone after the rename; after a failure: nothing torn is left
    if full:   # raised here, not in `except`: the failed pipeline's frames (and its actors) are let go first
        gc.collect()
        raise no_space_error(out.parent, f"predicting {len(inputs)} images", "run the same command again")
    if doc["broken"]:
        console.say(f"{doc['broken']} image(s) could not be read and were skipped: see {out / SUMMARY_FILE}")
    return {"out": str(out), "model": req.model, "model_id": model.model_id, "images": doc["images"],
            "predicted": doc["predicted"], "broken": doc["broken"], "seconds": doc["seconds"],
            "images_per_s": doc["images_per_s"], "summary": str(out / SUMMARY_FILE)}


def _make_temp_folder(tmp: Path, shown: str) -> None:
    from orchestrator.runtime import joined_cluster

    try:
        tmp.mkdir(parents=True)
    except OSError as err:
        if is_no_space(err):
            raise
        raise UserError(f"--out {shown}: cannot create {tmp} ({err.strerror or err}). Fix: pass an --out in a "
                        f"folder you can write to.") from None
    if joined_cluster():   # a private local Ray is this machine alone: every actor sees the folder
        from orchestrator.preflight import ROOT_MARKER, check_shared_folders

        check_shared_folders({"out": tmp})   # actors on other nodes write there
        (tmp / ROOT_MARKER).unlink(missing_ok=True)   # its lasting marker is for cache roots, not outputs


def _put_in_place(tmp: Path, out: Path) -> None:
    """Rename the finished temp folder to --out; an existing --out (empty, or --overwrite) is moved aside first
    and deleted only once the new folder is in place."""
    if not out.exists():
        tmp.rename(out)
        return
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _predict_into(tmp: Path, model, inputs: list[InputImage], req: PredictRequest, progress) -> dict[str, Any]:
    """Run the pipeline, writing the PNGs into `tmp`, then predictions.json last."""
    start = time.monotonic()
    tally = PredictionTally(model.class_names)
    path_of = {item.name: item.path for item in inputs}
    with progress(f"predicting on {req.actors} actor(s)", len(inputs), "image") as bar, \
            _ray_data_console(req.quiet):
        for batch in _rows(_dataset(model.data, inputs, tmp, req)):
            for name, error, pixels in zip(batch["image_id"], batch["error"], batch["class_pixels"]):
                tally.add(str(name), path_of[str(name)], str(error), pixels)
            bar.update(len(batch["image_id"]))
    outputs = [MASKS] + [OVERLAYS] * req.overlays + [CONFIDENCE] * req.confidence
    doc = summary(req.model, model.model_id, req.images, len(inputs), tally, outputs, time.monotonic() - start)
    (tmp / SUMMARY_FILE).write_text(json.dumps(doc, indent=1))
    return doc


def _dataset(model_bytes: bytes, inputs: list[InputImage], tmp: Path, req: PredictRequest):
    """decode → PredictActor pool, as a lazy Ray Data dataset (nothing runs until it is iterated)."""
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False   # the driver shows one bar for the job
    rows = [{"image_id": item.name, "path": item.path} for item in inputs]
    ds = ray.data.from_items(rows, override_num_blocks=num_blocks(len(rows), req.actors, req.batch_size))
    cpus = decode_cpus(ray.cluster_resources().get("CPU", 0.0), req.actors, CPUS_PER_ACTOR)
    if cpus > 0:   # else the actors decode (labels.pipeline.decode_cpus says why)
        ds = ds.map_batches(decode_batch, batch_size=req.batch_size, num_cpus=cpus)
    return ds.map_batches(
        PredictActor,
        compute=ray.data.ActorPoolStrategy(size=req.actors),
        # a reference, not the bytes: a large student goes to each node once, through the object store
        fn_constructor_kwargs={"model": ray.put(model_bytes), "folder": str(tmp), "overlays": req.overlays,
                               "confidence": req.confidence, "threads": int(CPUS_PER_ACTOR)},
        batch_size=req.batch_size,
        num_cpus=CPUS_PER_ACTOR,
        num_gpus=req.gpus_per_actor,
    )


@contextlib.contextmanager
def _ray_data_console(quiet: bool):
    """Ray Data's own console lines (execution start, plan and end; "progress bars disabled", which is on
    purpose) say what the bar already says: only its warnings show, and with --quiet only its errors. All
    of them still go to Ray Data's log file."""
    import ray.data  # noqa: F401 - its import sets up the "ray.data" logger and its console handler

    consoles = [h for h in logging.getLogger("ray.data").handlers if h.name == "console"]
    before = [h.level for h in consoles]
    for handler in consoles:
        handler.setLevel(logging.ERROR if quiet else logging.WARNING)
        handler.addFilter(_not_progress_bar_notice)
    try:
        yield
    finally:
        for handler, level in zip(consoles, before):
            handler.setLevel(level)
            handler.removeFilter(_not_progress_bar_notice)


def _not_progress_bar_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Progress bars disabled")


def _rows(ds):
    """The actors' small rows, batch by batch, as they finish."""
    batches = iter(ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2))
    # The actor pool starts with the first batch, and this process's Ray core then flags a harmless detail
    # of Ray Data's actors in red on stderr (core.console.HARMLESS_RAY_LINES): held back and dropped there.
    with stderr_without(HARMLESS_RAY_LINES):
        first = next(batches, None)
    return itertools.chain([first] if first is not None else [], batches)
