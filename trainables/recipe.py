"""One training step per method (supervised / UniMatch / SemiOVS), pure torch, no I/O.

Follows the per-step pseudo-code of docs/method.md §3 line by line, including its order:
  1. OOD strong views get the ID strong patch (box1/box2 of the paired ID image) BEFORE
  2. the ID strong views are CutMixed with the mix partner M;
  3. partner labels from an eval-mode, no-grad forward;
  4. one train-mode forward over [x; u_w; o_w] with feature perturbation (BN sees all three streams);
  5. one forward over [u_s1; u_s2], one over [o_s1; o_s2];
  6. with PrevMatch guidance (`prev`, docs/method.md §5), an ensemble of past models labels [u_w; m_w] and
     supervises the ID outputs of step 5 (trainables/prevmatch.py); the OOD stream gets no guidance.
The caller's tensors are never modified (mixing is out of place).

Batch keys (tensors already on the device):
  labeled      x [B,3,H,W], y [B,H,W]
  ID unlabeled u_w, u_s1, u_s2 [Bu,3,H,W], ign_u [Bu,H,W], box1, box2 [Bu,H,W]
  mix partner  m_w, m_s1, m_s2 [Bu,3,H,W], ign_m [Bu,H,W]
  OOD          o_w, o_s1, o_s2 [Bo,3,H,W], ign_o [Bo,H,W], y_o [Bo,H,W] (teacher labels), c_o optional,
               gt_o [Bo,H,W] optional ground truth (255 = none): only compared with the OOD labels, never a target
Bo may be 0 or differ from Bu: OOD image i is paired with ID image i mod Bu.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from orchestrator.core.config import METHODS
from trainables.losses import (
    LossTerms,
    LossWeights,
    Targets,
    ViewLogits,
    combine_losses,
    id_stream_loss,
    mix_by_box,
    ood_label_targets,
    ood_stream_loss,
    pseudo_targets,
    supervised_ce,
)
from trainables.metrics import label_agreement_counts
from trainables.prevmatch import PrevGuidance, prev_loss

OOD_LABEL_SOURCES = ("teacher", "self")
# Bump when a training step learns something else for the same config (a loss term, the mixing, the order):
# figures in the docs made before then are stale (orchestrator/sweep/fingerprint.py).
RECIPE_VERSION = "1"
ID_KEYS = ("u_w", "u_s1", "u_s2", "ign_u", "box1", "box2", "m_w", "m_s1", "m_s2", "ign_m")
OOD_KEYS = ("o_w", "o_s1", "o_s2", "ign_o")


@dataclass(frozen=True)
class StepOptions:
    """Everything a step reads besides the model and the batch."""

    method: str                         # train.method
    tau: float                          # train.conf_thresh
    lambda_ood: float                   # train.lambda_ood
    ood_label_source: str               # ood.label_source
    prev: PrevGuidance | None = None    # this epoch's PrevMatch guidance (None = off)


@dataclass(frozen=True)
class WeakPass:
    """What steps 1-4 hand to the unlabeled loss terms. OOD tensors are empty without OOD images."""

    u_strong: tuple[Tensor, Tensor]     # ID strong views, CutMixed with the partner
    o_strong: tuple[Tensor, Tensor]     # OOD strong views with the paired ID patch
    pair: Tensor                        # pair[i] = ID image of OOD image i
    partner: Targets | None             # partner labels (None without ID images)
    weak: Targets                       # ID weak-view pseudo-labels
    p_uw_fp: Tensor
    p_ow: Tensor
    p_ow_fp: Tensor


def check_batch(method: str, batch: dict[str, Tensor], ood_label_source: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    if ood_label_source not in OOD_LABEL_SOURCES:
        raise ValueError(
            f"unknown ood_label_source {ood_label_source!r}; valid: {', '.join(OOD_LABEL_SOURCES)}"
        )
    need = ["x", "y"]
    if method != "supervised":
        need += ID_KEYS
    if method == "semiovs" and "o_w" in batch and batch["o_w"].shape[0] > 0:
        need += OOD_KEYS + (("y_o",) if ood_label_source == "teacher" else ())
    missing = [k for k in need if k not in batch]
    if missing:
        raise KeyError(f"run_step({method!r}) batch lacks keys {missing}; it has {sorted(batch)}")
    if method != "supervised" and batch["m_w"].shape[0] != batch["u_w"].shape[0]:
        raise ValueError(
            f"mix partner batch has {batch['m_w'].shape[0]} images but the ID batch has "
            f"{batch['u_w'].shape[0]}; draw M with the same batch size as U"
        )


def mask_ratio(t: Targets, tau: float) -> float:
    """Share of valid pixels whose pseudo-label confidence reaches tau."""
    valid = t.ignore != 255
    return float(((t.conf >= tau) & valid).sum()) / max(int(valid.sum()), 1)


def eval_forward(model: nn.Module, x: Tensor) -> Tensor:
    """Forward in eval mode without grad (BN running stats), restoring the previous mode."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(x)
    model.train(was_training)
    return out


def mix_strong_views(batch: dict[str, Tensor], b_o: int) -> tuple[Tensor, ...]:
    """Steps 1-2: CutMix images. Returns (u_s1, u_s2, o_s1, o_s2, pair), pair[i] = ID image of OOD image i."""
    u_s1, u_s2, box1, box2 = batch["u_s1"], batch["u_s2"], batch["box1"], batch["box2"]
    b_u = u_s1.shape[0]
    pair = torch.arange(b_o, device=u_s1.device) % max(b_u, 1)
    o_s1, o_s2 = (batch["o_s1"], batch["o_s2"]) if b_o else (u_s1[:0], u_s2[:0])
    if b_o and b_u:
        # 1. OOD strong views receive the *un-mixed* ID strong patch, inside the paired ID image's boxes.
        o_s1 = mix_by_box(o_s1, u_s1[pair], box1[pair])
        o_s2 = mix_by_box(o_s2, u_s2[pair], box2[pair])
    # 2. Standard UniMatch mixing of the ID strong views with the partner's strong views.
    u_s1 = mix_by_box(u_s1, batch["m_s1"], box1)
    u_s2 = mix_by_box(u_s2, batch["m_s2"], box2)
    return u_s1, u_s2, o_s1, o_s2, pair


def run_step(model: nn.Module, batch: dict[str, Tensor], opts: StepOptions) -> tuple[Tensor, dict[str, float]]:
    """Compute the step's total loss (call .backward() on it) and float logs.

    logs: loss, loss_x, loss_u, loss_ood, mask_ratio (valid ID pixels with conf >= tau),
    ood_conf_ratio (valid OOD pixels whose OOD label passes tau; 1 for teacher labels without c_o);
    with gt_o also the pixel counts of metrics.OOD_GT_COUNTS (OOD labels the loss uses vs ground truth);
    with `opts.prev` also loss_prev (0 while it holds no past model).
    """
    check_batch(opts.method, batch, opts.ood_label_source)
    x, y = batch["x"], batch["y"]
    zero = x.new_zeros(())
    if opts.method == "supervised":
        loss_x = supervised_ce(model(x), y)
        return loss_x, make_logs(loss_x, loss_x, zero, zero, 0.0, 0.0)

    has_id = batch["u_w"].shape[0] > 0
    has_ood = opts.method == "semiovs" and "o_w" in batch and batch["o_w"].shape[0] > 0
    loss_x, state = weak_forward(model, batch, has_ood)
    loss_u, ratio, loss_p = id_terms(model, batch, state, opts) if has_id else (zero, 0.0, None)
    loss_o, ood_ratio, gt_counts = ood_terms(model, batch, state, opts) if has_ood else (zero, 0.0, {})

    terms = LossTerms(loss_x, u=loss_u if has_id else None, ood=loss_o if has_ood else None, prev=loss_p)
    weights = LossWeights(opts.lambda_ood, opts.prev.weight if opts.prev is not None else 0.0)
    loss = combine_losses(opts.method, terms, weights)
    logs = {**make_logs(loss, loss_x, loss_u, loss_o, ratio, ood_ratio), **gt_counts}
    if opts.prev is not None:
        logs["loss_prev"] = float(loss_p.detach()) if loss_p is not None else 0.0
    return loss, logs


def weak_forward(model: nn.Module, batch: dict[str, Tensor], has_ood: bool) -> tuple[Tensor, WeakPass]:
    """Steps 1-4; returns L_x and what the unlabeled terms need."""
    x, y = batch["x"], batch["y"]
    b_x, b_u = x.shape[0], batch["u_w"].shape[0]
    b_o = batch["o_w"].shape[0] if has_ood else 0
    u_s1, u_s2, o_s1, o_s2, pair = mix_strong_views(batch, b_o)
    partner = None
    if b_u:  # 3. Partner labels from the eval-mode model.
        partner = pseudo_targets(eval_forward(model, batch["m_w"]), batch["ign_m"])

    # 4. One train-mode pass; BN normalises labeled, ID and OOD weak images together.
    streams = [x, batch["u_w"]] + ([batch["o_w"]] if has_ood else [])
    preds, preds_fp = model(torch.cat(streams), need_fp=True)
    sizes = [b_x, b_u, b_o]
    p_x, p_uw, p_ow = preds.split(sizes)
    _, p_uw_fp, p_ow_fp = preds_fp.split(sizes)
    loss_x = supervised_ce(p_x, y)
    weak = pseudo_targets(p_uw, batch["ign_u"])
    return loss_x, WeakPass((u_s1, u_s2), (o_s1, o_s2), pair, partner, weak, p_uw_fp, p_ow, p_ow_fp)


def id_terms(
    model: nn.Module, batch: dict[str, Tensor], state: WeakPass, opts: StepOptions
) -> tuple[Tensor, float, Tensor | None]:
    """5a. ID strong views: L_u, the mask ratio, and L_prev (step 6) when past models guide the step."""
    p_us1, p_us2 = model(torch.cat(state.u_strong)).chunk(2)
    logits = ViewLogits(p_us1, p_us2, state.p_uw_fp)
    loss_u = id_stream_loss(logits, state.weak, state.partner, (batch["box1"], batch["box2"]), opts.tau)
    ratio = mask_ratio(state.weak, opts.tau)
    loss_p = None
    if opts.prev is not None and opts.prev.models:  # 6. past models' labels on the same ID outputs
        loss_p = prev_loss(opts.prev, batch, p_us1, p_us2, state.p_uw_fp)
    return loss_u, ratio, loss_p


def ood_terms(
    model: nn.Module, batch: dict[str, Tensor], state: WeakPass, opts: StepOptions
) -> tuple[Tensor, float, dict[str, float]]:
    """5b. OOD strong views: L_o, the OOD confidence ratio, and the ground-truth pixel counts (with gt_o)."""
    p_os1, p_os2 = model(torch.cat(state.o_strong)).chunk(2)
    if opts.ood_label_source == "teacher":
        ood = ood_label_targets(batch["y_o"], batch["ign_o"], batch.get("c_o"))
    else:  # naive baseline: the student labels the OOD stream itself, thresholded by tau in the loss
        ood = pseudo_targets(state.p_ow, batch["ign_o"])
    logits = ViewLogits(p_os1, p_os2, state.p_ow_fp)
    if batch["u_w"].shape[0]:
        boxes = (batch["box1"][state.pair], batch["box2"][state.pair])
        loss_o = ood_stream_loss(logits, ood, state.weak.select(state.pair), boxes, opts.tau)
    else:  # no ID image to paste from: the OOD strong views stayed unmixed
        no_box = torch.zeros_like(ood.ignore, dtype=torch.bool)
        loss_o = ood_stream_loss(logits, ood, ood, (no_box, no_box), opts.tau)
    gt_counts = {}
    if "gt_o" in batch:  # the pixels the weak-view loss term trains on, checked against ground truth
        used = (ood.conf >= opts.tau) & (ood.ignore != 255)
        gt_counts = label_agreement_counts(ood.label, used, batch["gt_o"])
    return loss_o, mask_ratio(ood, opts.tau), gt_counts


def make_logs(
    loss: Tensor, loss_x: Tensor, loss_u: Tensor, loss_o: Tensor, ratio: float, ood_ratio: float
) -> dict[str, float]:
    return {
        "loss": float(loss.detach()),
        "loss_x": float(loss_x.detach()),
        "loss_u": float(loss_u.detach()),
        "loss_ood": float(loss_o.detach()),
        "mask_ratio": ratio,
        "ood_conf_ratio": ood_ratio,
    }
