"""Fit the benchmark's textseg teacher on the labeled source corpus (wide vocabulary) and save it.

Runs as a Ray task when Ray is up (so a cluster can give it a GPU), else in this process.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def load_source_corpus(data_root: Path) -> tuple[np.ndarray, np.ndarray]:
    from orchestrator.data.voc import list_ood_corpus, load_image, load_mask

    pairs = list_ood_corpus(data_root / "source")
    images = np.stack([load_image(img) for img, _ in pairs])
    masks = np.stack([load_mask(mask) for _, mask in pairs])
    return images, masks


def _fit_and_save(data_root: str, out_path: str, steps: int, templates: str, seed: int, threads: int) -> str:
    import torch

    from orchestrator.data.voc import load_vocabulary
    from orchestrator.teachers import fit_textseg, save_checkpoint

    torch.set_num_threads(max(1, threads))
    images, masks = load_source_corpus(Path(data_root))
    vocab = load_vocabulary(data_root, key="source")
    ckpt = fit_textseg(images, masks, vocab, steps=steps, seed=seed, templates=templates)  # FitConfig overrides
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(ckpt, out_path)
    return out_path


def fit_benchmark_teacher(data_root: Path, out_path: Path, *, steps: int, templates: str, seed: int,
                          cpus: float, gpus: float) -> Path:
    import ray

    args = (str(data_root), str(out_path), steps, templates, seed, max(1, int(cpus)))
    if ray.is_initialized():
        task = ray.remote(_fit_and_save).options(num_cpus=max(1, int(cpus)), num_gpus=gpus)
        return Path(ray.get(task.remote(*args)))
    return Path(_fit_and_save(*args))
