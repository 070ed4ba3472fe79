"""What a sweep's numbers were made with: its resolved base config and the versions of the code that decides
what the data, the teacher, the labels, the encoder and the training step are. Two sweeps with the same
fingerprint measure the same thing; a figure pasted into the docs carries the fingerprint it was made with, and
a test fails when the code's defaults no longer give it (tests/test_docs_fresh.py)."""
from __future__ import annotations

from typing import Any

from orchestrator.core.digest import digest_json

TAG = "defaults_fingerprint"   # on a sweep's parent run


def code_versions() -> dict[str, str]:
    """The versions bumped by hand when a stage changes what it produces (each one's module says when)."""
    from orchestrator.data.shapes import GENERATOR_VERSION
    from orchestrator.labels.store import LABELING_CODE_VERSION
    from orchestrator.students.encoder import PRETRAIN_VERSION
    from orchestrator.teachers.fit_task import TEXTSEG_FIT_VERSION
    from trainables.recipe import RECIPE_VERSION

    return {"generator": str(GENERATOR_VERSION), "labeling": LABELING_CODE_VERSION, "pretrain": PRETRAIN_VERSION,
            "teacher_fit": TEXTSEG_FIT_VERSION, "recipe": RECIPE_VERSION}


def fingerprint(base: dict[str, Any]) -> str:
    """A short digest of what a sweep's resolved base config computes and the code versions: every key but those
    whose purpose is resources, fault tolerance or diagnostics (config_roles.py), which change how a run goes,
    not its numbers; so a new resource setting does not make every pasted table stale."""
    from orchestrator.core.config import KEY_ROLES
    from orchestrator.core.config_roles import EXPERIMENT

    measured = {k: base[k] for k in sorted(base) if k not in KEY_ROLES or EXPERIMENT in KEY_ROLES[k]}
    return digest_json({"base": measured, "code": code_versions()}, 12)


def space_fingerprint(space_file: str, sets: dict[str, Any] | None = None) -> str:
    """The fingerprint a sweep of `space_file` (with `--set` overrides) would have with today's code."""
    from orchestrator.sweep.space import load_space, resolve_base

    return fingerprint(resolve_base(load_space(space_file), sets or {}))
