"""Which epoch of a run is its best, and which run of a sweep is the sweep's best: one rule for all of them.

The rule is Ray Train's checkpoint retention (`checkpoint_score_attribute`/`checkpoint_score_order`): the
better score wins and, between equal scores, the later epoch. The training loop (the model it scores on the
test split), the MLflow model of a trial (the checkpoint Train kept) and the sweep's best model all apply it,
so they always name the same epoch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, TypeVar

T = TypeVar("T")
MODES = ("max", "min")


@dataclass(frozen=True)
class Selection:
    """Which epoch's model is a run's best: the sweep's metric and mode."""
    metric: str = "val_miou"
    mode: str = "max"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"selection mode {self.mode!r}: use one of {', '.join(MODES)}")

    def score(self, metrics: dict[str, Any]) -> float | None:
        """The metric's value in `metrics`, or None when it is missing or not a finite number."""
        value = metrics.get(self.metric)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
        return float(value)

    def replaces(self, new: float | None, best: float | None) -> bool:
        """Whether a later `new` score takes the place of the `best` so far (ties go to the later one)."""
        if new is None:
            return False
        if best is None:
            return True
        return new >= best if self.mode == "max" else new <= best

    def best(self, items: Iterable[T], metrics_of=lambda item: item) -> T | None:
        """The best of `items` in order (epochs oldest first, or runs), or None when none has a score."""
        chosen, chosen_score = None, None
        for item in items:
            score = self.score(metrics_of(item))
            if self.replaces(score, chosen_score):
                chosen, chosen_score = item, score
        return chosen


@dataclass(frozen=True)
class ModelPolicy:
    """Which trials of a sweep get their best model logged to MLflow (the space file's `log_models`):
    every trial's (`all`, the default), none (`none`), or the k best trials' by the selection rule (`topK`)."""
    kind: str = "all"    # all | none | top
    k: int = 0           # with `top`

    TEXT = "all | none | topK (e.g. top3)"

    @classmethod
    def parse(cls, text: Any) -> "ModelPolicy":
        value = str(text).strip().lower()
        if value in ("all", "none"):
            return cls(value)
        if value.startswith("top") and value[3:].isdigit() and int(value[3:]) >= 1:
            return cls("top", int(value[3:]))
        raise ValueError(f"{text!r} is not a model policy: use {cls.TEXT}")

    @property
    def at_trial_end(self) -> bool:
        """`all` logs each trial's model when it ends; `topK` waits for the sweep's end, when the ranks are known."""
        return self.kind == "all"

    def chosen(self, trial_scores: dict[str, float | None], selection: Selection) -> list[str]:
        """The trial ids whose models are logged, best first, from each trial's best score (None: none yet)."""
        if self.kind == "none":
            return []
        ranked = [t for t, s in trial_scores.items() if s is not None]
        ranked.sort(key=lambda t: trial_scores[t], reverse=selection.mode == "max")
        return ranked if self.kind == "all" else ranked[:self.k]
