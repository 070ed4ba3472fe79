"""Which class a teacher.kind names: the built-ins by registered name, plug-ins by import path.

Every decision that depends on the kind goes through the class's traits (core.plugins.TeacherTraits), never a
comparison with a kind's name: a plug-in gets the same treatment as the built-ins by declaring the same traits.
Importing this module is cheap; a kind's class (and torch, for the built-ins) is imported on first use.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from orchestrator.core.config import TEACHER_KINDS
from orchestrator.core.plugins import TeacherTraits, load_teacher_class, source_digest

# Registered name → import path of a class that follows the teacher protocol (docs/extending.md).
BUILTIN_TEACHERS: dict[str, str] = {
    "textseg": "orchestrator.teachers.textseg:TextSegTeacher",
    "maskclip": "orchestrator.teachers.maskclip:MaskClipTeacher",
}
if tuple(BUILTIN_TEACHERS) != TEACHER_KINDS:   # the config validates against TEACHER_KINDS; both must agree
    raise ImportError(f"teacher registry {tuple(BUILTIN_TEACHERS)} != config TEACHER_KINDS {TEACHER_KINDS}")


def is_builtin(kind: str) -> bool:
    return kind in BUILTIN_TEACHERS


def import_path(kind: str) -> str:
    """The import path `kind` stands for (a plug-in's kind is its import path)."""
    return BUILTIN_TEACHERS.get(kind, kind)


def teacher_class(kind: str) -> type:
    """The class of `kind`, imported and checked against the protocol (a ConfigError naming teacher.kind if not)."""
    return load_teacher_class(import_path(kind), "teacher.kind")


def teacher_traits(kind: str) -> TeacherTraits:
    return TeacherTraits.of(teacher_class(kind), kind)


def label_key_extras(kind: str) -> dict[str, str]:
    """What a plug-in's labels depend on beyond the built-ins' key inputs: the sha256 of its module's source file
    (edit the teacher → new labels) and its label_version trait. Nothing for a built-in, so their keys (and the
    label sets cached under them) stay what they were; their code changes bump LABELING_CODE_VERSION instead."""
    if is_builtin(kind):
        return {}
    cls = teacher_class(kind)
    extras = {"teacher_code": source_digest(cls, kind)}
    version = TeacherTraits.of(cls, kind).label_version
    if version:
        extras["teacher_version"] = version
    return extras


def folder_name(kind: str) -> str:
    """`kind` as the first part of a cache folder name: an import path's ':' becomes '.' (my_plugins.RuleTeacher),
    since ':' is not safe in every file system, object store or MLflow artifact path."""
    return kind.replace(":", ".")


class CheckedTeacher:
    """A plug-in teacher whose outputs are checked and brought to the built-ins' types (uint8 labels, float32
    confidence): a wrong shape, a class id outside the vocabulary or a confidence outside [0, 1] would otherwise
    be written into the label cache and read by every trial. The built-ins are not wrapped (their outputs are
    pinned by tests)."""

    def __init__(self, teacher: Any, num_classes: int, kind: str):
        self.teacher, self.num_classes, self.kind = teacher, num_classes, kind

    def __getattr__(self, name: str) -> Any:   # the plug-in's own attributes stay reachable
        if name == "teacher":   # not set yet (e.g. while copying): no recursion
            raise AttributeError(name)
        return getattr(self.teacher, name)

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.teacher.predict(images)
        if not (isinstance(out, tuple) and len(out) == 2):
            self._fail(f"returned a {type(out).__name__}, not the pair (labels, confidence)")
        labels, conf = (np.asarray(a) for a in out)
        want = tuple(images.shape[:3])
        for name, array in (("labels", labels), ("confidence", conf)):
            if tuple(array.shape) != want:
                self._fail(f"returned {name} shaped {tuple(array.shape)} for images shaped {tuple(images.shape)}; "
                           f"expected {want} ([B,H,W] at the input size)")
        if not np.issubdtype(labels.dtype, np.integer):
            self._fail(f"returned labels of dtype {labels.dtype}; expected integer class ids")
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            self._fail(f"returned class id {int(labels.min() if labels.min() < 0 else labels.max())}, outside the "
                       f"vocabulary's {self.num_classes} classes (ids 0..{self.num_classes - 1})")
        conf = conf.astype(np.float32, copy=False)
        if conf.size and not (np.isfinite(conf).all() and conf.min() >= 0.0 and conf.max() <= 1.0):
            self._fail("returned a confidence outside [0, 1] (or NaN); expected probabilities")
        return labels.astype(np.uint8), conf

    def _fail(self, problem: str) -> None:
        raise ValueError(f"teacher.kind={self.kind}: predict {problem}. Fix: see the teacher protocol in "
                         "docs/extending.md.")
