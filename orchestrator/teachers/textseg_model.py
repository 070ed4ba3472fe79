"""textseg: a small text-conditioned segmenter, the stand-in for SED on the generated `shapes` benchmark.

Pixels are embedded by a small CNN; classes are embedded by an open_clip text transformer from their *names*;
logits = learned scale × cosine(pixel, concept). Prompting with another vocabulary needs no retraining, which is
what makes it an open-vocabulary teacher: a class name seen while fitting keeps its meaning in any vocabulary,
so a distractor name listed among `background_concepts` pulls its pixels to background.

Honest limits: no pretrained weights exist on this machine, so the text tower is a *tiny random* open_clip
TextTransformer (fixed seed, frozen). With real weights it would be CLIP's text tower and unseen names would get
meaningful embeddings; here a name never seen while fitting gets an arbitrary direction. Random towers map all
prompts to nearly the same direction (cosine ≈ 0.9-0.99), so a trainable linear text adapter — shared by all
concepts, so still name-conditioned — spreads them apart; with CLIP weights it would play the role of SED's
fine-tuned text side.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from orchestrator.teachers.prompts import concepts_to_classes


@dataclass(frozen=True)
class TextTowerCfg:
    """A deliberately tiny open_clip text transformer (open_clip's own BPE tokenizer and vocabulary)."""
    context_length: int = 32
    width: int = 64
    heads: int = 4
    layers: int = 2
    embed_dim: int = 64
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def build_text_tower(cfg: TextTowerCfg):
    """Frozen random text tower and its tokenizer; the seed makes the weights reproducible without storing them."""
    import open_clip
    from open_clip.transformer import TextTransformer

    with torch.random.fork_rng(devices=[]):  # don't disturb the caller's RNG stream
        torch.manual_seed(cfg.seed)
        tower = TextTransformer(context_length=cfg.context_length, width=cfg.width, heads=cfg.heads,
                                layers=cfg.layers, output_dim=cfg.embed_dim)
    tower.eval().requires_grad_(False)
    return tower, open_clip.SimpleTokenizer(context_length=cfg.context_length)


def _conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class PixelEncoder(nn.Module):
    """Three-level encoder-decoder at 1/2, 1/4 and 1/8 input resolution (full-resolution convs cost ~10x on a
    2-core CPU). The 1/8 level with a dilated conv sees ~100 px, enough to tell a disk from an ellipse or a ring
    from a crescent at 64×64. Output: (B, D, H/2, W/2)."""

    def __init__(self, embed_dim: int, width: int = 24):
        super().__init__()
        w1, w2, w3 = width, 2 * width, 4 * width
        self.stem = nn.Sequential(_conv(3, w1, stride=2), _conv(w1, w1))
        self.down1 = nn.Sequential(_conv(w1, w2, stride=2), _conv(w2, w2))
        self.down2 = nn.Sequential(_conv(w2, w3, stride=2), _conv(w3, w3, dilation=2), _conv(w3, w3))
        self.fuse1 = _conv(w3 + w2, w2)
        self.fuse0 = _conv(w2 + w1, w2)
        self.head = nn.Conv2d(w2, embed_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f0 = self.stem(x)
        f1 = self.down1(f0)
        f2 = self.down2(f1)
        g1 = self.fuse1(torch.cat([_up(f2, f1), f1], 1))
        return self.head(self.fuse0(torch.cat([_up(g1, f0), f0], 1)))


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[2:], mode="bilinear", align_corners=False)


class TextSegNet(nn.Module):
    """The trainable parts: pixel encoder, text adapter, logit scale. Text embeddings come in as an argument so
    one module serves fitting (source vocabulary) and inference (any vocabulary)."""

    def __init__(self, embed_dim: int, width: int = 24):
        super().__init__()
        self.encoder = PixelEncoder(embed_dim, width)
        self.text_adapter = nn.Linear(embed_dim, embed_dim)
        with torch.no_grad():  # start as the identity: the classifier begins as the raw text embedding
            self.text_adapter.weight.copy_(torch.eye(embed_dim))
            self.text_adapter.bias.zero_()
        self.log_scale = nn.Parameter(torch.tensor(2.3))  # exp(2.3) ≈ 10, CLIP-like temperature start

    @torch.no_grad()
    def whiten_text_adapter(self, concept_emb: torch.Tensor, eps: float = 1e-2) -> None:
        """Start the adapter as a ZCA whitening of the fitting concepts: they begin near-orthogonal instead of at
        cosine ≈ 0.9, which otherwise costs hundreds of steps (measured). A fit-time init only: at inference the
        learned weights apply to any vocabulary."""
        mean = concept_emb.mean(0)
        cov = torch.cov((concept_emb - mean).T, correction=0)
        evals, evecs = torch.linalg.eigh(cov)
        inv_sqrt = (evals.clamp_min(0) + eps * evals.max()).rsqrt()
        weight = evecs @ torch.diag(inv_sqrt) @ evecs.T
        self.text_adapter.weight.copy_(weight)
        self.text_adapter.bias.copy_(-weight @ mean)

    def class_logits(self, x: torch.Tensor, concept_emb: torch.Tensor, owners: torch.Tensor,
                     num_classes: int) -> torch.Tensor:
        """x (B,3,H,W) normalised pixels; concept_emb (K,D) raw text embeddings; owners (K,) class of each concept.
        Returns (B, num_classes, H/2, W/2) logits = max over each class's concepts of scale·cos(pixel, concept);
        callers upsample the (few-channel) logits, which is cheaper than upsampling D-dim embeddings."""
        pix = F.normalize(self.encoder(x), dim=1)
        text = F.normalize(self.text_adapter(concept_emb), dim=-1)
        concept_logits = self.log_scale.exp() * torch.einsum("bdhw,kd->bkhw", pix, text)
        return concepts_to_classes(concept_logits, owners, num_classes)
