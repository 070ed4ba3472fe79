"""Plug-in teachers and students: parse an import path, import it, check the class against its protocol.

`teacher.kind` and `model.arch` take a registered name (the built-ins, see orchestrator/teachers/registry.py
and trainables/models.py) or an import path `package.module:Name` (`Name` may be dotted: `module:Outer.Inner`).
This module holds only the pure part: no registry, no Ray, no torch unless a student class is checked (and its
module imported torch already). docs/extending.md describes the protocols for users.

Teacher protocol:  Name(spec: TeacherSpec, vocabulary: Vocabulary).predict(images uint8 [B,H,W,3])
                   -> (labels [B,H,W] class ids of `vocabulary`, confidence [B,H,W] in [0, 1]),
                   plus optional class attributes (`TeacherTraits`) and hooks (`fit_weights`, `weights_problem`).
Student protocol:  Name(num_classes: int, config: ModelConfig) is a torch.nn.Module whose forward(x, need_fp=False)
                   returns logits [B,K,H,W], and with need_fp=True the pair (logits, feature-perturbed logits).

Every error is a ConfigError naming the config key, the value and the fix.
"""
from __future__ import annotations

import difflib
import hashlib
import importlib
import inspect
import re
import sys
from dataclasses import dataclass, fields
from typing import Any

from orchestrator.core.errors import ConfigError

DOCS = "docs/extending.md"
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_IMPORT_PATH = re.compile(rf"^({_IDENT}(?:\.{_IDENT})*):({_IDENT}(?:\.{_IDENT})*)$")
IMPORT_PATH_FORM = "package.module:Class"


@dataclass(frozen=True)
class ImportPath:
    module: str      # "package.module"
    attribute: str   # "Class" or "Outer.Inner"

    def __str__(self) -> str:
        return f"{self.module}:{self.attribute}"


def parse_import_path(value: str) -> ImportPath | None:
    """`package.module:Name` → ImportPath; None when `value` is not of that form (e.g. a registered name)."""
    match = _IMPORT_PATH.match(value) if isinstance(value, str) else None
    return ImportPath(match.group(1), match.group(2)) if match else None


def is_import_path(value: str) -> bool:
    return parse_import_path(value) is not None


def _fail(key: str, value: str, problem: str, fix: str) -> None:
    end = "" if fix.endswith(("?", ".")) else "."
    raise ConfigError(f"config key '{key}': {value!r} {problem}. Fix: {fix}{end}")


def _where_importable() -> str:
    return (f"make the module importable in this process and on every Ray node: install it (pip install -e) or "
            f"put its folder on PYTHONPATH (see {DOCS})")


def load_object(value: str, key: str) -> Any:
    """Import `value` (`package.module:Name.Sub`) and return the object it names, or raise a ConfigError."""
    path = parse_import_path(value)
    if path is None:
        _fail(key, value, "is not an import path", f"write it as {IMPORT_PATH_FORM}, e.g. my_plugins:RuleTeacher")
    try:
        module = importlib.import_module(path.module)
    except ModuleNotFoundError as err:
        missing = err.name or ""
        if path.module == missing or path.module.startswith(missing + "."):
            _fail(key, value, f"names module '{path.module}', which cannot be found ({err})", _where_importable())
        _fail(key, value, f"names module '{path.module}', whose import failed: it imports '{missing}', which "
                          f"is not installed ({err})",
              f"install '{missing}' on every node, or import it inside the class instead of at module level")
    except Exception as err:   # noqa: BLE001 - any error raised by the user's module while it is imported
        _fail(key, value, f"names module '{path.module}', whose import failed ({type(err).__name__}: {err})",
              f"run python -c \"import {path.module}\" to see the traceback, and fix the module")
    obj: Any = module
    walked: list[str] = []
    for part in path.attribute.split("."):
        if not hasattr(obj, part):
            owner = f"module '{path.module}' ({getattr(module, '__file__', '?')})" if not walked else \
                f"'{path.module}:{'.'.join(walked)}'"
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=1)
            hint = f"did you mean {path.module}:{'.'.join([*walked, close[0]])}?" if close else \
                f"name a class defined in {path.module}" + (f":{'.'.join(walked)}" if walked else "")
            _fail(key, value, f"cannot be found: {owner} has no attribute '{part}'", hint)
        obj = getattr(obj, part)
        walked.append(part)
    return obj


def _signature(obj: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):   # some built-in or C types have none: nothing to check
        return None


def _accepts(obj: Any, *args: Any) -> bool:
    sig = _signature(obj)
    if sig is None:
        return True
    try:
        sig.bind(*args)
    except TypeError:
        return False
    return True


# ---- teachers ------------------------------------------------------------------------------------------------

PRETRAINED_KINDS = ("file", "file_or_tag", "none")


@dataclass(frozen=True)
class TeacherTraits:
    """How the orchestrator treats a teacher class: optional class attributes of the same names (these defaults
    when absent). Read from the class, never from an instance, so they are known before a teacher is built."""

    # What teacher.pretrained may be: "file" = a local weights file (its sha256 keys the labels); "file_or_tag" =
    # a file, or a tag naming released weights the class resolves itself (maskclip: an open_clip tag; the tag's
    # text keys the labels); "none" = the teacher needs no weights (teacher.pretrained may be empty; a value is
    # passed through and keys the labels).
    pretrained_kind: str = "file"
    # With teacher.pretrained empty, fit the weights on the benchmark's labeled source corpus (`run.py teacher fit`,
    # or the sweep when missing) through the class's `fit_weights` hook (textseg).
    fits_on_source: bool = False
    # teacher.arch is passed in the spec (and keys the labels); else spec.arch is "" (maskclip: the open_clip model).
    uses_arch: bool = False
    # teacher.sliding_window may be true (maskclip); else setting it is refused.
    supports_sliding_window: bool = False
    # Part of a plug-in's label cache key: change it to relabel when something the module's sha256 cannot see
    # changes (a helper module, a library version). Built-ins ignore it.
    label_version: str = ""

    @classmethod
    def of(cls, teacher_class: type, value: str = "", key: str = "teacher.kind") -> "TeacherTraits":
        """The traits `teacher_class` declares; a ConfigError for a trait of the wrong type or value."""
        found: dict[str, Any] = {}
        for f in fields(cls):
            if not hasattr(teacher_class, f.name):
                continue
            got = getattr(teacher_class, f.name)
            want = type(f.default)
            if type(got) is not want:
                _fail(key, value or teacher_class.__qualname__,
                      f"declares the trait {f.name} = {got!r}, which is not a {want.__name__}",
                      f"set {f.name} to a {want.__name__} in the class body (see {DOCS})")
            found[f.name] = got
        traits = cls(**found)
        if traits.pretrained_kind not in PRETRAINED_KINDS:
            _fail(key, value or teacher_class.__qualname__,
                  f"declares the trait pretrained_kind = {traits.pretrained_kind!r}",
                  f"use one of {', '.join(PRETRAINED_KINDS)}")
        return traits


def check_teacher_class(obj: Any, value: str, key: str = "teacher.kind") -> type:
    """`obj` itself when it follows the teacher protocol, else a ConfigError saying what is missing."""
    if not inspect.isclass(obj):
        _fail(key, value, f"names a {type(obj).__name__}, not a class",
              f"name a teacher class constructed as Name(spec, vocabulary) (see {DOCS})")
    if not callable(getattr(obj, "predict", None)):
        _fail(key, value, "is not a teacher class: it has no predict(images) method",
              f"give the class a method predict(images) -> (labels, confidence) (see {DOCS})")
    if not _accepts(obj, None, None):
        _fail(key, value, f"is not a teacher class: it cannot be constructed as {obj.__name__}(spec, vocabulary) "
                          f"(its signature is {_signature(obj)})",
              f"give it __init__(self, spec, vocabulary) (see {DOCS})")
    traits = TeacherTraits.of(obj, value, key)
    if traits.fits_on_source and not callable(getattr(obj, "fit_weights", None)):
        _fail(key, value, "declares fits_on_source = True but has no fit_weights hook",
              f"add the classmethod fit_weights(images, masks, vocabulary, out_path, *, steps, seed, templates, "
              f"on_step), or drop fits_on_source (see {DOCS})")
    return obj


def load_teacher_class(value: str, key: str = "teacher.kind") -> type:
    return check_teacher_class(load_object(value, key), value, key)


# ---- students ------------------------------------------------------------------------------------------------

def check_student_class(obj: Any, value: str, key: str = "model.arch") -> type:
    """`obj` itself when it follows the student protocol, else a ConfigError saying what is missing."""
    if not inspect.isclass(obj):
        _fail(key, value, f"names a {type(obj).__name__}, not a class",
              f"name a torch.nn.Module subclass constructed as Name(num_classes, config) (see {DOCS})")
    import torch   # only here: a student's module has imported torch already

    if not issubclass(obj, torch.nn.Module):
        _fail(key, value, "is not a student class: it is not a torch.nn.Module subclass",
              f"derive it from torch.nn.Module (see {DOCS})")
    if not _accepts(obj, 1, None):
        _fail(key, value, f"is not a student class: it cannot be constructed as {obj.__name__}(num_classes, "
                          f"config) (its signature is {_signature(obj)})",
              f"give it __init__(self, num_classes, config) (see {DOCS})")
    forward = _signature(obj.forward)
    if forward is not None and "need_fp" not in forward.parameters and \
            not any(p.kind is p.VAR_KEYWORD for p in forward.parameters.values()):
        shown = forward.replace(parameters=list(forward.parameters.values())[1:])   # without self
        _fail(key, value, f"is not a student class: its forward{shown} takes no need_fp argument",
              f"define forward(self, x, need_fp=False), returning (logits, perturbed logits) when need_fp "
              f"(see {DOCS})")
    return obj


def load_student_class(value: str, key: str = "model.arch") -> type:
    return check_student_class(load_object(value, key), value, key)


# ---- what a plug-in's outputs depend on -----------------------------------------------------------------------

def source_digest(cls: type, value: str = "", key: str = "teacher.kind") -> str:
    """sha256 of the file of the module that defines `cls` (its code, as the label cache key sees it)."""
    module = sys.modules.get(cls.__module__)
    path = None
    if module is not None:
        try:
            path = inspect.getsourcefile(module) or getattr(module, "__file__", None)
        except TypeError:   # a built-in module
            path = None
    if not path:
        _fail(key, value or cls.__qualname__, f"is defined in module '{cls.__module__}', which has no source file "
                                              "to digest for the label cache key",
              "define the class in a .py file of an importable module")
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()
