"""Running the encoder's pretraining: read the source corpus, pretrain (trainables.pretrain), write the encoder.

A long job before the trials, run by core.long_task (a Ray task when Ray is up, with a progress bar).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

PROGRESS_EVERY = 25   # pretraining steps between progress records


def _pretrain_and_save(flat: dict[str, Any], data_root: str, out_path: str, on_step=None) -> str:
    import torch

    from orchestrator.core.config import config_from_flat
    from orchestrator.data.voc import load_source_corpus, load_vocabulary
    from trainables.distributed import save_file
    from trainables.models import build_student_from_config
    from trainables.pretrain import PretrainSettings, presence_targets, pretrain_encoder

    cfg = config_from_flat(flat, "encoder pretraining")
    images, masks = load_source_corpus(Path(data_root))
    classes = load_vocabulary(data_root, key="source").num_classes
    settings = PretrainSettings(steps=cfg.model.pretrain_steps, seed=cfg.data.seed)
    targets = presence_targets(masks, classes, settings.min_pixels)
    torch.manual_seed(settings.seed)   # the encoder's initial weights too: same request, same encoder
    student = build_student_from_config(classes, cfg.model, read_backbone=False)
    report = None if on_step is None else \
        (lambda step, loss: on_step(step) if step % PROGRESS_EVERY == 0 or step == settings.steps else None)
    state = pretrain_encoder(student.backbone, images, targets, settings, report)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, Path(out_path))   # whole or not at all
    return out_path


def run_pretraining(flat: dict[str, Any], data_root: str, out_path: str, progress=None) -> Path:
    from orchestrator.core.config import config_from_flat
    from orchestrator.core.long_task import run_long_task

    r = config_from_flat(flat, "encoder pretraining").resources
    steps = int(flat["model.pretrain_steps"])
    return Path(run_long_task(_pretrain_and_save, (flat, data_root, out_path), label="encoder pretraining",
                              total=steps, unit="step", cpus=r.cpus_per_teacher, gpus=r.gpus_per_teacher,
                              progress=progress))
