"""Which teacher weights a run uses, and fitting the benchmark's textseg teacher when they are missing.

What a kind needs is read from its class's traits (registry.py, core.plugins.TeacherTraits): textseg, and any
plug-in with the fits_on_source trait, is fitted on the source corpus when teacher.pretrained is empty.
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
from orchestrator.teachers.registry import folder_name, is_builtin, label_key_extras, teacher_class, teacher_traits
from orchestrator.teachers.spec import TeacherSpec

TEXTSEG_FIT_VERSION = "3"  # bump when fit_textseg changes what it learns; older fitted files stop matching


def fitted_teacher_path(cfg: ExperimentConfig, cache_root: Path, data_root: Path) -> Path:
    """Where the teacher fitted on the source corpus lives: keyed by its fit settings and source corpus (and, for a
    plug-in, by its kind and code, as its labels are)."""
    from orchestrator.data.voc import source_corpus_digest

    # the source corpus's own content: a change of the ID or OOD domains keeps the fitted teacher
    inputs = {"steps": cfg.teacher.fit_steps, "templates": cfg.teacher.templates,
              "source": source_corpus_digest(data_root) or str(data_root), "seed": cfg.data.seed,
              "version": TEXTSEG_FIT_VERSION}
    kind = cfg.teacher.kind
    if not is_builtin(kind):   # textseg's files keep their names
        inputs = {**inputs, "kind": kind, **label_key_extras(kind)}
    return inside(cache_root, "teachers", f"{folder_name(kind)}-{digest_json(inputs, 16)}.pt")


fitted_textseg_path = fitted_teacher_path   # the name `run.py teacher fit` calls it by


def teacher_spec(cfg: ExperimentConfig, cache_root: Path, data_root: Path) -> TeacherSpec:
    """The teacher a config asks for, with its weights resolved to a file (or left a tag, or empty, where the kind's
    pretrained_kind trait allows it)."""
    t = cfg.teacher
    cls = teacher_class(t.kind)
    traits = teacher_traits(t.kind)
    pretrained = t.pretrained
    fit_hint = "a checkpoint written by `python run.py teacher fit`" if traits.fits_on_source else "a weights file"
    if not pretrained:
        if traits.fits_on_source:
            pretrained = str(fitted_teacher_path(cfg, cache_root, data_root))
        elif traits.pretrained_kind != "none":
            raise UserError(f"teacher.kind={t.kind} needs teacher.pretrained: a local weights file (nothing can be "
                            f"downloaded here). Fix: --set teacher.pretrained=/path/model.pt")
    elif Path(pretrained).expanduser().is_file():
        pretrained = str(Path(pretrained).expanduser().resolve())
        check = getattr(cls, "weights_problem", None)   # optional hook: a cheap look before any actor loads it
        problem = check(pretrained) if callable(check) else None
        if problem:
            raise UserError(f"teacher.pretrained: '{pretrained}' {problem}. Fix: copy it again, or give "
                            f"{fit_hint}.")
    elif traits.pretrained_kind == "file":  # file_or_tag may name a tag (maskclip: open_clip), none passes it on
        raise UserError(f"teacher.pretrained: file '{pretrained}' does not exist. Fix: give the path of {fit_hint}.")
    device = "cuda" if cfg.resources.gpus_per_teacher > 0 else "cpu"
    return TeacherSpec(kind=t.kind, pretrained=pretrained, arch=t.arch if traits.uses_arch else "",
                       templates=t.templates, resolution=t.resolution, sliding_window=t.sliding_window,
                       device=device)


def ensure_fitted_teacher(cfg: ExperimentConfig, cache_root: Path, data_root: Path, log=print,
                          progress=None) -> Path | None:
    """Fit the teacher on the source corpus unless it is cached, if its kind fits_on_source and teacher.pretrained
    is empty. Returns its path. `progress`: a core.progress factory for the fit's bar (default silent)."""
    if cfg.teacher.pretrained or not teacher_traits(cfg.teacher.kind).fits_on_source:
        return None
    path = fitted_teacher_path(cfg, cache_root, data_root)
    if path.is_file():
        problem = teacher_file_problem(path)
        if problem is None:
            if not checksum_file(path).is_file():   # fitted before checksums were recorded: adopt it
                record_checksum(path)
            return path
        log(f"the fitted teacher {path} is damaged ({problem}): fitting it again")
    log(f"fitting the {cfg.teacher.kind} teacher on {data_root / 'source'} ({cfg.teacher.fit_steps} steps) → {path}")
    fit_benchmark_teacher(data_root, path, steps=cfg.teacher.fit_steps, templates=cfg.teacher.templates,
                          seed=cfg.data.seed, cpus=cfg.resources.cpus_per_teacher,
                          gpus=cfg.resources.gpus_per_teacher, progress=progress, kind=cfg.teacher.kind)
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


def _fit_and_save(data_root: str, out_path: str, steps: int, templates: str, seed: int, kind: str = "textseg",
                  on_step=None) -> str:
    from orchestrator.data.voc import load_source_corpus, load_vocabulary

    images, masks = load_source_corpus(Path(data_root))
    vocab = load_vocabulary(data_root, key="source")
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    # the kind's fits_on_source hook (textseg: fit_textseg + save_checkpoint); it writes out_path
    teacher_class(kind).fit_weights(images, masks, vocab, out_path, steps=steps, seed=seed, templates=templates,
                                    on_step=on_step)
    if not Path(out_path).is_file():
        raise UserError(f"teacher.kind={kind}: fit_weights wrote no file at {out_path}. Fix: write the fitted "
                        f"weights to its out_path argument (docs/extending.md).")
    record_checksum(Path(out_path))
    return out_path


PROGRESS_EVERY = 10   # fit steps between progress records (textseg's fit_weights reports at this pace)


def fit_benchmark_teacher(data_root: Path, out_path: Path, *, steps: int, templates: str, seed: int,
                          cpus: float, gpus: float, progress=None, kind: str = "textseg") -> Path:
    """Fit (a Ray task when Ray is up, so a cluster can give it a GPU), showing its progress with an ETA."""
    from orchestrator.core.long_task import run_long_task

    return Path(run_long_task(_fit_and_save, (str(data_root), str(out_path), steps, templates, seed, kind),
                              label="teacher fit", total=steps, unit="step", cpus=cpus, gpus=gpus,
                              progress=progress))
