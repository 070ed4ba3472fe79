"""PrevMatch guidance (docs/method.md §5): past best models label the ID unlabeled images as a second teacher.

Two halves, both pure torch without I/O:
  * the snapshot list, kept by the train loop: a frozen copy of the student is appended at the start of an
    epoch that follows a new best val mIoU, at most `max_models` of them (oldest dropped);
  * the loss, called from recipe.run_step: a random ensemble of K snapshots labels [u_w; m_w], the labels are
    CutMixed like UniMatch's ID targets and supervise the same student outputs (strong views, FP weak view).
The random draws use their own torch.Generator, so guidance never shifts the student's global RNG stream.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from trainables.losses import Targets, ViewLogits, id_stream_loss, pseudo_targets


@dataclass
class PrevGuidance:
    """What run_step needs for one epoch of guidance."""

    models: list[nn.Module]         # frozen snapshots (eval mode, no grad), oldest first, on the student's device
    generator: torch.Generator      # draws K, which snapshots, and their Dirichlet weights
    weight: float                   # λ_prev of this epoch
    max_k: int = 3
    thresh: float = 0.9


def triangle_weight(epoch: int, epochs: int) -> float:
    """λ_prev for 0-based `epoch` of `epochs`: rises linearly to 1 at E/2, then falls back towards 0.

    The official code puts the peak at E // 2; for an even E (80 in the paper) the two are the same.
    """
    half = epochs / 2
    return epoch / half if epoch < half else 1.0 - (epoch - half) / half


def make_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def freeze(model: nn.Module) -> nn.Module:
    """A detached copy for inference: eval mode, no grad, no leftover .grad buffers."""
    frozen = copy.deepcopy(model)
    for p in frozen.parameters():
        p.grad = None
        p.requires_grad_(False)
    return frozen.eval()


def update_snapshots(snapshots: list[nn.Module], model: nn.Module, new_best: bool,
                     max_models: int) -> list[nn.Module]:
    """The list for the next epoch: with a frozen copy of `model` appended if the last epoch set a new best."""
    if not new_best:
        return snapshots
    return (snapshots + [freeze(model)])[-max_models:]


def snapshot_states(snapshots: list[nn.Module]) -> list[dict[str, Tensor]]:
    return [s.state_dict() for s in snapshots]


def restore_snapshots(states: list[dict[str, Tensor]], template: nn.Module) -> list[nn.Module]:
    """Rebuild snapshots from checkpointed state dicts on the template's architecture and device."""
    snapshots = []
    for state in states:
        snapshot = freeze(template)
        snapshot.load_state_dict(state)
        snapshots.append(snapshot)
    return snapshots


def sample_ensemble(n_models: int, max_k: int, generator: torch.Generator) -> tuple[list[int], list[float]]:
    """K ~ U{1..min(max_k, n)} distinct snapshot indices and weights ~ Dirichlet(1, …, 1)."""
    k = int(torch.randint(1, min(max_k, n_models) + 1, (1,), generator=generator))
    chosen = torch.randperm(n_models, generator=generator)[:k].tolist()
    # normalised Exp(1) draws are exactly Dirichlet(1, …, 1)
    draws = torch.empty(k, dtype=torch.float64).exponential_(generator=generator)
    return chosen, (draws / draws.sum()).tolist()


def ensemble_logits(models: list[nn.Module], weights: list[float], x: Tensor) -> Tensor:
    """Σ w_k f_k(x) without grad; runs under the caller's autocast like the student's forwards."""
    with torch.no_grad():
        total = weights[0] * models[0](x)
        for model, w in zip(models[1:], weights[1:]):
            total = total + w * model(x)
    return total


def prev_targets(guide: PrevGuidance, batch: dict[str, Tensor]) -> tuple[Targets, Targets]:
    """The ensemble's pseudo-labels for u_w and for the mix partner m_w (with their ID ignore maps)."""
    chosen, weights = sample_ensemble(len(guide.models), guide.max_k, guide.generator)
    logits = ensemble_logits([guide.models[i] for i in chosen], weights, torch.cat([batch["u_w"], batch["m_w"]]))
    on_u, on_m = logits.split([batch["u_w"].shape[0], batch["m_w"].shape[0]])
    return pseudo_targets(on_u, batch["ign_u"]), pseudo_targets(on_m, batch["ign_m"])


def prev_loss(guide: PrevGuidance, batch: dict[str, Tensor],
              p_us1: Tensor, p_us2: Tensor, p_uw_fp: Tensor) -> Tensor:
    """L_prev = 0.25 CWL(p_us1, y1_prev) + 0.25 CWL(p_us2, y2_prev) + 0.5 CWL(p_uw_fp, yh_prev), at prev_thresh.

    Same CutMix (box1/box2: u_w outside, m_w inside) and ignore maps as the ID targets of L_u.
    """
    on_u, on_m = prev_targets(guide, batch)
    return id_stream_loss(ViewLogits(p_us1, p_us2, p_uw_fp), on_u, on_m, (batch["box1"], batch["box2"]), guide.thresh)
