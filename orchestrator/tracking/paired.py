"""Paired comparison of groups of runs against a baseline group (pure: plain numbers in, numbers out).

Trials that share a seed share the labeled split's sampling order, the initialisation and the data order, so
the seed-to-seed spread (up to ±5 mIoU points here) mostly cancels in the difference between two methods run
with the same seed. The paired gain of a group is the mean over seeds of (its score − the baseline's score), with
a two-sided confidence interval from Student's t with n − 1 degrees of freedom (scipy.stats.t), and the count
of seeds that gained.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Sequence

from orchestrator.core.errors import UserError

LEVEL = 0.95


# ---- Student's t ----------------------------------------------------------------------------------

def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with df degrees of freedom (0 < p < 1, df > 0): scipy's."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    from scipy.stats import t   # here, not at the top: only reports with a baseline need it

    return float(t.ppf(p, df))


# ---- the paired gain ------------------------------------------------------------------------------

@dataclass(frozen=True)
class PairedGain:
    mean: float       # mean paired difference (score points)
    low: float        # confidence interval (NaN with a single pair)
    high: float
    pairs: int        # seeds present in both groups
    gained: int       # seeds whose difference is > 0

    def cell(self) -> str:
        """'+2.1 [-0.5, +4.7] 3/3': mean, CI, seeds gained of seeds paired."""
        ci = f" [{self.low:+.1f}, {self.high:+.1f}]" if math.isfinite(self.low) else " [n=1]"
        return f"{self.mean:+.1f}{ci} {self.gained}/{self.pairs}"

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "ci_low": self.low, "ci_high": self.high, "pairs": self.pairs,
                "gained": self.gained}


def paired_gain(differences: Sequence[float], level: float = LEVEL) -> PairedGain:
    """Mean of the paired differences, its t confidence interval, and how many are positive."""
    n = len(differences)
    if n == 0:
        raise ValueError("paired_gain needs at least one pair")
    mean = statistics.fmean(differences)
    gained = sum(1 for d in differences if d > 0)
    if n == 1:
        return PairedGain(mean, math.nan, math.nan, 1, gained)
    half = t_quantile(0.5 + level / 2.0, n - 1) * statistics.stdev(differences) / math.sqrt(n)
    return PairedGain(mean, mean - half, mean + half, n, gained)


def per_seed(seeds: Sequence[str], values: Sequence[float]) -> dict[str, float]:
    """One value per seed (runs of one config with the same seed, e.g. from two merged sweeps, are averaged)."""
    by_seed: dict[str, list[float]] = {}
    for seed, value in zip(seeds, values):
        by_seed.setdefault(seed, []).append(value)
    return {seed: statistics.fmean(v) for seed, v in by_seed.items()}


def differences(group: dict[str, float], baseline: dict[str, float]) -> list[float]:
    """group − baseline on every seed both have (sorted by seed, so the order is stable)."""
    return [group[s] - baseline[s] for s in sorted(set(group) & set(baseline))]


# ---- which group is whose baseline ----------------------------------------------------------------

def parse_baseline(items: Sequence[str] | None) -> dict[str, str]:
    """`--baseline key=value` (repeatable; all must hold) → {key: value}."""
    out: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UserError(f"--baseline '{item}': expected key=value. Fix: write e.g. "
                            f"--baseline train.method=unimatch.")
        out[key.strip()] = value.strip()
    return out


def same_value(a: Any, b: Any) -> bool:
    """Params are strings: '0' and '0.0' are one ood.ratio, 'unimatch' only equals itself."""
    if str(a) == str(b):
        return True
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


def check_baseline(baseline: dict[str, str], keys: list[str], group_keys: list[tuple]) -> None:
    """A baseline names swept keys and values some group has; otherwise one error with the fix."""
    for key, value in baseline.items():
        if key not in keys:
            raise UserError(f"--baseline {key}={value}: '{key}' does not vary between these runs, so no group "
                            f"can be compared with it. Fix: use one of the swept keys: {', '.join(keys) or 'none'}.")
        seen = sorted({str(k[keys.index(key)]) for k in group_keys})
        if not any(same_value(v, value) for v in seen):
            raise UserError(f"--baseline {key}={value}: no run has {key}={value}. Fix: use one of the values "
                            f"the runs have: {', '.join(seen)}.")


def is_baseline(key: tuple, keys: list[str], baseline: dict[str, str]) -> bool:
    return all(same_value(key[keys.index(k)], v) for k, v in baseline.items())


def match_baseline(key: tuple, keys: list[str], baseline: dict[str, str], candidates: Sequence[tuple],
                   inert: str) -> tuple | None:
    """The baseline group a group is compared with: the baseline's values on the baseline keys and the group's
    values on every other key, where a key inert for the baseline (e.g. ood.* of UniMatch) matches anything.
    Among several matches the one with the fewest inert keys wins; a tie has no unique baseline (None)."""
    others = [i for i, k in enumerate(keys) if k not in baseline]
    scored = []
    for cand in candidates:
        if cand == key or not is_baseline(cand, keys, baseline):
            continue
        if all(cand[i] == inert or same_value(cand[i], key[i]) for i in others):
            scored.append((sum(cand[i] == inert and key[i] != inert for i in others), cand))
    if not scored:
        return None
    scored.sort(key=lambda sc: sc[0])
    if len(scored) > 1 and scored[0][0] == scored[1][0]:
        return None
    return scored[0][1]
