"""Fitting the textseg teacher on a labeled "source" corpus with a wide vocabulary (as SED was trained on
COCO-Stuff), and writing its checkpoint. The checkpoint holds only tensors and plain Python values so it loads
with torch.load(weights_only=True)."""
from __future__ import annotations

import logging
import math
import os
import tempfile
from dataclasses import asdict, dataclass, replace
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from orchestrator.core.config import DataConfig, TeacherConfig
from orchestrator.teachers.base import images_to_tensor
from orchestrator.teachers.prompts import embed_concepts, get_templates, vocab_concepts
from orchestrator.teachers.textseg_model import TextSegNet, TextTowerCfg, build_text_tower
from orchestrator.core.vocab import Vocabulary

log = logging.getLogger(__name__)
CHECKPOINT_FORMAT = "orchestrator.teachers.textseg/1"
DEVICE = torch.device("cpu")  # the caller sets torch threads


@dataclass(frozen=True, kw_only=True)
class FitConfig:
    """How `fit_textseg` fits. `steps`, `seed` and `templates` mirror teacher.fit_steps, data.seed and
    teacher.templates and take their defaults from the typed config (`from_config`); the other fields are
    hyper-parameters of the fit alone."""

    # 16 images per step on 2,000 64×64 source images: 1500 steps (12 passes) take ~95 s on 2 idle CPU cores
    # (measured: 600 steps 41 s, OOD mIoU 23.5; 1800 steps 112 s, OOD mIoU 31.5 — quality still rises with steps).
    # Shapes benchmark, 1500 steps, 1 thread, OOD mIoU on 1,000 OOD images (target vocabulary), one fit each:
    # plain CE 33.8; lr 1e-2 33.0; class_balance 0.5 42.3; class_balance 0.5 + channel_shuffle 0.5 44.5.
    # Plain CE mostly learns hue: on its own training images it calls 43% of triangle pixels trapezoid.
    steps: int                # teacher.fit_steps
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 30
    seed: int                 # data.seed
    log_every: int = 100
    templates: str            # teacher.templates
    embed_dim: int = 64
    width: int = 24           # pixel-encoder base width
    class_balance: float = 0.5  # CE class weights ∝ pixel frequency^-class_balance (0 = plain CE)
    channel_shuffle: float = 0.5  # per-image probability of a random RGB permutation (breaks the hue shortcut)

    def __post_init__(self):
        for key in ("steps", "batch_size", "log_every", "embed_dim", "width"):
            if getattr(self, key) < 1:
                raise ValueError(f"fit_textseg: {key}={getattr(self, key)} must be >= 1")
        if self.lr <= 0:
            raise ValueError(f"fit_textseg: lr={self.lr} must be > 0")
        get_templates(self.templates)  # validates the name

    @classmethod
    def from_config(cls, teacher: TeacherConfig, data: DataConfig, **overrides) -> "FitConfig":
        """steps, seed and templates from the experiment config; `overrides` replace any field."""
        return cls(**{"steps": teacher.fit_steps, "seed": data.seed, "templates": teacher.templates, **overrides})


@dataclass(frozen=True)
class Prompts:
    """The fitting vocabulary's concepts embedded by the seeded text tower, and the class each one votes for."""

    tower_cfg: TextTowerCfg
    concepts: list[str]
    embeddings: torch.Tensor
    owners: torch.Tensor
    num_classes: int


def _check_data(images: np.ndarray, masks: np.ndarray, num_classes: int) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"fit_textseg: images must be np.uint8 [N,H,W,3], got {images.dtype} {images.shape}")
    if masks.dtype != np.uint8 or masks.shape != images.shape[:3]:
        raise ValueError(f"fit_textseg: masks must be np.uint8 [N,H,W] matching images {images.shape[:3]}, "
                         f"got {masks.dtype} {masks.shape}")
    bad = np.setdiff1d(np.unique(masks), np.r_[np.arange(num_classes), 255])
    if bad.size:
        raise ValueError(f"fit_textseg: masks hold ids {bad.tolist()} outside the vocabulary's {num_classes} "
                         "classes (255 = ignore); fit with the vocabulary the masks were labeled with")


def _class_weights(masks: np.ndarray, num_classes: int, power: float) -> Optional[torch.Tensor]:
    """Per-class CE weights ∝ freq^-power, scaled so the average pixel weight is 1 (None when power is 0)."""
    if power <= 0:
        return None
    counts = np.bincount(masks[masks != 255].ravel(), minlength=num_classes)[:num_classes].astype(np.float64)
    freq = np.maximum(counts, 1) / max(1.0, counts.sum())
    w = freq ** -power
    w /= float((w * freq).sum())
    return torch.tensor(w, dtype=torch.float32)


def _shuffle_channels(x: np.ndarray, gen: np.random.Generator, p: float) -> np.ndarray:
    """Each image's RGB channels randomly permuted with probability p: colour stops predicting the class,
    so shape has to (distractors share their look-alike's hue by design)."""
    out = np.array(x)
    for i in np.flatnonzero(gen.random(len(out)) < p):
        out[i] = out[i][..., gen.permutation(3)]
    return out


def _lr_factor(step: int, cfg: FitConfig) -> float:
    """Linear warm-up, then cosine decay to zero: robust with no tuning across corpus sizes."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _embed_vocab(vocab: Vocabulary, cfg: FitConfig) -> Prompts:
    tower_cfg = TextTowerCfg(embed_dim=cfg.embed_dim)
    tower, tokenizer = build_text_tower(tower_cfg)
    concepts, owners = vocab_concepts(vocab)
    embeddings = embed_concepts(tower, tokenizer, concepts, get_templates(cfg.templates), DEVICE)
    return Prompts(tower_cfg, concepts, embeddings, torch.tensor(owners, dtype=torch.long), vocab.num_classes)


def _init_net(cfg: FitConfig, prompts: Prompts) -> TextSegNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = TextSegNet(cfg.embed_dim, cfg.width).train()
    net.whiten_text_adapter(prompts.embeddings)
    # channels_last: the batch arrives in that layout (images_to_tensor permutes NHWC), and convolutions whose
    # weights match it cost ~10% fewer core-seconds per step on CPU (measured: 0.135 vs 0.147 s, 1 thread)
    return net.to(memory_format=torch.channels_last)


def _sample_batch(images: np.ndarray, masks: np.ndarray, gen: np.random.Generator,
                  cfg: FitConfig) -> tuple[torch.Tensor, torch.Tensor]:
    idx = gen.choice(len(images), size=min(cfg.batch_size, len(images)), replace=False)
    x, y = images[idx], masks[idx]
    if gen.random() < 0.5:  # horizontal flip only: vertical flips would change what "triangle" looks like
        x, y = x[:, :, ::-1], y[:, :, ::-1]
    if cfg.channel_shuffle > 0:
        x = _shuffle_channels(x, gen, cfg.channel_shuffle)
    return images_to_tensor(x, DEVICE), torch.from_numpy(np.ascontiguousarray(y)).long()


def _train(net: TextSegNet, images: np.ndarray, masks: np.ndarray, prompts: Prompts, cfg: FitConfig,
           on_log: Optional[Callable[[dict], None]]) -> tuple[float, float]:
    """The fitting loop. Returns the mean loss and the pixel accuracy over the last 10% of steps."""
    gen = np.random.default_rng(cfg.seed)
    weight = _class_weights(masks, prompts.num_classes, cfg.class_balance)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg))
    losses: list[float] = []
    correct = total = 0
    tail = max(1, cfg.steps // 10)  # "final loss" = mean over the last 10% of steps: one batch is too noisy
    for step in range(cfg.steps):
        x, y = _sample_batch(images, masks, gen, cfg)
        logits = net.class_logits(x, prompts.embeddings, prompts.owners, prompts.num_classes)
        logits = F.interpolate(logits, size=y.shape[1:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, y, weight=weight, ignore_index=255)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step >= cfg.steps - tail:
            valid = y != 255
            correct += int((logits.argmax(1) == y)[valid].sum())
            total += int(valid.sum())
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            record = {"step": step + 1, "loss": float(np.mean(losses[-cfg.log_every:])),
                      "lr": sched.get_last_lr()[0]}
            log.info("textseg fit step %(step)d loss %(loss).4f lr %(lr).2e", record)
            if on_log is not None:
                on_log(record)
    return float(np.mean(losses[-tail:])), correct / max(1, total)


def fit_textseg(images: np.ndarray, masks: np.ndarray, vocab: Vocabulary, *, config: Optional[FitConfig] = None,
                on_log: Optional[Callable[[dict], None]] = None, **overrides) -> dict:
    """Fit a textseg teacher; returns its checkpoint dict (see `save_checkpoint`).

    images uint8 [N,H,W,3] RGB, masks uint8 [N,H,W] with ids of `vocab` (255 = ignore). Keyword overrides
    (steps=, batch_size=, lr=, seed=, log_every=, templates=, ...) replace fields of `config`, by default
    `FitConfig.from_config` of the default experiment config; unknown ones raise.
    `on_log` receives {"step", "loss", "lr"} every `log_every` steps (e.g. to forward to MLflow).
    Uses CPU (the caller sets torch threads); deterministic for a given seed and torch build.
    """
    if config is None:
        cfg = FitConfig.from_config(TeacherConfig(), DataConfig(), **overrides)
    else:
        cfg = replace(config, **overrides)
    _check_data(images, masks, vocab.num_classes)
    prompts = _embed_vocab(vocab, cfg)
    net = _init_net(cfg, prompts)
    final_loss, final_pixel_acc = _train(net, images, masks, prompts, cfg, on_log)
    return {
        "format": CHECKPOINT_FORMAT,
        "model": {k: v.detach().contiguous().clone() for k, v in net.state_dict().items()},
        "net": {"embed_dim": cfg.embed_dim, "width": cfg.width},
        "text_tower": prompts.tower_cfg.to_dict(),
        "templates": cfg.templates,
        # Raw tower embeddings of the fitting concepts: loading recomputes and compares them, so a torch build that
        # initialises the seeded random tower differently fails loudly instead of labeling with garbage.
        "text_check": {"concepts": prompts.concepts, "embeddings": prompts.embeddings.clone()},
        "vocab": vocab.to_dict(),
        "fit": asdict(cfg),
        "num_images": int(len(images)),
        "final_loss": final_loss,
        "final_pixel_acc": final_pixel_acc,
        "torch_version": str(torch.__version__),
    }


def save_checkpoint(ckpt: dict, path: str) -> None:
    """Atomic write: a reader (another Ray actor, a cache lookup) never sees a half-written file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".textseg-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(ckpt, f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
