"""Which teacher weights a run uses, and fitting the benchmark's textseg teacher when they are missing.

The fitted teacher is cached under `<cache>/teachers/`, keyed by its fit settings and source corpus. The fit
runs as a Ray task when Ray is up (so a cluster can give it a GPU), else in this process. Beside each fitted
file, `<name>.pt.sha256.json` records its size and sha256: a file truncated or changed later is fitted again
before anything uses it (its digest is part of the label cache key, so damaged weights would label silently).
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np

from orchestrator.core.config import ExperimentConfig
from orchestrator.core.digest import checksum_problem, digest_json, file_checksum
from orchestrator.core.errors import UserError
from orchestrator.core.paths import inside
from orchestrator.teachers.spec import TeacherSpec

TEXTSEG_FIT_VERSION = "3"  # bump when fit_textseg changes what it learns; older fitted files stop matching


def fitted_textseg_path(cfg: ExperimentConfig, cache_root: Path, data_root: Path) -> Path:
    """Where the benchmark's fitted textseg teacher lives: keyed by its fit settings and source corpus."""
    manifest = data_root / "manifest.json"
    source_digest = json.loads(manifest.read_text()).get("digest", "") if manifest.is_file() else str(data_root)
    key = digest_json({"steps": cfg.teacher.fit_steps, "templates": cfg.teacher.templates,
                       "source": source_digest, "seed": cfg.data.seed, "version": TEXTSEG_FIT_VERSION}, 16)
    return inside(cache_root, "teachers", f"textseg-{key}.pt")


def teacher_spec(cfg: ExperimentConfig, cache_root: Path, data_root: Path) -> TeacherSpec:
    """The teacher a config asks for, with its weights resolved to a file (or an open_clip tag for maskclip)."""
    t = cfg.teacher
    pretrained = t.pretrained
    if not pretrained:
        if t.kind != "textseg":
            raise UserError(f"teacher.kind={t.kind} needs teacher.pretrained: a local open_clip checkpoint "
                            f"file (nothing can be downloaded here). Fix: --set teacher.pretrained=/path/model.pt")
        pretrained = str(fitted_textseg_path(cfg, cache_root, data_root))
    elif Path(pretrained).expanduser().is_file():
        pretrained = str(Path(pretrained).expanduser().resolve())
        if t.kind == "textseg" and not zipfile.is_zipfile(pretrained):   # torch.save writes a zip archive
            raise UserError(f"teacher.pretrained: '{pretrained}' is not a complete torch checkpoint (truncated, "
                            f"or another format). Fix: copy it again, or write one with `python run.py teacher fit`.")
    elif t.kind == "textseg":  # maskclip may name an open_clip tag instead of a file
        raise UserError(f"teacher.pretrained: file '{pretrained}' does not exist. "
                        f"Fix: give the path of a checkpoint written by `python run.py teacher fit`.")
    device = "cuda" if cfg.resources.gpus_per_teacher > 0 else "cpu"
    return TeacherSpec(kind=t.kind, pretrained=pretrained, arch=t.arch if t.kind == "maskclip" else "",
                       templates=t.templates, resolution=t.resolution, sliding_window=t.sliding_window,
                       device=device)


def ensure_fitted_teacher(cfg: ExperimentConfig, cache_root: Path, data_root: Path, log=print,
                          progress=None) -> Path | None:
    """Fit the benchmark's textseg teacher on the source corpus unless it is cached. Returns its path.
    `progress`: a core.progress factory for the fit's bar (default silent)."""
    if cfg.teacher.kind != "textseg" or cfg.teacher.pretrained:
        return None
    path = fitted_textseg_path(cfg, cache_root, data_root)
    if path.is_file():
        problem = teacher_file_problem(path)
        if problem is None:
            if not checksum_file(path).is_file():   # fitted before checksums were recorded: adopt it
                record_checksum(path)
            return path
        log(f"the fitted teacher {path} is damaged ({problem}): fitting it again")
    log(f"fitting the textseg teacher on {data_root / 'source'} ({cfg.teacher.fit_steps} steps) → {path}")
    fit_benchmark_teacher(data_root, path, steps=cfg.teacher.fit_steps, templates=cfg.teacher.templates,
                          seed=cfg.data.seed, cpus=cfg.resources.cpus_per_teacher,
                          gpus=cfg.resources.gpus_per_teacher, progress=progress)
    return path


def checksum_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256.json")


def record_checksum(path: Path) -> None:
    """Write the checksum beside the fitted file, atomically (a reader sees the old one or the whole new one)."""
    side = checksum_file(path)
    tmp = side.with_name(f".{side.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(file_checksum(path)))
    os.replace(tmp, side)


def teacher_file_problem(path: Path) -> str | None:
    """Why the fitted teacher at `path` cannot be reused (None = intact)."""
    side = checksum_file(path)
    if side.is_file():
        try:
            return checksum_problem(path, json.loads(side.read_text()))
        except (ValueError, KeyError, TypeError):
            return f"its checksum file {side} cannot be read"
    # no checksum yet (fitted by an older version): torch.save writes a zip archive, a truncated one is not
    return None if zipfile.is_zipfile(path) else f"{path} is not a complete checkpoint (truncated?)"


def load_source_corpus(data_root: Path) -> tuple[np.ndarray, np.ndarray]:
    from orchestrator.core.images import load_image, load_mask
    from orchestrator.data.voc import list_ood_corpus

    pairs = list_ood_corpus(data_root / "source")
    images = np.stack([load_image(img) for img, _ in pairs])
    masks = np.stack([load_mask(mask) for _, mask in pairs])
    return images, masks


def _fit_and_save(data_root: str, out_path: str, steps: int, templates: str, seed: int, threads: int,
                  on_log=None) -> str:
    import torch

    from orchestrator.data.voc import load_vocabulary
    from orchestrator.teachers import fit_textseg, save_checkpoint

    torch.set_num_threads(max(1, threads))   # in the calling thread: OpenMP's thread count is per thread
    images, masks = load_source_corpus(Path(data_root))
    vocab = load_vocabulary(data_root, key="source")
    ckpt = fit_textseg(images, masks, vocab, steps=steps, seed=seed, templates=templates, on_log=on_log,
                       log_every=PROGRESS_EVERY)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(ckpt, out_path)
    record_checksum(Path(out_path))
    return out_path


PROGRESS_EVERY = 10   # fit steps between progress records


def _fit_records(*args):
    """The fit, as a stream of records: {"step": n} every PROGRESS_EVERY steps, then {"path": checkpoint}.
    A Ray streaming-generator task (or a plain generator without Ray): the fit runs in a thread and the
    generator hands its progress to the caller as it comes."""
    import queue
    import threading

    records: queue.Queue = queue.Queue()
    outcome: dict = {}

    def work() -> None:
        try:
            outcome["path"] = _fit_and_save(*args, on_log=lambda r: records.put({"step": r["step"]}))
        except BaseException as err:   # re-raised below, in the task's own thread
            outcome["error"] = err
        finally:
            records.put(None)

    thread = threading.Thread(target=work, name="textseg-fit", daemon=True)
    thread.start()
    while (record := records.get()) is not None:
        yield record
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    yield {"path": outcome["path"]}


def fit_threads(cpus_per_teacher: float, gpus: float, node_cpus: list[float]) -> int:
    """Threads (and CPUs reserved) for the fit. Nothing else runs while it fits, so on CPU it takes a whole
    node: the largest one's CPUs. On a GPU the device does the work; it keeps `resources.cpus_per_teacher`."""
    if gpus > 0 or not node_cpus:
        return max(1, int(cpus_per_teacher))
    return max(1, int(max(node_cpus)))


def fit_benchmark_teacher(data_root: Path, out_path: Path, *, steps: int, templates: str, seed: int,
                          cpus: float, gpus: float, progress=None) -> Path:
    """Fit (a Ray task when Ray is up, so a cluster can give it a GPU), showing its progress with an ETA."""
    import os
    import sys

    import ray

    from orchestrator.core.progress import silent

    if ray.is_initialized():
        node_cpus = [n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")]
    else:
        node_cpus = [float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())]
    threads = fit_threads(cpus, gpus, node_cpus)
    args = (str(data_root), str(out_path), steps, templates, seed, threads)
    if ray.is_initialized():
        # Passive OpenMP waits: spinning threads on a shared machine burnt 5x the CPU time per step (measured
        # under load: 0.83 vs 0.16 core-seconds per step at 2 threads); it is read when torch loads, hence a
        # worker started with it in its environment.
        task = ray.remote(_fit_records).options(num_cpus=threads, num_gpus=gpus, num_returns="streaming",
                                                runtime_env={"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}})
        records = (ray.get(ref) for ref in task.remote(*args))
    else:
        if "torch" not in sys.modules:   # in this process: passive waits too, if torch is not loaded yet
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        records = _fit_records(*args)
    path = None
    with (progress or silent)(f"teacher fit ({threads} thread(s))", steps, "step") as bar:
        for record in records:
            if "step" in record:
                bar.set(record["step"])
            path = record.get("path", path)
    return Path(path)
