"""Pretraining a student's encoder before any trial, the way the paper's students start from ImageNet weights.

The task is image-level classification of a labeled corpus disjoint from the target split: which classes an
image shows (multi-label, a class counts when it covers at least `min_pixels` pixels), predicted from the
encoder's deepest features, average-pooled. On the `shapes` benchmark the corpus is its source corpus (the
wide vocabulary: targets and their look-alike distractors, every style), so the encoder learns to tell shapes
apart without ever seeing a target image or label. Pure torch, no I/O: the caller reads the corpus and writes
the encoder's state dict (orchestrator.students).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainables.augment import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class PretrainSettings:
    steps: int                 # model.pretrain_steps
    seed: int                  # data.seed: the same corpus and settings give the same encoder
    batch_size: int = 32
    lr: float = 0.05           # SGD, momentum 0.9, poly decay (the training recipe's optimiser)
    weight_decay: float = 1e-4
    min_pixels: int = 20       # a class "is in" an image when it covers at least this many pixels


def presence_targets(masks: np.ndarray, num_classes: int, min_pixels: int) -> np.ndarray:
    """[N, num_classes - 1] float targets: which of the classes 1..K-1 each mask shows (background left out)."""
    counts = np.stack([np.bincount(m[m != 255].ravel(), minlength=num_classes)[:num_classes] for m in masks])
    return (counts[:, 1:] >= min_pixels).astype(np.float32)


def normalized(images: np.ndarray) -> torch.Tensor:
    """uint8 [N,H,W,3] -> the float input the student is trained on (ImageNet statistics)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def deepest_features(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The encoder's last feature map (a student's `backbone` returns its feature maps, shallow to deep)."""
    feats = encoder(x)
    return feats[-1] if isinstance(feats, (list, tuple)) else feats


def pretrain_encoder(encoder: nn.Module, images: np.ndarray, targets: np.ndarray, settings: PretrainSettings,
                     on_step: Callable[[int, float], None] | None = None) -> dict[str, torch.Tensor]:
    """Fit `encoder` (in place) with a linear head on pooled features; returns the encoder's state dict.
    Each step draws a batch with replacement and flips half of it horizontally."""
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    x_all, y_all = normalized(images), torch.from_numpy(targets)
    encoder.train()
    with torch.no_grad():
        channels = deepest_features(encoder, x_all[:2]).shape[1]
    head = nn.Linear(channels, y_all.shape[1])
    params = list(encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.SGD(params, lr=settings.lr, momentum=0.9, weight_decay=settings.weight_decay)
    for step in range(settings.steps):
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * (1 - step / settings.steps) ** 0.9
        index = torch.from_numpy(rng.integers(0, len(x_all), settings.batch_size))
        x, y = x_all[index], y_all[index]
        flip = torch.from_numpy(rng.random(settings.batch_size) < 0.5).view(-1, 1, 1, 1)
        x = torch.where(flip, x.flip(-1), x)
        logits = head(deepest_features(encoder, x).mean(dim=(2, 3)))
        loss = F.binary_cross_entropy_with_logits(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if on_step is not None:
            on_step(step + 1, float(loss.detach()))
    return {key: value.detach().cpu() for key, value in encoder.state_dict().items()}
