"""What teacher to build: a frozen, validated spec (no torch here, so the CLI and cache can import it cheaply)."""
from __future__ import annotations

from dataclasses import dataclass

from orchestrator.core.config import TEACHER_KINDS, TEMPLATE_SETS


@dataclass(frozen=True)
class TeacherSpec:
    """How to build an open-vocabulary teacher.

    kind: "textseg" (the benchmark's fitted text-conditioned segmenter) or "maskclip" (training-free open_clip ViT).
    pretrained: a local weights file; for maskclip also an open_clip pretrained tag (downloads: only on request).
    arch: open_clip model name for maskclip (ignored by textseg, whose checkpoint holds its own architecture);
        a path ending in ".json" is registered with open_clip as a model config named after the file stem.
    templates: prompt templates, "single" ("a photo of a {}.") or "imagenet80" (open_clip's 80 ImageNet ones).
    resolution: side of the square the images are resized to before the model (0 = native image size).
    sliding_window: maskclip only; windows of the model's native input size, stride 2/3, averaged probabilities.
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
        if self.kind not in TEACHER_KINDS:
            raise ValueError(
                f"unknown teacher kind '{self.kind}'; valid kinds: {', '.join(TEACHER_KINDS)} (teacher.kind)")
        if self.templates not in TEMPLATE_SETS:
            raise ValueError(
                f"unknown prompt template set '{self.templates}'; valid: {', '.join(TEMPLATE_SETS)} "
                "(teacher.templates)")
        if self.resolution < 0:
            raise ValueError(f"teacher resolution {self.resolution} is negative; use 0 (native size) or pixels")
        if not self.pretrained:
            raise ValueError(
                f"TeacherSpec(kind='{self.kind}') needs `pretrained`: a weights file"
                + (" or an open_clip tag" if self.kind == "maskclip" else " written by fit_textseg/save_checkpoint"))
        if self.kind == "maskclip" and not self.arch:
            raise ValueError("TeacherSpec(kind='maskclip') needs `arch`, an open_clip model name such as ViT-B-16")
        if self.kind == "textseg" and self.sliding_window:
            raise ValueError("sliding_window is a maskclip option; textseg runs on the whole (resized) image")
