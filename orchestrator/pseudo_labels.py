"""From a run's config to its OOD pseudo-labels: resolve the teacher, fit it if it is the benchmark's
textseg and not fitted yet, compute the label cache key, and label the corpus once.

`label_job` is a pure function of the config and files on disk, so the sweep driver (which labels) and
each trial (which reads) arrive at the same cache entry.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from orchestrator.config import ExperimentConfig
from orchestrator.data_plan import dataset_root, ood_corpus, teacher_vocabulary
from orchestrator.errors import UserError
from orchestrator.label_cache import (LabelStore, cache_key, corpus_fingerprint, digest_json, key_inputs)
from orchestrator.labeling import LabelingJob, LabelingOutcome
from orchestrator.paths import inside

TEXTSEG_FIT_VERSION = "2"  # bump when fit_textseg changes what it learns (2: class balance, channel shuffle)


def fitted_textseg_path(cfg: ExperimentConfig, cache_root: Path, data_root: Path) -> Path:
    """Where the benchmark's fitted textseg teacher lives: keyed by its fit settings and source corpus."""
    manifest = data_root / "manifest.json"
    source_digest = json.loads(manifest.read_text()).get("digest", "") if manifest.is_file() else str(data_root)
    key = digest_json({"steps": cfg.teacher.fit_steps, "templates": cfg.teacher.templates,
                       "source": source_digest, "seed": cfg.data.seed, "version": TEXTSEG_FIT_VERSION}, 16)
    return inside(cache_root, "teachers", f"textseg-{key}.pt")


def teacher_spec(cfg: ExperimentConfig, cache_root: Path, data_root: Path):
    from orchestrator.teachers import TeacherSpec

    t = cfg.teacher
    pretrained = t.pretrained
    if not pretrained:
        if t.kind != "textseg":
            raise UserError(f"teacher.kind={t.kind} needs teacher.pretrained: a local open_clip checkpoint "
                            f"file (nothing can be downloaded here). Fix: --set teacher.pretrained=/path/model.pt")
        pretrained = str(fitted_textseg_path(cfg, cache_root, data_root))
    elif Path(pretrained).expanduser().is_file():
        pretrained = str(Path(pretrained).expanduser().resolve())
    elif t.kind == "textseg":  # maskclip may name an open_clip tag instead of a file
        raise UserError(f"teacher.pretrained: file '{pretrained}' does not exist. "
                        f"Fix: give the path of a checkpoint written by `python run.py teacher fit`.")
    device = "cuda" if cfg.resources.gpus_per_teacher > 0 else "cpu"
    return TeacherSpec(kind=t.kind, pretrained=pretrained, arch=t.arch if t.kind == "maskclip" else "",
                       templates=t.templates, resolution=t.resolution, sliding_window=t.sliding_window,
                       device=device)


def ensure_fitted_teacher(cfg: ExperimentConfig, cache_root: Path, data_root: Path, log=print) -> Path | None:
    """Fit the benchmark's textseg teacher on the source corpus unless it is cached. Returns its path."""
    if cfg.teacher.kind != "textseg" or cfg.teacher.pretrained:
        return None
    path = fitted_textseg_path(cfg, cache_root, data_root)
    if path.is_file():
        return path
    from orchestrator.teacher_fit import fit_benchmark_teacher

    log(f"fitting the textseg teacher on {data_root / 'source'} ({cfg.teacher.fit_steps} steps) → {path}")
    fit_benchmark_teacher(data_root, path, steps=cfg.teacher.fit_steps, templates=cfg.teacher.templates,
                          seed=cfg.data.seed, cpus=cfg.resources.cpus_per_teacher,
                          gpus=cfg.resources.gpus_per_teacher)
    return path


def label_job(cfg: ExperimentConfig, cache_root: Path) -> LabelingJob:
    from orchestrator.data.voc import load_vocabulary
    from orchestrator.teachers.base import weights_digest_for

    data_root = dataset_root(cfg, cache_root)
    spec = teacher_spec(cfg, cache_root, data_root)
    vocab = teacher_vocabulary(data_root, load_vocabulary(data_root))
    corpus = ood_corpus(cfg, data_root)  # the whole corpus: subsets (ood.num_images) read from it
    items = [(image_id, path) for image_id, path, _ in corpus]
    weights = weights_digest_for(spec.pretrained, spec.arch) if os.path.isfile(spec.pretrained) or \
        spec.kind == "maskclip" else "missing"
    inputs = key_inputs(teacher_kind=spec.kind, weights_digest=weights, arch=spec.arch, templates=spec.templates,
                        resolution=spec.resolution, sliding_window=spec.sliding_window,
                        vocabulary=vocab.to_dict(), corpus=corpus_fingerprint([p for _, p in items]))
    r = cfg.resources
    return LabelingJob(store=LabelStore.at(cache_root, cache_key(inputs)), key_inputs=inputs, items=items,
                       teacher_spec=asdict(spec), vocabulary=vocab.to_dict(), actors=r.teacher_actors,
                       cpus_per_actor=r.cpus_per_teacher, gpus_per_actor=r.gpus_per_teacher,
                       batch_size=cfg.teacher.batch_size, max_broken_share=cfg.data.max_broken_share,
                       masks=tuple(mask for _, _, mask in corpus))


def ensure_labels(cfg: ExperimentConfig, cache_root: Path, log=print) -> LabelingOutcome:
    """Fit the teacher if needed, then label the corpus unless its key is cached. Needs ray.init()."""
    from orchestrator.labeling import run_labeling

    ensure_fitted_teacher(cfg, cache_root, dataset_root(cfg, cache_root), log)
    job = label_job(cfg, cache_root)
    if not job.store.is_complete():
        log(f"labeling {len(job.items)} OOD images with {cfg.teacher.kind} on "
            f"{job.actors} actor(s) → {job.store.root}")
    return run_labeling(job)
