"""What a training worker receives: one typed, picklable object per run (built by the trial driver)."""
from __future__ import annotations

from dataclasses import dataclass

from orchestrator.core.config import ExperimentConfig
from orchestrator.core.selection import Selection

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
    selection: Selection = Selection()    # which epoch's model is the run's best (the sweep's metric and mode)
    test: tuple[Pair, ...] = ()           # scored once, with the best epoch's model (empty: no test split)
    encoder_file: str | None = None       # the pretrained encoder the student starts from (orchestrator.students)
