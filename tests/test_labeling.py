"""Labeling on a real Ray Data pipeline into the real parquet store: reuse, broken files, two processes racing
for one key, a labeling run killed mid-write, and the teacher diagnostics kept with each entry.

The teacher is a textseg fitted for one step (random-ish weights: cheap, and the real code path). Counting
teacher calls: `orchestrator.labels.pipeline.TeacherActor` is swapped for a subclass defined inside a function or
a `__main__` script, so cloudpickle ships it to the actors by value; it appends one line per call to a file.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from orchestrator.core.errors import UserError
from orchestrator.core.label_format import read_label_table
from orchestrator.core.masks import decode_png
from orchestrator.labels.store import LabelStore, cache_key, corpus_fingerprint, key_inputs
from orchestrator.labels.pipeline import LabelingJob, decode_cpus, num_blocks, run_labeling
from orchestrator.core.vocab import ClassConcepts, Vocabulary

VOCAB = Vocabulary((ClassConcepts("background"), ClassConcepts("square"), ClassConcepts("circle")),
                   background_concepts=("triangle",))
SIZE = 24


# ------------------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory) -> str:
    from orchestrator.teachers import fit_textseg, save_checkpoint

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 16, 16, 3)).astype(np.uint8)
    masks = rng.integers(0, 3, (8, 16, 16)).astype(np.uint8)
    path = str(tmp_path_factory.mktemp("teacher") / "textseg.pt")
    save_checkpoint(fit_textseg(images, masks, VOCAB, steps=1, batch_size=4, width=8, embed_dim=16), path)
    return path


def make_corpus(root: Path, n: int, seed: int = 0) -> list[tuple[str, str]]:
    """A VOC-layout corpus: JPEGImages/<id>.jpg (a disk on noise) + SegmentationClass/<id>.png (its mask)."""
    rng = np.random.default_rng(seed)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    items = []
    for i in range(n):
        image = rng.integers(60, 160, (SIZE, SIZE, 3)).astype(np.uint8)
        disk = (yy - rng.integers(6, 18)) ** 2 + (xx - rng.integers(6, 18)) ** 2 <= 25
        image[disk] = (220, 60, 60)
        Image.fromarray(image).save(root / "JPEGImages" / f"img_{i:04d}.jpg", quality=90)
        Image.fromarray((disk * 2).astype(np.uint8), mode="L").save(root / "SegmentationClass" / f"img_{i:04d}.png")
        items.append((f"img_{i:04d}", str(root / "JPEGImages" / f"img_{i:04d}.jpg")))
    return items


def make_job(cache: Path, items, ckpt: str, **kw) -> LabelingJob:
    inputs = key_inputs(teacher_kind="textseg", weights_digest="test", arch="", templates="single", resolution=0,
                        sliding_window=False, vocabulary=VOCAB.to_dict(),
                        corpus=corpus_fingerprint([p for _, p in items]))
    kw = {"batch_size": 8, **kw}
    return LabelingJob(store=LabelStore.at(cache, cache_key(inputs)), key_inputs=inputs, items=list(items),
                       teacher_spec={"kind": "textseg", "pretrained": ckpt}, vocabulary=VOCAB.to_dict(), **kw)


def counting_actor(log: Path, tag: str, delay: float = 0.0):
    """A TeacherActor subclass, local to this function (so it is pickled by value), logging every call."""
    from orchestrator.labels.pipeline import TeacherActor

    class CountingTeacher(TeacherActor):
        def __call__(self, batch):
            time.sleep(delay)
            out = super().__call__(batch)
            with open(log, "a") as f:
                f.write(f"{tag} {len(batch['image_id'])}\n")
            return out

    return CountingTeacher


def calls(log: Path) -> list[tuple[str, int]]:
    if not log.is_file():
        return []
    return [(t, int(n)) for t, n in (line.split() for line in log.read_text().splitlines())]


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "labels").iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------------------------ pure decisions


def test_decode_tasks_never_ask_for_cpus_the_actor_pool_holds():
    assert decode_cpus(2, 1, 1) == 0.5          # room beside one actor: decode in tasks
    assert decode_cpus(2, 2, 1) == 0.0          # two 1-CPU actors fill 2 CPUs: decode inside the actors
    assert decode_cpus(2, 1, 2) == 0.0
    assert decode_cpus(64, 8, 4) == 0.5


def test_blocks_keep_every_actor_busy():
    assert num_blocks(8000, 2, 64) == 125
    assert num_blocks(100, 2, 64) == 8          # at least 4 per actor
    assert num_blocks(3, 4, 64) == 3            # never more blocks than images
    assert num_blocks(10**6, 2, 8) == 200


# ------------------------------------------------------------------------------------------ Ray Data runs


@pytest.mark.e2e
def test_label_then_reuse_without_running_the_teacher(ray_session, teacher_ckpt, tmp_path, monkeypatch,
                                                      sqlite_uri):
    import orchestrator.labels.pipeline as labeling

    items = make_corpus(tmp_path / "ood", 40)
    log = tmp_path / "calls.txt"
    monkeypatch.setattr(labeling, "TeacherActor", counting_actor(log, "run"))
    job = make_job(tmp_path / "cache", items, teacher_ckpt)

    first = run_labeling(job)
    assert (first.reused, first.images, first.labeled, first.rejected) == (False, 40, 40, 0)
    assert sum(n for _, n in calls(log)) == 40          # every image went through the teacher once
    table = read_label_table(job.store.root)
    assert sorted(table) == [i for i, _ in items]
    label, conf = (decode_png(b) for b in table["img_0003"])
    assert label.shape == conf.shape == (SIZE, SIZE) and label.max() < VOCAB.num_classes
    shards = {p: p.stat().st_mtime_ns for p in job.store.shards.iterdir()}
    manifest = job.store.manifest()

    # Teacher diagnostics are kept with the entry; the corpus has ground truth, so teacher IoU is there too.
    diag = job.store.root / "diagnostics"
    assert {p.name for p in diag.iterdir()} == {"class_pixel_share.png", "confidence_histogram.png",
                                                "overlays.png", "teacher_iou.png", "diagnostics.json"}
    numbers = json.loads((diag / "diagnostics.json").read_text())
    assert numbers == manifest["diagnostics"]
    assert numbers["ground_truth"]["images"] == 40 and set(numbers["ground_truth"]["per_class_iou"]) == \
        set(VOCAB.names)
    assert sum(numbers["confidence_histogram"]) == 40 * SIZE * SIZE
    assert abs(sum(numbers["class_pixel_share"].values()) - 1) < 1e-3
    assert numbers["overlay_images"] == [f"img_{i:04d}" for i in range(8)]
    with Image.open(diag / "overlays.png") as im:
        assert im.size[0] > 100 and im.size[1] > 400  # 8 rows of panels

    again = run_labeling(make_job(tmp_path / "cache", items, teacher_ckpt))
    assert again.reused and (again.key, again.labeled) == (first.key, 40)
    assert sum(n for _, n in calls(log)) == 40          # the teacher did not run again
    assert {p: p.stat().st_mtime_ns for p in job.store.shards.iterdir()} == shards
    assert job.store.manifest() == manifest and leftovers(tmp_path / "cache") == []

    # A sweep logs the diagnostics to its parent run: the plots as artifacts, the numbers as teacher.* metrics.
    from orchestrator.tracking import client as tracking
    from orchestrator.sweep.driver import _log_sweep_inputs

    space = tmp_path / "space.yaml"
    space.write_text("name: t\n")
    experiment = tracking.ensure_experiment(sqlite_uri, "diag")
    parent = tracking.create_run(sqlite_uri, experiment, "parent", {})
    _log_sweep_inputs(sqlite_uri, parent, {"space": str(space), "space_text": "name: t\n", "base": {}},
                      [again.summary()])
    client = tracking.client(sqlite_uri)
    logged = {a.path for a in client.list_artifacts(parent, f"labeling/{first.key}/diagnostics")}
    assert logged == {f"labeling/{first.key}/diagnostics/{name}" for name in
                      ("class_pixel_share.png", "confidence_histogram.png", "overlays.png", "teacher_iou.png",
                       "diagnostics.json")}
    metrics = client.get_run(parent).data.metrics
    assert metrics["teacher.gt_images"] == 40 and metrics["labeling.reused"] == 1.0
    scored = {n for n, v in numbers["ground_truth"]["per_class_iou"].items() if v is not None}
    assert {"background", "circle"} <= scored   # in the ground truth (a class never seen nor predicted: None)
    assert {k for k in metrics if k.startswith("teacher.iou.")} == {f"teacher.iou.{n}" for n in scored}
    assert metrics["teacher.pixel_share.circle"] == numbers["class_pixel_share"]["circle"]


@pytest.mark.e2e
def test_broken_images_are_skipped_and_listed_or_stop_the_run_when_too_many(ray_session, teacher_ckpt, tmp_path):
    items = make_corpus(tmp_path / "ood", 30)
    truncated = tmp_path / "ood" / "JPEGImages" / "img_0004.jpg"
    truncated.write_bytes(truncated.read_bytes()[:200])
    garbage = tmp_path / "ood" / "JPEGImages" / "img_0011.jpg"
    garbage.write_bytes(os.urandom(500))

    job = make_job(tmp_path / "cache", items, teacher_ckpt, max_broken_share=0.1)
    out = run_labeling(job)
    assert (out.reused, out.images, out.labeled, out.rejected) == (False, 30, 28, 2)
    rejected = job.store.manifest()["rejected_images"]
    assert [r["image_id"] for r in rejected] == ["img_0004", "img_0011"]
    assert all("cannot decode image" in r["error"] for r in rejected)
    assert set(read_label_table(job.store.root)) == {i for i, _ in items} - {"img_0004", "img_0011"}

    # The same corpus with a stricter limit (a different key, so no reuse) stops, and commits nothing.
    strict = make_job(tmp_path / "cache2", items, teacher_ckpt, max_broken_share=0.05)
    with pytest.raises(UserError, match=r"2 of 30 OOD images could not be read \(more than 5%\), e\.g\. "
                                        r"img_0004: .*cannot decode image.*Fix: repair or remove them"):
        run_labeling(strict)
    assert not strict.store.root.exists() and not strict.store.is_complete()
    assert leftovers(tmp_path / "cache2") == []


RACER = r"""
import json, sys, time
from pathlib import Path
import ray
sys.path.insert(0, {tests!r})
import orchestrator.labels.pipeline as labeling
from test_labeling import counting_actor, make_job
from orchestrator.core.label_format import read_label_table

cache, ckpt, ood, log, tag, delay = sys.argv[1:7]
ray.init(address={address!r}, log_to_driver=False)
items = sorted((p.stem, str(p)) for p in Path(ood, "JPEGImages").iterdir())
labeling.TeacherActor = counting_actor(Path(log), tag, float(delay))
Path(log + "." + tag + ".ready").touch()
while not Path(log + ".go").exists():
    time.sleep(0.05)
out = labeling.run_labeling(make_job(Path(cache), items, ckpt))
job = make_job(Path(cache), items, ckpt)
print(json.dumps({{"outcome": out.summary(), "manifest": job.store.manifest(),
                  "table": sorted(read_label_table(job.store.root))}}))
"""


def _racer(tmp_path: Path, address: str, cache: Path, ckpt: str, ood: Path, log: Path, tag: str,
           delay: float = 0.0) -> subprocess.Popen:
    script = tmp_path / "racer.py"
    if not script.exists():
        script.write_text(RACER.format(tests=str(Path(__file__).parent), address=address))
    from orchestrator.runtime import CLUSTER_SWITCH

    # A client of the session's private Ray, which listens on 127.0.0.1 only: with Ray's cluster switch on, Ray
    # would rewrite that address to the machine's outward one and never reach it (orchestrator/runtime.py).
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, CLUSTER_SWITCH: "0"}
    return subprocess.Popen([sys.executable, str(script), str(cache), ckpt, str(ood), str(log), tag, str(delay)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.time() + seconds
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.e2e
def test_two_processes_needing_one_missing_key_label_it_once(ray_session, teacher_ckpt, tmp_path):
    make_corpus(tmp_path / "ood", 48)
    address = ray_session.get_runtime_context().gcs_address
    log = tmp_path / "calls.txt"
    procs = [_racer(tmp_path, address, tmp_path / "cache", teacher_ckpt, tmp_path / "ood", log, tag, 0.1)
             for tag in ("a", "b")]
    _wait_for(lambda: all(Path(f"{log}.{t}.ready").exists() or p.poll() is not None
                          for t, p in zip("ab", procs)), 120, "both processes to connect to Ray")
    Path(f"{log}.go").touch()  # both ask for the key now, while it is missing
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=180)
        assert p.returncode == 0, stderr[-3000:]
        results.append(json.loads(stdout.strip().splitlines()[-1]))

    assert sorted(r["outcome"]["reused"] for r in results) == [False, True]
    labeler = next(r for r in results if not r["outcome"]["reused"])
    tags = {t for t, _ in calls(log)}
    assert len(tags) == 1 and sum(n for _, n in calls(log)) == 48   # one process ran the teacher, once per image
    assert results[0]["manifest"] == results[1]["manifest"] and results[0]["table"] == results[1]["table"]
    assert labeler["outcome"]["labeled"] == 48 and len(results[0]["table"]) == 48
    assert leftovers(tmp_path / "cache") == []


@pytest.mark.e2e
def test_a_labeling_run_killed_mid_write_leaves_no_complete_looking_entry(ray_session, teacher_ckpt, tmp_path):
    items = make_corpus(tmp_path / "ood", 160)
    cache, log = tmp_path / "cache", tmp_path / "calls.txt"
    store = make_job(cache, items, teacher_ckpt).store
    Path(f"{log}.go").touch()
    proc = _racer(tmp_path, ray_session.get_runtime_context().gcs_address, cache, teacher_ckpt,
                  tmp_path / "ood", log, "killed", 0.3)
    try:
        # Wait until shards are being written into the run's temp folder, then kill the driver outright.
        _wait_for(lambda: proc.poll() is not None or any((cache / "labels").glob(".*.tmp-*/shards/*.parquet")),
                  120, "the first parquet shard")
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        written = sum(n for _, n in calls(log))
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert written > 0              # killed while writing, before the manifest (the teacher may have finished)
    assert not store.is_complete() and not store.root.exists()  # nothing that looks like an entry
    assert len(leftovers(cache)) == 1                         # only a hidden temp folder is left behind

    out = run_labeling(make_job(cache, items, teacher_ckpt))
    assert (out.reused, out.labeled, out.rejected) == (False, 160, 0)
    assert store.is_complete() and len(read_label_table(store.root)) == 160
    assert leftovers(cache) == []                             # the dead run's temp folder is cleaned up
