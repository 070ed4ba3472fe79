"""What teacher to build: a frozen, validated spec (no torch at import, so the CLI and cache can import it cheaply;
validating a spec reads its kind's traits, which imports the kind's class)."""
from __future__ import annotations

from dataclasses import dataclass

from orchestrator.core.config import TEACHER_KINDS, TEMPLATE_SETS
from orchestrator.core.plugins import IMPORT_PATH_FORM, is_import_path


@dataclass(frozen=True)
class TeacherSpec:
    """How to build an open-vocabulary teacher: what a teacher class receives, as `Class(spec, vocabulary)`.

    kind: "textseg" (the benchmark's fitted text-conditioned segmenter), "maskclip" (training-free open_clip ViT),
        or a plug-in's import path package.module:Class (docs/extending.md).
    pretrained: a local weights file; for a kind whose pretrained_kind trait is "file_or_tag" also a tag (maskclip:
        an open_clip pretrained tag; downloads: only on request); "" for a kind that needs no weights.
    arch: the model name for a kind with the uses_arch trait (maskclip: an open_clip model name; a path ending in
        ".json" is registered with open_clip as a model config named after the file stem); "" for the others.
    templates: prompt templates, "single" ("a photo of a {}.") or "imagenet80" (open_clip's 80 ImageNet ones).
    resolution: side of the square the images are resized to before the model (0 = native image size).
    sliding_window: for a kind with the supports_sliding_window trait (maskclip); windows of the model's native
        input size, stride 2/3, averaged probabilities.
    device: torch device string ("cpu", "cuda", "cuda:1").
    """

    kind: str
    pretrained: str
    arch: str = ""
    templates: str = "single"
    resolution: int = 0
    sliding_window: bool = False
    device: str = "cpu"

    def __post_init__(self):
        if self.kind not in TEACHER_KINDS and not is_import_path(self.kind):
            raise ValueError(
                f"unknown teacher kind '{self.kind}'; valid kinds: {', '.join(TEACHER_KINDS)}, or a plug-in's import "
                f"path {IMPORT_PATH_FORM} (teacher.kind)")
        if self.templates not in TEMPLATE_SETS:
            raise ValueError(
                f"unknown prompt template set '{self.templates}'; valid: {', '.join(TEMPLATE_SETS)} "
                "(teacher.templates)")
        if self.resolution < 0:
            raise ValueError(f"teacher resolution {self.resolution} is negative; use 0 (native size) or pixels")
        from orchestrator.teachers.registry import teacher_traits

        traits = teacher_traits(self.kind)
        if not self.pretrained and traits.pretrained_kind != "none":
            raise ValueError(
                f"TeacherSpec(kind='{self.kind}') needs `pretrained`: a weights file"
                + (" or a tag of released weights (maskclip: an open_clip tag)"
                   if traits.pretrained_kind == "file_or_tag" else "")
                + (" written by fit_textseg/save_checkpoint (`run.py teacher fit`)" if traits.fits_on_source else ""))
        if traits.uses_arch and not self.arch:
            raise ValueError(f"TeacherSpec(kind='{self.kind}') needs `arch` (teacher.arch), e.g. an open_clip model "
                             "name such as ViT-B-16 for maskclip")
        if self.sliding_window and not traits.supports_sliding_window:
            raise ValueError(f"sliding_window is a maskclip option; {self.kind} runs on the whole (resized) image "
                             "(set teacher.sliding_window=false)")
