"""What a training worker receives: one typed, picklable object per run (built by the trial driver)."""
from __future__ import annotations

from dataclasses import dataclass

from orchestrator.core.config import ExperimentConfig

Pair = tuple[str, "str | None"]   # (image path, mask path or None)


@dataclass(frozen=True)
class TrialInput:
    config: ExperimentConfig
    labeled: tuple[Pair, ...]
    unlabeled: tuple[Pair, ...]
    val: tuple[Pair, ...]
    ood: tuple[tuple[str, str], ...]      # (image_id, image path); empty when the run has no OOD stream
    ood_masks: tuple[str | None, ...]     # OOD ground truth, parallel to `ood`: only measured against
    class_names: tuple[str, ...]
    label_store: str | None               # the cache entry of the run's teacher labels, when it reads them
    files_dir: str | None                 # rank 0 writes per-epoch pictures and broken_samples.txt here
    launched_at: float = 0.0              # when the trainer was built (startup_seconds of the first epoch)
    mode: str = "train"                   # train | tune-local | local (see trainables.distributed)
    driver_node: str = ""                 # the node of the process that built the trainer (recorded in MLflow)
