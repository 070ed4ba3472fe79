"""`run.py teacher eval`: how good the teacher's labels are on OOD images that have ground truth."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.core.config import ExperimentConfig
from orchestrator.core.errors import UserError


def evaluate_on_ood(cfg: ExperimentConfig, cache_root: Path, num_images: int) -> dict[str, Any]:
    """Teacher mIoU per class on the first `num_images` OOD images with masks (same-size images)."""
    import torch

    from orchestrator.core.images import load_image, load_mask
    from orchestrator.data.voc import list_ood_corpus, load_vocabulary
    from orchestrator.data.plan import dataset_root, teacher_vocabulary
    from orchestrator.teachers.fit_task import ensure_fitted_teacher, teacher_spec
    from orchestrator.teachers import build_teacher, evaluate_teacher

    root = dataset_root(cfg, cache_root)
    ensure_fitted_teacher(cfg, cache_root, root)
    corpus = [(img, mask) for img, mask in list_ood_corpus(Path(cfg.ood.root) if cfg.ood.root else root / "ood")
              if mask][:num_images]
    if not corpus:
        raise UserError("the OOD corpus has no ground-truth masks to score against. "
                        "Fix: point ood.root at a list file with image and mask columns.")
    torch.set_num_threads(max(1, int(cfg.resources.cpus_per_teacher)))
    vocab = teacher_vocabulary(root, load_vocabulary(root))
    teacher = build_teacher(teacher_spec(cfg, cache_root, root), vocab)
    images = np.stack([load_image(p) for p, _ in corpus])
    masks = np.stack([load_mask(m) for _, m in corpus])
    scores = evaluate_teacher(teacher, images, masks, vocab.num_classes, batch_size=cfg.teacher.batch_size)
    per_class = dict(zip(vocab.names, scores.pop("per_class_iou")))
    return {"images": len(corpus), **scores, "per_class_iou": per_class}
