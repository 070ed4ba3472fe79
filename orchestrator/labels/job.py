"""What to label, and under which cache key.

`LABEL_KEYS` lists every config key the OOD labels depend on. A `LabelRequest` carries only those values,
and `label_job` derives the cache entry from the request alone, so the sweep's plan (which counts distinct
requests) and the cache key cannot disagree. Everything else (thresholds, ratios, subset sizes, the labeled
split) is applied when training reads the labels, so sweeping it never re-runs the teacher.
"""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from orchestrator.core.config import ExperimentConfig, KeyedRequest, keys_with
from orchestrator.core.config_roles import LABELS
from orchestrator.core.digest import digest_json
from orchestrator.data.plan import dataset_root, ood_corpus, teacher_vocabulary
from orchestrator.labels.pipeline import LabelingJob, LabelingOutcome
from orchestrator.labels.store import LabelStore, cache_key, corpus_fingerprint, key_inputs
from orchestrator.teachers.fit_task import ensure_fitted_teacher, teacher_spec
from orchestrator.teachers.registry import folder_name, is_builtin, label_key_extras, teacher_traits

# The keys with the `labels` role (orchestrator/core/config_roles.py), in declaration order: the dataset (and, for
# the generated benchmark, every setting of its generator), the OOD corpus, and the teacher (kind, weights or fit
# settings, prompts, inference settings, and the noise that weakens its labels). tests/test_config_roles.py pins
# the tuple: its order is part of every label cache key.
LABEL_KEYS: tuple[str, ...] = keys_with(LABELS)


class LabelRequest(KeyedRequest):
    """The values of LABEL_KEYS: equal requests share one cache entry."""
    KEYS = LABEL_KEYS
    WHAT = "label request"


def label_job(cfg: ExperimentConfig, cache_root: Path) -> LabelingJob:
    """The labeling job of `cfg`: its key from the LabelRequest alone; how it runs (actors, batch) from cfg."""
    from orchestrator.data.voc import load_vocabulary
    from orchestrator.teachers.base import weights_digest_for

    source = LabelRequest.from_config(cfg).config()
    data_root = dataset_root(source, cache_root)
    spec = teacher_spec(source, cache_root, data_root)
    vocab = teacher_vocabulary(data_root, load_vocabulary(data_root))
    corpus = ood_corpus(source, data_root)  # the whole corpus: subsets (ood.num_images) read from it
    items = [(image_id, path) for image_id, path, _ in corpus]
    pretrained_kind = teacher_traits(spec.kind).pretrained_kind
    if os.path.isfile(spec.pretrained) or (spec.pretrained and pretrained_kind != "file"):
        weights = weights_digest_for(spec.pretrained, spec.arch)   # the file's sha256, or the tag's text
    else:
        weights = "none" if pretrained_kind == "none" else "missing"
    inputs = key_inputs(teacher_kind=spec.kind, weights_digest=weights, arch=spec.arch, templates=spec.templates,
                        resolution=spec.resolution, sliding_window=spec.sliding_window,
                        vocabulary=vocab.to_dict(), corpus=corpus_fingerprint([p for _, p in items]))
    # A plug-in (teacher.kind = its import path): the sha256 of its module's source, so editing the teacher
    # relabels. Built-ins add nothing: their keys, and the label sets cached under them, stay what they were.
    inputs = {**inputs, **label_key_extras(spec.kind)}
    noise = source.teacher.label_noise
    if noise > 0:   # only then: the keys of every label set made without noise stay what they were
        inputs = {**inputs, "label_noise": noise}
    # the entry's folder starts with the kind; an import path's ':' is not safe in every store (registry.folder_name)
    key = cache_key(inputs) if is_builtin(spec.kind) else f"{folder_name(spec.kind)}-{digest_json(inputs)}"
    r = cfg.resources
    device = "cuda" if r.gpus_per_teacher > 0 else "cpu"
    return LabelingJob(store=LabelStore.at(cache_root, key), key_inputs=inputs, items=items,
                       teacher_spec={**asdict(spec), "device": device}, vocabulary=vocab.to_dict(),
                       actors=r.teacher_actors, cpus_per_actor=r.cpus_per_teacher, gpus_per_actor=r.gpus_per_teacher,
                       batch_size=cfg.teacher.batch_size, max_broken_share=cfg.data.max_broken_share,
                       masks=tuple(mask for _, _, mask in corpus), label_noise=noise)


def ensure_labels(cfg: ExperimentConfig, cache_root: Path, log=print, progress=None) -> LabelingOutcome:
    """Fit the teacher if needed, then label the corpus unless its key is cached (or its entry is damaged).
    Needs ray.init(). `progress`: a core.progress factory for the fit's and the labeling's bars (default silent)."""
    from orchestrator.core.label_format import shard_problems
    from orchestrator.labels.pipeline import run_labeling

    ensure_fitted_teacher(cfg, cache_root, dataset_root(cfg, cache_root), log, progress)
    job = label_job(cfg, cache_root)
    damage = shard_problems(job.store.root) if job.store.is_complete() else []
    if damage:
        log(f"the label entry {job.store.root} is damaged ({damage[0]}): labeling it again")
    if not job.store.is_complete() or damage:
        log(f"labeling {len(job.items)} OOD images with {cfg.teacher.kind} on "
            f"{job.actors} actor(s) → {job.store.root}")
    return run_labeling(job, progress)
