"""Pure decisions a sweep makes before it starts Ray Tune (tested without Ray)."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from orchestrator.core.config import config_from_flat, keys_with
from orchestrator.core.config_roles import DECIDES_LABELS
from orchestrator.core.errors import SpaceError
from orchestrator.core.nodes import CUSTOM_SHARE
from orchestrator.labels.job import LABEL_KEYS, LabelRequest
from orchestrator.students.encoder import ENCODER_KEYS, EncoderRequest, wants_pretraining
from orchestrator.sweep.space import DISCRETE, SearchSpace

# Keys that decide whether a trial reads teacher labels at all (beside the keys of the labels themselves): the
# `decides_labels` role (orchestrator/core/config_roles.py), but for ood.ratio, which labeling_configs plans by its
# largest swept value instead (so a continuous ratio needs no labeling run per sampled value).
_NEEDS_LABELS: tuple[str, ...] = tuple(key for key in keys_with(DECIDES_LABELS) if key != "ood.ratio")


def _distinct_configs(space: SearchSpace, base: dict[str, Any], axis_keys: set[str], what: str, request_of,
                      needed, adjust=None) -> list[dict[str, Any]]:
    """One flat config per distinct request (`request_of(cfg)`) that the sweep's trials will make (in sweep
    order), among the trials that `needed` says make one. Only the swept keys in `axis_keys` are varied; one
    swept by a continuous distribution could need unboundedly many runs of `what`, so it is refused."""
    axes = {}
    for key, dist in space.parameters.items():
        if key not in axis_keys:
            continue
        if dist.kind not in DISCRETE:
            raise SpaceError(f"{space.source}: 'parameters.{key}': a {dist.kind} distribution would need a "
                             f"new {what} per sampled value. Fix: sweep it with grid or choice.")
        axes[key] = dist.args
    seen, out = set(), []
    for combo in itertools.product(*axes.values()):
        flat = {**base, **dict(zip(axes, combo))}
        if adjust is not None:
            adjust(flat)
        cfg = config_from_flat(flat, space.source)
        request = request_of(cfg)
        if needed(cfg) and request not in seen:
            seen.add(request)
            out.append(flat)
    return out


def labeling_configs(space: SearchSpace, base: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat config per distinct LabelRequest that the sweep's trials will make (in sweep order)."""
    # ood.ratio decides whether the teacher is needed at all: keep the largest swept value.
    ratio = space.parameters.get("ood.ratio")
    ratio_value = max(ratio.args) if ratio and ratio.kind in DISCRETE else (ratio.args[1] if ratio else None)

    def with_ratio(flat: dict[str, Any]) -> None:
        if ratio_value is not None:
            flat["ood.ratio"] = ratio_value

    return _distinct_configs(space, base, set(LABEL_KEYS) | set(_NEEDS_LABELS), "labeling run",
                             LabelRequest.from_config, lambda cfg: cfg.uses_teacher_labels, with_ratio)


def encoder_configs(space: SearchSpace, base: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat config per distinct EncoderRequest (a student encoder to pretrain) of the sweep's trials."""
    return _distinct_configs(space, base, set(ENCODER_KEYS), "encoder pretraining", EncoderRequest.from_config,
                             wants_pretraining)


# What a trial's Tune function reserves beside its CPUs: it only builds its TorchTrainer and waits on it, so it
# holds no CPU (a CPU sliver would keep a second one-CPU trial off a 2-CPU machine). It reserves Ray's `memory`
# instead, for every process of the trial that holds no CPU: itself, Train's controller and that controller's
# helper actors, which Ray places on the same node (1.4 GiB together, measured). Without it, a node offering
# memory but no CPUs (a cluster's head) would take every trial's driver. A sweep resumed from a state written
# before the key existed reserves what was reserved then.
MIB = 1024 ** 2
OLD_DRIVER_MIB = 256


def driver_memory_bytes(base: dict[str, Any]) -> int:
    return int(base.get("resources.trial_driver_mib", OLD_DRIVER_MIB)) * MIB


def driver_resources(base: dict[str, Any]) -> dict[str, float]:
    """What the trial's Tune function holds: memory (and `resources.trial_cpus`, 0 by default), or a whole
    worker's share in local mode (`train.num_workers: 0` trains inside that function)."""
    custom = {base["resources.trial_resource"]: CUSTOM_SHARE} if base.get("resources.trial_resource") else {}
    memory = driver_memory_bytes(base)
    if base["train.num_workers"] == 0:
        return {"CPU": base["resources.cpus_per_worker"], "GPU": base["resources.gpus_per_worker"],
                "memory": memory, **custom}
    return {"CPU": base["resources.trial_cpus"], "memory": memory, **custom}


def per_trial_cpus(base: dict[str, Any]) -> float:
    """CPUs one trial holds: its Tune function plus its Train workers."""
    workers = base["train.num_workers"]
    return driver_resources(base)["CPU"] + workers * base["resources.cpus_per_worker"]


def per_trial_gpus(base: dict[str, Any]) -> float:
    """GPUs one trial holds (in local mode its Tune function holds the one worker's)."""
    return max(1, base["train.num_workers"]) * base["resources.gpus_per_worker"]


@dataclass(frozen=True)
class Packing:
    """How many trials run at once, and the sentence that says why (the sweep's first line)."""
    concurrent: int
    reason: str


def trial_packing(space: SearchSpace, base: dict[str, Any], cluster_cpus: float, cluster_gpus: float = 0.0,
                  cluster_memory: float | None = None) -> Packing:
    """As many trials as the cluster's CPUs (and GPUs, and Ray `memory` for the trials' drivers) hold at once (at
    least 1), unless the space file or --max-concurrent says; never more than the sweep has trials."""
    trials = space.num_trials()
    workers = base["train.num_workers"]
    cpus = per_trial_cpus(base)
    holds = (f"{workers} Train worker(s) × {base['resources.cpus_per_worker']:g} CPU + "
             f"{driver_resources(base)['CPU']:g} CPU for its Tune function" if workers else
             f"{cpus:g} CPU for its Tune function, which trains in-process (train.num_workers=0)")
    fit = int(cluster_cpus // cpus) if cpus > 0 else trials
    why = f"{cluster_cpus:g} CPU(s) ÷ {cpus:g} CPU per trial ({holds})"
    gpus = per_trial_gpus(base)
    if gpus > 0:
        fit = min(fit, int(cluster_gpus // gpus))
        why += f", {cluster_gpus:g} GPU(s) ÷ {gpus:g} GPU per trial"
    memory = driver_memory_bytes(base)
    if cluster_memory is not None and cluster_memory < memory:
        raise SpaceError(f"resources.trial_driver_mib: a trial's driver reserves {memory // MIB} MiB of Ray memory, "
                         f"and Ray has {cluster_memory / MIB:.0f} MiB. Fix: --set resources.trial_driver_mib="
                         f"{max(64, int(cluster_memory // MIB))} (or give Ray more memory)")
    if cluster_memory is not None and int(cluster_memory // memory) < fit:
        fit = int(cluster_memory // memory)
        why += (f", {cluster_memory / 1024 ** 3:.1f} GiB of Ray memory ÷ {memory / 1024 ** 3:.2f} GiB per trial "
                f"driver (resources.trial_driver_mib)")
    if space.max_concurrent_trials:
        return Packing(min(space.max_concurrent_trials, trials),
                       f"max_concurrent_trials={space.max_concurrent_trials} (the cluster holds {max(1, fit)}: {why})")
    concurrent = max(1, min(fit, trials))
    if fit > trials:
        why += f"; the sweep has only {trials} trial(s)"
    return Packing(concurrent, why)


def max_concurrent_trials(space: SearchSpace, base: dict[str, Any], cluster_cpus: float,
                          cluster_gpus: float = 0.0) -> int:
    return trial_packing(space, base, cluster_cpus, cluster_gpus).concurrent


def asha_max_t(space: SearchSpace, base: dict[str, Any]) -> int:
    """ASHA's horizon in epochs (its time attribute is the reported `epoch`); defaults to train.epochs."""
    return space.scheduler.max_t or int(base["train.epochs"])
