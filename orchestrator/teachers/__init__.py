"""Open-vocabulary teachers that pseudo-label OOD images (SemiOVS §2).

    teacher = build_teacher(TeacherSpec(kind="textseg", pretrained="fitted.pt"), vocab)
    labels, conf = teacher.predict(images)   # uint8 [B,H,W,3] → uint8 [B,H,W] ids, float32 [B,H,W] max prob

Kinds: "textseg" (a small text-conditioned segmenter fitted on the `shapes` source corpus; see textseg_model.py),
"maskclip" (training-free dense CLIP from open_clip ViT weights; see maskclip.py), both registered in registry.py,
or a plug-in's import path package.module:Class (docs/extending.md). Torch-heavy modules are imported on first use
so that importing TeacherSpec stays cheap for the CLI and the cache.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestrator.teachers.metrics import evaluate_teacher
from orchestrator.teachers.spec import TEACHER_KINDS, TEMPLATE_SETS, TeacherSpec

if TYPE_CHECKING:
    from orchestrator.teachers.base import DenseTeacher
    from orchestrator.core.vocab import Vocabulary

__all__ = ["TeacherSpec", "TEACHER_KINDS", "TEMPLATE_SETS", "build_teacher", "evaluate_teacher",
           "fit_textseg", "save_checkpoint", "FitConfig", "weights_digest_for"]

_LAZY = {"fit_textseg": "textseg_fit", "save_checkpoint": "textseg_fit", "FitConfig": "textseg_fit",
         "weights_digest_for": "base"}


def build_teacher(spec: TeacherSpec, vocab: "Vocabulary") -> "DenseTeacher":
    """Load the teacher's weights once (call it in a Ray actor's __init__) and bind it to `vocab`: the kind's class
    (registry.py) constructed as Class(spec, vocab). A plug-in's outputs are checked on every call."""
    from orchestrator.teachers.registry import CheckedTeacher, is_builtin, teacher_class

    teacher = teacher_class(spec.kind)(spec, vocab)
    return teacher if is_builtin(spec.kind) else CheckedTeacher(teacher, vocab.num_classes, spec.kind)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f"orchestrator.teachers.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'orchestrator.teachers' has no attribute '{name}'")
