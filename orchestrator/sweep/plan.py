"""Pure decisions a sweep makes before it starts Ray Tune (tested without Ray)."""
from __future__ import annotations

import itertools
from typing import Any

from orchestrator.core.config import config_from_flat
from orchestrator.core.errors import SpaceError
from orchestrator.core.nodes import CUSTOM_SHARE
from orchestrator.labels.job import LABEL_KEYS, LabelRequest
from orchestrator.sweep.space import DISCRETE, SearchSpace

# Keys that decide whether a trial reads teacher labels at all (beside the keys of the labels themselves).
_NEEDS_LABELS = ("train.method", "ood.label_source")


def _labeling_axis(key: str) -> bool:
    return key in LABEL_KEYS or key in _NEEDS_LABELS


def labeling_configs(space: SearchSpace, base: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat config per distinct LabelRequest that the sweep's trials will make (in sweep order).

    A label key swept by a continuous distribution could need unboundedly many labeling runs, so it is
    refused with the fix.
    """
    axes = {}
    for key, dist in space.parameters.items():
        if not _labeling_axis(key):
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
        request = LabelRequest.from_config(cfg)
        if cfg.uses_teacher_labels and request not in seen:
            seen.add(request)
            out.append(flat)
    return out


def driver_resources(base: dict[str, Any]) -> dict[str, float]:
    """What the trial's Tune function holds: a sliver, or a whole worker's share in local mode
    (`train.num_workers: 0` trains inside that function)."""
    custom = {base["resources.trial_resource"]: CUSTOM_SHARE} if base.get("resources.trial_resource") else {}
    if base["train.num_workers"] == 0:
        return {"CPU": base["resources.cpus_per_worker"], "GPU": base["resources.gpus_per_worker"], **custom}
    return {"CPU": base["resources.trial_cpus"], **custom}


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
