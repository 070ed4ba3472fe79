"""SGD recipe of UniMatch/SemiOVS: momentum 0.9, wd 1e-4, head at lr x lr_multi, poly decay every step."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DDP/DataParallel wrappers."""
    return model.module if hasattr(model, "module") else model


def param_groups(model: nn.Module, lr: float, lr_multi: float) -> list[dict[str, Any]]:
    """[backbone at lr, everything else at lr*lr_multi]; `lr_scale` lets apply_poly_lr keep the ratio.

    A student without a `backbone` submodule (or with an empty one, or nothing outside it) gets one group of all
    its parameters at the base lr: train.lr_multi is for a pretrained encoder under a fresh head, and such a
    student declares no encoder (docs/extending.md)."""
    named = list(unwrap(model).named_parameters())
    backbone = [p for n, p in named if n.startswith("backbone.")]
    head = [p for n, p in named if not n.startswith("backbone.")]
    if not backbone or not head:
        return [{"params": [p for _, p in named], "lr": lr, "lr_scale": 1.0}]
    return [
        {"params": backbone, "lr": lr, "lr_scale": 1.0},
        {"params": head, "lr": lr * lr_multi, "lr_scale": lr_multi},
    ]


def build_optimizer(
    model: nn.Module, lr: float, lr_multi: float, *, momentum: float = 0.9, weight_decay: float = 1e-4
) -> torch.optim.SGD:
    return torch.optim.SGD(param_groups(model, lr, lr_multi), lr=lr, momentum=momentum, weight_decay=weight_decay)


def poly_lr(base: float, it: int, total: int, power: float = 0.9) -> float:
    """base * (1 - it/total)^power; it is clamped to [0, total] so a resumed/overrun step never goes negative."""
    if total <= 0:
        raise ValueError(f"poly_lr needs total > 0 iterations, got {total}")
    frac = min(max(it, 0), total) / total
    return base * (1.0 - frac) ** power


def apply_poly_lr(optimizer: torch.optim.Optimizer, base: float, it: int, total: int, power: float = 0.9) -> float:
    """Set every group's lr to poly_lr(...) * its lr_scale before step `it` (0-based); returns the base lr."""
    lr = poly_lr(base, it, total, power)
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    return lr
