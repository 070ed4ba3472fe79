"""Joint image+mask augmentation of UniMatch/SemiOVS (docs/method.md §2), deterministic by seed.

Images are HxWx3 uint8 numpy arrays, masks HxW (or HxWxC, e.g. label+ground truth) uint8 arrays. Every op
takes an explicit `np.random.Generator`; nothing touches the global numpy/torch/random state, so a sample's
views are a pure function of (sample, seed). Geometric ops move mask pixels without interpolation: a mask
only ever holds values it had before, plus the padding fill (255 labeled/OOD, 254 ID unlabeled).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageFilter
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FILL_LABELED = 255  # labeled and OOD crops: padding is ignored like a VOC boundary
FILL_UNLABELED = 254  # ID unlabeled crops: padding is marked so the ignore map can find it


class JointOp(Protocol):
    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]: ...


def resize_nearest(mask: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Nearest-neighbour resize by index gathering: exact for label maps with any trailing channels."""
    h, w = mask.shape[:2]
    rows = np.minimum(((np.arange(out_h) + 0.5) * h / out_h).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(out_w) + 0.5) * w / out_w).astype(np.int64), w - 1)
    return mask[rows[:, None], cols[None, :]]


class RandomRescale:
    """Long side -> randint(lo*L, hi*L) (inclusive), aspect kept; image bilinear, mask nearest."""

    def __init__(self, lo: float = 0.5, hi: float = 2.0) -> None:
        if not 0 < lo <= hi:
            raise ValueError(f"RandomRescale needs 0 < lo <= hi, got ({lo}, {hi})")
        self.lo, self.hi = lo, hi

    def __call__(self, image, mask, rng):
        h, w = mask.shape[:2]
        long_side = max(h, w)
        new_long = int(rng.integers(int(long_side * self.lo), int(long_side * self.hi) + 1))
        new_long = max(new_long, 1)
        if h > w:
            oh, ow = new_long, max(int(w * new_long / h + 0.5), 1)
        else:
            oh, ow = max(int(h * new_long / w + 0.5), 1), new_long
        resized = np.array(Image.fromarray(image).resize((ow, oh), Image.BILINEAR))
        return resized, resize_nearest(mask, oh, ow)


class PadTo:
    """Pad right/bottom up to `crop` in each dimension: image with 0, mask with `mask_fill`."""

    def __init__(self, crop: int, mask_fill: int) -> None:
        self.crop, self.mask_fill = crop, mask_fill

    def __call__(self, image, mask, rng):
        h, w = mask.shape[:2]
        ph, pw = max(self.crop - h, 0), max(self.crop - w, 0)
        if ph == 0 and pw == 0:
            return image, mask
        extra = [(0, 0)] * (mask.ndim - 2)
        image = np.pad(image, [(0, ph), (0, pw), (0, 0)], constant_values=0)
        mask = np.pad(mask, [(0, ph), (0, pw)] + extra, constant_values=self.mask_fill)
        return image, mask


class RandomCrop:
    """Uniform top-left over all positions (inclusive); the input must be at least crop x crop (PadTo)."""

    def __init__(self, crop: int) -> None:
        self.crop = crop

    def __call__(self, image, mask, rng):
        h, w = mask.shape[:2]
        if h < self.crop or w < self.crop:
            raise ValueError(f"RandomCrop({self.crop}) got a {h}x{w} input; put PadTo({self.crop}, ...) first")
        top = int(rng.integers(0, h - self.crop + 1))
        left = int(rng.integers(0, w - self.crop + 1))
        sl = (slice(top, top + self.crop), slice(left, left + self.crop))
        return image[sl], mask[sl]


class RandomHFlip:
    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image, mask, rng):
        if rng.random() < self.p:
            return np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(mask[:, ::-1])
        return image, mask


class Compose:
    def __init__(self, ops: Sequence[JointOp]) -> None:
        self.ops = list(ops)

    def __call__(self, image, mask, rng):
        for op in self.ops:
            image, mask = op(image, mask, rng)
        return image, mask


def geometric(
    image: np.ndarray, mask: np.ndarray, crop: int, mask_fill: int, rng: np.random.Generator,
    scale_range: tuple[float, float] = (0.5, 2.0),
) -> tuple[np.ndarray, np.ndarray]:
    """The weak view shared by all streams: rescale -> pad -> crop -> hflip (numpy in, numpy out)."""
    ops = Compose([RandomRescale(*scale_range), PadTo(crop, mask_fill), RandomCrop(crop), RandomHFlip(0.5)])
    return ops(image, mask, rng)


def strong_view(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """ColorJitter(0.5,0.5,0.5,0.25) p=0.8 -> grayscale p=0.2 -> Gaussian blur p=0.5, sigma~U(0.1,2)."""
    pil = Image.fromarray(image)
    if rng.random() < 0.8:
        brightness, contrast, saturation = rng.uniform(0.5, 1.5, size=3)
        hue = rng.uniform(-0.25, 0.25)
        jitters = [
            lambda im: TF.adjust_brightness(im, float(brightness)),
            lambda im: TF.adjust_contrast(im, float(contrast)),
            lambda im: TF.adjust_saturation(im, float(saturation)),
            lambda im: TF.adjust_hue(im, float(hue)),
        ]
        for i in rng.permutation(4):  # torchvision's ColorJitter also applies the four in random order
            pil = jitters[i](pil)
    if rng.random() < 0.2:
        pil = TF.rgb_to_grayscale(pil, num_output_channels=3)
    if rng.random() < 0.5:
        pil = pil.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.1, 2.0))))
    return np.array(pil)


def cutmix_box(
    size: int, rng: np.random.Generator, p: float = 0.5,
    area: tuple[float, float] = (0.02, 0.4), aspect: tuple[float, float] = (0.3, 1 / 0.3),
) -> np.ndarray:
    """UniMatch's CutMix box as a size x size uint8 mask (1 = inside); all zeros with probability 1 - p.

    area ~ U(area)·size², then (aspect r, top-left) are redrawn until the w=√(area/r) by h=√(area·r)
    box fits inside the crop.
    """
    box = np.zeros((size, size), dtype=np.uint8)
    if rng.random() > p:
        return box
    target = rng.uniform(*area) * size * size
    while True:
        r = rng.uniform(*aspect)
        w, h = int(np.sqrt(target / r)), int(np.sqrt(target * r))
        left, top = int(rng.integers(0, size)), int(rng.integers(0, size))
        if left + w <= size and top + h <= size:
            break
    box[top:top + h, left:left + w] = 1
    return box


def to_tensor_normalized(image: np.ndarray) -> Tensor:
    """HxWx3 uint8 -> 3xHxW float32 normalised with the ImageNet mean/std."""
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (t - mean) / std


def weak_pair(
    image: np.ndarray, mask: np.ndarray, crop: int, mask_fill: int, rng: np.random.Generator
) -> tuple[Tensor, Tensor]:
    """Labeled sample -> (x [3,crop,crop] normalised, y [crop,crop] int64 with 255 = ignore)."""
    image, mask = geometric(image, mask, crop, mask_fill, rng)
    return to_tensor_normalized(image), torch.from_numpy(np.ascontiguousarray(mask)).long()


def unlabeled_views(
    image: np.ndarray, mask: np.ndarray, crop: int, mask_fill: int, rng: np.random.Generator,
    *, gt: np.ndarray | None = None,
) -> dict[str, Tensor]:
    """Unlabeled sample (ID with mask_fill=254, OOD with 255) -> the tensors of one stream.

    Returns u_w, u_s1, u_s2 [3,crop,crop]; ign [crop,crop] uint8 (255 where the mask holds `mask_fill`:
    crop padding for ID, padding + teacher-ignored pixels for OOD); box1, box2 [crop,crop] uint8;
    mask [crop,crop] int64 (the transformed mask: the OOD label, unused for ID).
    A ground-truth mask `gt` (255 = none) rides along as a second channel, so it gets exactly the image's
    geometry; it comes back as `gt` [crop,crop] int64 (padding = mask_fill, i.e. 255 for OOD). The extra
    channel draws no random numbers: the views are the same with or without it.
    """
    stacked = mask if gt is None else np.stack([mask, gt], axis=-1)
    image, stacked = geometric(image, stacked, crop, mask_fill, rng)
    label = stacked if gt is None else stacked[..., 0]
    s1, s2 = strong_view(image, rng), strong_view(image, rng)
    out = {
        "u_w": to_tensor_normalized(image),
        "u_s1": to_tensor_normalized(s1),
        "u_s2": to_tensor_normalized(s2),
        "ign": torch.from_numpy(np.where(label == mask_fill, 255, 0).astype(np.uint8)),
        "box1": torch.from_numpy(cutmix_box(crop, rng)),
        "box2": torch.from_numpy(cutmix_box(crop, rng)),
        "mask": torch.from_numpy(np.ascontiguousarray(label)).long(),
    }
    if gt is not None:
        out["gt"] = torch.from_numpy(np.ascontiguousarray(stacked[..., 1])).long()
    return out
