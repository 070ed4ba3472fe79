"""Which number of a run a report compares: its best epoch, its last epoch, or the mean of its last k epochs.

The best epoch's val mIoU is what the tables showed first, but picking the maximum over epochs on the val set
itself is optimistic (more so the noisier the curve). The last epoch's score is what a fixed budget gives; the
mean of the last k epochs also averages out epoch-to-epoch wobble. Every trial logs `val_miou` per epoch (step =
epoch) and `best_val_miou`, so all three come from what is already in MLflow.
"""
from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from typing import Sequence

from orchestrator.core.errors import UserError

PER_EPOCH = "val_miou"
BEST = "best_val_miou"
TEST = "test_miou"      # the best-on-val model scored once on the held-out test split (at the run's last epoch)
CHOICES = "best | final | lastK (e.g. last3) | test"


@dataclass(frozen=True)
class Score:
    kind: str          # best | final | last | test
    k: int = 1         # epochs averaged by `last`

    @property
    def needs_history(self) -> bool:
        return self.kind == "last"

    @property
    def column(self) -> str:
        return {"best": BEST, "final": "final_val_miou", "test": TEST}.get(self.kind, f"last{self.k}_val_miou")

    @property
    def label(self) -> str:
        """What the tables say they show."""
        if self.kind == "best":
            return "best-epoch val mIoU (%), the maximum over epochs (optimistic)"
        if self.kind == "final":
            return "final-epoch val mIoU (%)"
        if self.kind == "test":
            return ("test mIoU (%) of each run's best-on-val model (selected on val, scored once on the "
                    "held-out test split)")
        return f"val mIoU (%) averaged over the last {self.k} epochs"

    @property
    def class_prefix(self) -> str:
        """The per-class IoU metrics that go with the score."""
        return "test_iou." if self.kind == "test" else "val_iou."

    @property
    def per_class_label(self) -> str:
        return ("Per-class test IoU (%) of the best-on-val model" if self.kind == "test"
                else "Per-class val IoU (%) at the last epoch")

    @property
    def short(self) -> str:
        return {"best": "best-epoch", "final": "final-epoch", "test": "test"}.get(self.kind,
                                                                                 f"last-{self.k}-epoch mean")


def parse_score(text: str) -> Score:
    value = (text or "best").strip().lower()
    if value in ("best", "final", "test"):
        return Score(value)
    match = re.fullmatch(r"last(\d+)", value)
    if match and int(match.group(1)) >= 1:
        return Score("last", int(match.group(1)))
    raise UserError(f"--score {text}: unknown score. Fix: use one of {CHOICES}.")


def last_k_mean(history: Sequence[tuple[int, float]], k: int) -> float | None:
    """Mean of the last k epochs' values; an epoch logged twice (a resume) counts once, its newest value."""
    by_step = dict(sorted(history, key=lambda sv: sv[0]))    # later entries of a step overwrite earlier ones
    if not by_step:
        return None
    steps = sorted(by_step)[-k:]
    return statistics.fmean(by_step[s] for s in steps)


def score_of(metrics: dict[str, float], history: Sequence[tuple[int, float]] | None, score: Score) -> float | None:
    """The run's score, or None when it has none yet (no epoch reported)."""
    if score.kind == "best":
        return metrics.get(BEST)
    if score.kind == "final":
        return metrics.get(PER_EPOCH)          # MLflow's latest value = the highest step = the last epoch
    if score.kind == "test":
        return metrics.get(TEST)               # None: stopped early, or a dataset without a test split
    return last_k_mean(history or (), score.k)
