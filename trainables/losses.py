"""Loss terms of UniMatch and SemiOVS, exactly as in docs/method.md §3.

Conventions: labels are [B,H,W] class indices, `ignore` maps are [B,H,W] with 255 = ignore (anything else
= valid), confidences are [B,H,W] floats in [0,1], CutMix boxes are [B,H,W] bool/uint8 (1 = inside).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from orchestrator.core.config import METHODS
from orchestrator.core.masks import IGNORE



@dataclass(frozen=True)
class Targets:
    """Pseudo-label targets for one view: hard label, its confidence, and the ignore map."""

    label: Tensor
    conf: Tensor
    ignore: Tensor

    def select(self, index: Tensor) -> "Targets":
        return Targets(self.label[index], self.conf[index], self.ignore[index])


@dataclass(frozen=True)
class ViewLogits:
    """One stream's logits [B,C,H,W] on its two strong views and on its feature-perturbed weak view."""

    s1: Tensor
    s2: Tensor
    fp: Tensor


@dataclass(frozen=True)
class LossTerms:
    """One step's loss terms. None marks an absent term: its stream had no images this step (u, ood), or no
    past model guides the step yet (prev)."""

    x: Tensor
    u: Tensor | None = None
    ood: Tensor | None = None
    prev: Tensor | None = None


@dataclass(frozen=True)
class LossWeights:
    lambda_ood: float           # λ of L_ood (train.lambda_ood)
    lambda_prev: float = 0.0    # λ_prev of L_prev (PrevMatch, this epoch's value)


def supervised_ce(logits: Tensor, target: Tensor) -> Tensor:
    """Mean CE over pixels whose label is not 255 (L_x); 0 instead of NaN if a batch has no valid pixel."""
    valid = target != IGNORE
    if not bool(valid.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target.long(), ignore_index=IGNORE)


def conf_weighted_ce(logits: Tensor, target: Tensor, conf: Tensor | float, ignore: Tensor, tau: float) -> Tensor:
    """sum_px CE * [conf >= tau] * [ignore != 255] / count[ignore != 255].

    The divisor counts *all* valid pixels, not only confident ones, so low confidence shrinks the loss
    (docs/method.md §3). A target of 255 contributes 0 instead of indexing out of range.
    """
    ce = F.cross_entropy(logits, target.long(), ignore_index=IGNORE, reduction="none")
    valid = ignore != IGNORE
    conf_t = torch.as_tensor(conf, device=logits.device)
    keep = (conf_t >= tau) & valid
    return (ce * keep).sum() / valid.sum().clamp(min=1)


def mix_by_box(a: Tensor | float, b: Tensor, box: Tensor) -> Tensor:
    """`a` outside the box, `b` inside. `box` is [B,H,W]; a/b may be [B,H,W] or [B,C,H,W] (images)."""
    inside = box.bool()
    while inside.dim() < b.dim():
        inside = inside.unsqueeze(1)
    a_t = torch.as_tensor(a, dtype=b.dtype, device=b.device)
    return torch.where(inside, b, a_t)


def mix_targets(outside: Targets, inside: Targets, box: Tensor) -> Targets:
    return Targets(
        mix_by_box(outside.label.long(), inside.label.long(), box),
        mix_by_box(outside.conf.float(), inside.conf.float(), box),
        mix_by_box(outside.ignore.long(), inside.ignore.long(), box),
    )


def pseudo_targets(logits: Tensor, ignore: Tensor) -> Targets:
    """Confidence and argmax of softmax(logits), detached: the teacher side of self-training."""
    conf, label = logits.detach().softmax(dim=1).max(dim=1)
    return Targets(label, conf, ignore)


def ood_label_targets(y_o: Tensor, ign_o: Tensor, c_o: Tensor | None = None) -> Targets:
    """OOD teacher labels. Confidence is 1 (every teacher pixel trusted, as in the official code) unless
    `c_o` is given; then pixels with c_o < tau drop out of the loss like unconfident ID pixels."""
    conf = torch.ones_like(y_o, dtype=torch.float) if c_o is None else c_o.float()
    # Ignored pixels may carry 255 in the label; map them to 0 so CE never sees an invalid class.
    label = torch.where(ign_o == IGNORE, torch.zeros_like(y_o), y_o).long()
    return Targets(label, conf, ign_o)


def three_view_loss(logits: ViewLogits, t1: Targets, t2: Targets, t_w: Targets, tau: float) -> Tensor:
    """0.25 * CWL(strong 1) + 0.25 * CWL(strong 2) + 0.5 * CWL(feature-perturbed weak view)."""
    return (
        0.25 * conf_weighted_ce(logits.s1, t1.label, t1.conf, t1.ignore, tau)
        + 0.25 * conf_weighted_ce(logits.s2, t2.label, t2.conf, t2.ignore, tau)
        + 0.5 * conf_weighted_ce(logits.fp, t_w.label, t_w.conf, t_w.ignore, tau)
    )


def id_stream_loss(
    logits: ViewLogits, weak: Targets, partner: Targets, boxes: tuple[Tensor, Tensor], tau: float
) -> Tensor:
    """L_u: strong views are supervised by weak-view labels CutMixed with the partner's labels."""
    box1, box2 = boxes
    t1, t2 = mix_targets(weak, partner, box1), mix_targets(weak, partner, box2)
    return three_view_loss(logits, t1, t2, weak, tau)


def ood_stream_loss(
    logits: ViewLogits, ood: Targets, id_weak: Targets, boxes: tuple[Tensor, Tensor], tau: float
) -> Tensor:
    """L_o: OOD strong views carry a pasted ID patch, so inside the box the ID pseudo-labels apply.

    `id_weak` and the boxes must already be paired with the OOD batch (row i = ID image i mod B_u).
    """
    box1, box2 = boxes
    t1, t2 = mix_targets(ood, id_weak, box1), mix_targets(ood, id_weak, box2)
    return three_view_loss(logits, t1, t2, ood, tau)


def combine_losses(method: str, terms: LossTerms, weights: LossWeights) -> Tensor:
    """supervised: L_x; unimatch: (L_x + L_u) / 2; semiovs: (L_x + L_u + λ L_o) / (2 + λ).

    With PrevMatch guidance (`terms.prev`, docs/method.md §5) λ_prev·L_prev joins the numerator and λ_prev the
    denominator: (L_x + L_u + λ_prev L_prev + λ L_o) / (2 + λ_prev + λ).
    An absent term (None) drops out of both numerator and denominator, so semiovs with an empty OOD batch
    equals unimatch instead of silently scaling the loss (and the lr) by 2 / (2 + λ); likewise no L_prev
    (no past model yet) leaves the plain UniMatch/SemiOVS total untouched, bit for bit.
    """
    if method == "supervised":
        return terms.x
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    if weights.lambda_ood < 0:
        raise ValueError(f"lambda_ood must be >= 0, got {weights.lambda_ood}")
    if weights.lambda_prev < 0:
        raise ValueError(f"lambda_prev must be >= 0, got {weights.lambda_prev}")
    total, weight = terms.x, 1.0
    if terms.u is not None:
        total, weight = total + terms.u, weight + 1.0
    if terms.u is not None and terms.prev is not None:  # guidance targets the ID unlabeled images only
        total, weight = total + weights.lambda_prev * terms.prev, weight + weights.lambda_prev
    if method == "semiovs" and terms.ood is not None:
        total, weight = total + weights.lambda_ood * terms.ood, weight + weights.lambda_ood
    return total / weight
