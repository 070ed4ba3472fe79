"""Pure decisions a sweep makes before it starts Ray Tune (tested without Ray)."""
from __future__ import annotations

import itertools
from typing import Any

from orchestrator.config import config_from_flat
from orchestrator.errors import SpaceError
from orchestrator.search_space import DISCRETE, SearchSpace

# Keys whose value changes the teacher's labels (or whether a trial needs them). Thresholds, ratios and
# subset sizes are applied when training reads the labels, so they never need a labeling run.
_LABEL_FREE = {"ood.ratio", "ood.teacher_thresh", "ood.num_images", "teacher.batch_size"}


def _affects_labels(key: str) -> bool:
    if key in _LABEL_FREE:
        return False
    return key.startswith(("teacher.", "data.", "ood.")) or key in ("train.method",)


def labeling_configs(space: SearchSpace, base: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat config per distinct labeling request the sweep's trials will make.

    A label-relevant key swept by a continuous distribution could need unboundedly many labeling runs,
    so it is refused with the fix.
    """
    axes = {}
    for key, dist in space.parameters.items():
        if not _affects_labels(key):
            continue
        if dist.kind not in DISCRETE:
            raise SpaceError(f"{space.source}: 'parameters.{key}': a {dist.kind} distribution would need a "
                             f"new labeling run per sampled value. Fix: sweep it with grid or choice.")
        axes[key] = dist.args
    # ood.ratio decides whether the teacher is needed at all: keep the largest swept value.
    ratio = space.parameters.get("ood.ratio")
    ratio_value = max(ratio.args) if ratio and ratio.kind in DISCRETE else (ratio.args[1] if ratio else None)
    seen, out = set(), []
    for combo in itertools.product(*axes.values()):
        flat = {**base, **dict(zip(axes, combo))}
        if ratio_value is not None:
            flat["ood.ratio"] = ratio_value
        cfg = config_from_flat(flat, space.source)
        if not cfg.uses_teacher_labels:
            continue
        signature = tuple(sorted((k, v) for k, v in flat.items() if _affects_labels(k)))
        if signature not in seen:
            seen.add(signature)
            out.append(flat)
    return out


def driver_resources(base: dict[str, Any]) -> dict[str, float]:
    """What the trial's Tune function holds: a sliver, or a whole worker's share in local mode
    (`train.num_workers: 0` trains inside that function)."""
    if base["train.num_workers"] == 0:
        return {"CPU": base["resources.cpus_per_worker"], "GPU": base["resources.gpus_per_worker"]}
    return {"CPU": base["resources.trial_cpus"]}


def per_trial_cpus(base: dict[str, Any]) -> float:
    """CPUs one trial holds: its Tune function plus its Train workers."""
    workers = base["train.num_workers"]
    return driver_resources(base)["CPU"] + workers * base["resources.cpus_per_worker"]


def max_concurrent_trials(space: SearchSpace, base: dict[str, Any], cluster_cpus: float) -> int:
    """As many trials as the cluster's CPUs hold at once (at least 1), unless the space file says."""
    if space.max_concurrent_trials:
        return space.max_concurrent_trials
    return max(1, int(cluster_cpus // per_trial_cpus(base)))


def asha_max_t(space: SearchSpace, base: dict[str, Any]) -> int:
    """ASHA's horizon in epochs (one Tune result per epoch); defaults to train.epochs."""
    return space.scheduler.max_t or int(base["train.epochs"])
