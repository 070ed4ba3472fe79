"""What a run carries from epoch to epoch, and the checkpoint it is saved in.

A checkpoint is a folder of two files, saved by rank 0 after every epoch:
  model.pt        the student as trained so far: a self-contained student file (trainables.student_file), so the
                  best checkpoint Ray Train keeps is also the model a user takes away;
  train_state.pt  what only training needs: optimizer, epoch, step, the best epoch so far (and its weights
                  while they differ from model.pt), PrevMatch's past models, the resolved config.
Both hold only tensors and plain values (`torch.load(weights_only=True)`).

The best epoch is chosen by the sweep's metric and mode (core.selection: the rule Ray Train's checkpoint
retention uses); `best_val_miou` and PrevMatch keep to val mIoU, as in the papers.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from orchestrator.core.config import key_prefixes
from orchestrator.core.config_roles import RESUMABLE
from orchestrator.core.selection import Selection
from trainables.optim import unwrap
from trainables.prevmatch import restore_snapshots, snapshot_states
from trainables.student_file import MODEL_FILE, make_package

STATE_FILE = "train_state.pt"


@dataclass
class BestEpoch:
    """The epoch whose model a run keeps: best by the selection rule so far, with a copy of its weights."""
    selection: Selection = field(default_factory=Selection)
    epoch: int = 0
    score: float | None = None
    weights: dict[str, torch.Tensor] | None = None   # None until an epoch has been scored

    def offer(self, epoch: int, metrics: dict[str, Any], model: torch.nn.Module) -> bool:
        """Keep `model` as the best if this epoch's score takes the best's place; True when it did."""
        score = self.selection.score(metrics)
        if not self.selection.replaces(score, self.score):
            return False
        self.epoch, self.score = epoch, score
        self.weights = {k: v.detach().to("cpu", copy=True) for k, v in unwrap(model).state_dict().items()}
        return True

    def model(self, current: torch.nn.Module, current_epoch: int) -> torch.nn.Module:
        """The best epoch's model: `current` itself when it is that epoch, else a copy with the kept weights."""
        bare = unwrap(current)
        if self.weights is None or self.epoch == current_epoch:
            return bare
        best = copy.deepcopy(bare)
        best.load_state_dict(self.weights)
        return best


@dataclass
class RunState:
    """What a checkpoint carries forward besides the weights."""
    epoch: int = 0
    step: int = 0
    best: float = 0.0                               # best val mIoU so far (the `best_val_miou` metric)
    snapshots: list = field(default_factory=list)   # PrevMatch: frozen past best models
    new_best: bool = False                          # did the last epoch set a new best val mIoU?
    # The report of the checkpoint's epoch, sent again after a restart: if the node that ran the trial's
    # Tune function died after Train stored the checkpoint but before Tune got the report, that epoch
    # would otherwise never reach Tune or MLflow (MLflow logs each epoch once, so a repeat is skipped).
    last_report: dict = field(default_factory=dict)
    chosen: BestEpoch = field(default_factory=BestEpoch)


def checkpoint_files(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: RunState,
                     flat: dict[str, Any], class_names: tuple[str, ...], metrics: dict[str, Any],
                     prevmatch: bool) -> dict[str, dict[str, Any]]:
    """The checkpoint folder's files, as dicts (trainables.distributed writes them)."""
    numbers = plain_numbers(metrics)
    train_state = {"optimizer": optimizer.state_dict(), "epoch": state.epoch, "step": state.step,
                   "best_val_miou": state.best, "config": flat, "metrics": numbers,
                   "chosen": {"epoch": state.chosen.epoch, "score": state.chosen.score}}
    if state.chosen.epoch != state.epoch and state.chosen.weights is not None:
        train_state["chosen_weights"] = state.chosen.weights   # model.pt holds them when the epochs agree
    if prevmatch:
        # Costly: every snapshot is a full set of weights, so a checkpoint grows to (1 + prev_max_models)
        # models, e.g. ~9 × 240 MB for DeepLabV3+ R101.
        train_state.update(prev_models=snapshot_states(state.snapshots), prev_new_best=state.new_best)
    scalars = {k: v for k, v in numbers.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {MODEL_FILE: make_package(unwrap(model), flat, class_names, state.epoch, scalars), STATE_FILE: train_state}


def restore_state(saved: dict[str, dict[str, Any]] | None, flat: dict[str, Any], model: torch.nn.Module,
                  optimizer: torch.optim.Optimizer, chosen: BestEpoch) -> RunState:
    """Load a checkpoint's files into model and optimizer (after a worker failure or a resume); a fresh
    state without one. `chosen` says which metric and mode pick the best epoch."""
    if saved is None:
        return RunState(chosen=chosen)
    train_state, package = saved[STATE_FILE], saved[MODEL_FILE]
    check_resumable(train_state["config"], flat)
    unwrap(model).load_state_dict(package["state_dict"])
    optimizer.load_state_dict(train_state["optimizer"])
    kept = train_state.get("chosen", {})
    if kept.get("score") is not None:
        chosen.epoch, chosen.score = kept["epoch"], kept["score"]
        chosen.weights = train_state.get("chosen_weights") or package["state_dict"]
    return RunState(train_state["epoch"], train_state["step"], train_state["best_val_miou"],
                    restore_snapshots(train_state.get("prev_models", []), unwrap(model)),
                    train_state.get("prev_new_best", False), train_state.get("metrics", {}), chosen)


# Keys a resumed run may change (the `resumable` role, orchestrator/core/config_roles.py): how long it runs and with
# what resources, not what it computes. Prefixes for str.startswith: a wholly resumable section is `section.`.
RESUMABLE_CHANGES: tuple[str, ...] = key_prefixes(RESUMABLE)


def check_resumable(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """A checkpoint only continues the run it came from (same config but for RESUMABLE_CHANGES)."""
    changed = sorted(k for k in set(saved) | set(current)
                     if saved.get(k) != current.get(k) and not k.startswith(RESUMABLE_CHANGES))
    if changed:
        raise ValueError(f"the checkpoint being resumed was made with other settings ({', '.join(changed)}); "
                         f"start a new run (another --name) instead of resuming this one")


def plain_numbers(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics with numpy scalars as Python numbers: what `torch.load(weights_only=True)` reads back."""
    return {key: value.item() if isinstance(value, np.generic) else value for key, value in metrics.items()}
