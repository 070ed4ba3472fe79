"""The teacher interface the labeling stage calls: uint8 images in, label ids + confidence out."""
from __future__ import annotations

import hashlib
import os

import numpy as np
import torch
import torch.nn.functional as F

from orchestrator.core.vocab import Vocabulary

# CLIP's pixel statistics; textseg uses them too so both teachers see the same input scale.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_digest_for(pretrained: str, arch: str = "") -> str:
    """sha256 of the weights file; for an open_clip tag (not a file) the sha256 of "arch:tag", since the tag names
    fixed released weights. Kept separate from any model so a cache key can be made without loading a teacher."""
    if os.path.isfile(pretrained):
        return file_sha256(pretrained)
    return hashlib.sha256(f"open_clip:{arch}:{pretrained}".encode()).hexdigest()


def images_to_tensor(images: np.ndarray, device: torch.device, mean: tuple = CLIP_MEAN,
                     std: tuple = CLIP_STD) -> torch.Tensor:
    """uint8 (B,H,W,3) RGB → float (B,3,H,W) normalised per channel (CLIP statistics by default)."""
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4 and images.shape[-1] == 3):
        got = f"{type(images).__name__} {getattr(images, 'dtype', '')} {getattr(images, 'shape', '')}"
        raise ValueError(f"teacher.predict expects np.uint8 images shaped [B,H,W,3] (RGB); got {got}")
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - torch.tensor(mean, device=device).view(1, 3, 1, 1)) / torch.tensor(std, device=device).view(1, 3, 1, 1)


class DenseTeacher:
    """Shared predict(): normalise, optionally resize to `resolution`, get class probabilities at the input size,
    then max/argmax. Subclasses implement `_class_probs(x, out_hw)` → (B, num_classes, H, W) probabilities."""

    def __init__(self, vocab: Vocabulary, device: str, resolution: int):
        if vocab.num_classes > 255:
            raise ValueError(f"vocabulary has {vocab.num_classes} classes; uint8 labels hold at most 255 "
                             "(255 is the ignore value)")
        self.vocab = vocab
        self.device = torch.device(device)
        self.resolution = resolution
        self.mean, self.std = CLIP_MEAN, CLIP_STD  # a subclass may use its model's own statistics

    @property
    def num_classes(self) -> int:
        return self.vocab.num_classes

    def _class_probs(self, x: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """images uint8 [B,H,W,3] RGB → (labels uint8 [B,H,W] class ids, conf float32 [B,H,W] max softmax prob)."""
        x = images_to_tensor(images, self.device, self.mean, self.std)
        out_hw = (x.shape[2], x.shape[3])
        with torch.inference_mode():
            if self.resolution > 0 and out_hw != (self.resolution, self.resolution):
                # antialias: downsizing large photos without it aliases thin structures
                x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear",
                                  align_corners=False, antialias=True)
            probs = self._class_probs(x, out_hw)
            conf, labels = probs.max(dim=1)
        return labels.to(torch.uint8).cpu().numpy(), conf.float().cpu().numpy()
