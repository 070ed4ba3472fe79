"""MaskCLIP: training-free dense prediction from an open_clip ViT (docs/method.md §6).

The last transformer block's attention is replaced by its value path (each patch token "attends" only to itself),
keeping residual + FFN, so every patch token lands in CLIP's joint image-text space; ln_post and proj then map it
there and the concept text embeddings classify it: logits = 100·cos, class score = max over the class's concepts.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from orchestrator.teachers.base import CLIP_MEAN, CLIP_STD, DenseTeacher
from orchestrator.teachers.prompts import concepts_to_classes, embed_concepts, get_templates, vocab_concepts
from orchestrator.teachers.spec import TeacherSpec
from orchestrator.core.vocab import Vocabulary

LOGIT_SCALE = 100.0  # CLIP's trained temperature; fixed so random-weight tests and real weights behave alike


def resize_pos_embed(pos: torch.Tensor, grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """(1+gh·gw, D) → (1+h·w, D): keep the class row, bicubic-resize the grid part (open_clip 3.3 doesn't)."""
    if tuple(grid) == tuple(new_grid):
        return pos
    cls_row, patches = pos[:1], pos[1:]
    patches = patches.reshape(1, grid[0], grid[1], -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches.float(), size=new_grid, mode="bicubic", align_corners=False).to(pos.dtype)
    return torch.cat([cls_row, patches.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], -1)], 0)


def embed_tokens(visual: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Patchify, prepend the class token, add (resized) positions, ln_pre. Returns (B, 1+h·w, D) and (h, w)."""
    feats = visual.conv1(x)
    h, w = feats.shape[2:]
    tokens = feats.flatten(2).transpose(1, 2)
    cls_tok = visual.class_embedding.view(1, 1, -1).expand(tokens.shape[0], -1, -1).to(tokens.dtype)
    tokens = torch.cat([cls_tok, tokens], dim=1)
    tokens = tokens + resize_pos_embed(visual.positional_embedding, visual.grid_size, (h, w)).to(tokens.dtype)
    return visual.ln_pre(tokens), (h, w)


def run_blocks(visual: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """All blocks but the last, exactly as open_clip runs them."""
    batch_first = getattr(visual.transformer, "batch_first", True)
    x = tokens if batch_first else tokens.transpose(0, 1)
    for block in visual.transformer.resblocks[:-1]:
        x = block(x)
    return x if batch_first else x.transpose(0, 1)


def value_path_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The last block with attention replaced by v = out_proj(W_v·ln_1(x) + b_v): no token mixing."""
    attn: nn.MultiheadAttention = block.attn
    d = x.shape[-1]
    if attn.in_proj_weight is not None:
        w_v = attn.in_proj_weight[2 * d:]
    else:  # separate q/k/v weights (kdim/vdim set)
        w_v = attn.v_proj_weight
    b_v = attn.in_proj_bias[2 * d:] if attn.in_proj_bias is not None else None
    v = attn.out_proj(F.linear(block.ln_1(x), w_v, b_v))
    z = x + block.ls_1(v)
    return z + block.ls_2(block.mlp(block.ln_2(z)))


def dense_features(visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) normalised pixels → (B, C, H/p, W/p) unit vectors in CLIP's joint space."""
    tokens, (h, w) = embed_tokens(visual, x)
    z = value_path_block(visual.transformer.resblocks[-1], run_blocks(visual, tokens))
    dense = F.normalize(visual.ln_post(z[:, 1:]) @ visual.proj, dim=-1)
    return dense.transpose(1, 2).reshape(x.shape[0], -1, h, w)


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Window offsets covering [0, length): regular steps, plus one flush with the end."""
    if length <= crop:
        return [0]
    starts = list(range(0, length - crop + 1, stride))
    if starts[-1] != length - crop:
        starts.append(length - crop)
    return starts


@dataclass(frozen=True)
class ConceptEmbeddings:
    """The vocabulary's concepts in CLIP's joint space (K, C) and the class each one votes for (K,)."""

    embeddings: torch.Tensor
    owners: torch.Tensor


class MaskClipTeacher(DenseTeacher):
    """The registered "maskclip" teacher (orchestrator/teachers/registry.py): MaskClipTeacher(spec, vocab) builds the
    open_clip model spec.arch with the weights spec.pretrained and embeds `vocab`'s concepts once."""

    # Traits (core.plugins.TeacherTraits): the weights are a file or an open_clip tag; teacher.arch names the model;
    # teacher.sliding_window applies.
    pretrained_kind = "file_or_tag"
    uses_arch = True
    supports_sliding_window = True

    def __init__(self, spec: TeacherSpec, vocab: Vocabulary):
        visual, concepts, pixel_stats = _load_parts(spec, vocab)   # pixel_stats: the model's input (mean, std)
        super().__init__(vocab, spec.device, spec.resolution)
        self.visual = visual.to(self.device).eval()
        self.text_emb = concepts.embeddings.to(self.device)
        self.owners = concepts.owners.to(self.device)
        self.sliding_window = spec.sliding_window
        mean, std = pixel_stats
        self.mean, self.std = tuple(mean), tuple(std)
        self.crop = tuple(visual.image_size)  # the model's native input size (sliding-window crop)

    def class_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) → (B, num_classes, H/p, W/p): 100·cos per concept, max over each class's concepts."""
        concept_logits = LOGIT_SCALE * torch.einsum("bchw,kc->bkhw", dense_features(self.visual, x), self.text_emb)
        return concepts_to_classes(concept_logits, self.owners, self.num_classes)

    def _probs_at(self, x: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
        logits = F.interpolate(self.class_logits(x), size=out_hw, mode="bilinear", align_corners=False)
        return logits.softmax(dim=1)

    def _class_probs(self, x: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
        height, width = x.shape[2:]
        ch, cw = self.crop
        if not self.sliding_window or (height <= ch and width <= cw):
            return self._probs_at(x, out_hw)
        acc = x.new_zeros((x.shape[0], self.num_classes, height, width))
        count = x.new_zeros((1, 1, height, width))
        for top in window_starts(height, ch, max(1, math.ceil(ch * 2 / 3))):
            for left in window_starts(width, cw, max(1, math.ceil(cw * 2 / 3))):
                win = x[:, :, top:top + ch, left:left + cw]
                acc[:, :, top:top + ch, left:left + cw] += self._probs_at(win, tuple(win.shape[2:]))
                count[:, :, top:top + ch, left:left + cw] += 1
        probs = acc / count
        if (height, width) != tuple(out_hw):  # averaged probabilities stay a distribution under bilinear resize
            probs = F.interpolate(probs, size=out_hw, mode="bilinear", align_corners=False)
        return probs


def _resolve_arch(arch: str) -> str:
    """An open_clip model name, or a model-config JSON file registered under its stem (tiny/custom configs)."""
    if arch.endswith(".json"):
        import open_clip
        if not os.path.isfile(arch):
            raise FileNotFoundError(f"open_clip model config '{arch}' (teacher.arch) does not exist")
        open_clip.add_model_config(arch)
        return os.path.splitext(os.path.basename(arch))[0]
    return arch


def _check_vit(model: nn.Module, arch: str) -> None:
    from open_clip.transformer import VisionTransformer
    visual = getattr(model, "visual", None)
    ok = isinstance(visual, VisionTransformer) and visual.attn_pool is None and all(
        isinstance(getattr(b, "attn", None), nn.MultiheadAttention) for b in visual.transformer.resblocks)
    if not ok:
        raise ValueError(f"maskclip needs an open_clip ViT with standard attention blocks and token pooling; "
                         f"'{arch}' has a {type(visual).__name__} image tower. Use a ViT arch such as ViT-B-16 "
                         "(teacher.arch)")


def load_maskclip(spec: TeacherSpec, vocab: Vocabulary) -> MaskClipTeacher:
    return MaskClipTeacher(spec, vocab)


def _load_parts(spec: TeacherSpec, vocab: Vocabulary) -> tuple[nn.Module, ConceptEmbeddings, tuple[tuple, tuple]]:
    """Build the open_clip model, load weights (local file: weights_only; tag: open_clip downloads it), embed the
    vocabulary's concepts once, and keep only the image tower for inference: (visual, concepts, (mean, std))."""
    import open_clip

    arch = _resolve_arch(spec.arch)
    if os.path.isfile(spec.pretrained):
        model = open_clip.create_model(arch, pretrained=None, device="cpu")
        open_clip.load_checkpoint(model, spec.pretrained, strict=True, weights_only=True)
    elif os.sep in spec.pretrained or spec.pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
        raise FileNotFoundError(f"maskclip weights file '{spec.pretrained}' (teacher.pretrained) does not exist")
    else:  # an open_clip pretrained tag: this downloads, so only on the user's explicit request
        model = open_clip.create_model(arch, pretrained=spec.pretrained, device="cpu")
    _check_vit(model, arch)
    model.eval()
    device = torch.device(spec.device)
    model.to(device)
    concepts, owners = vocab_concepts(vocab)
    with torch.inference_mode():
        text_emb = embed_concepts(model.encode_text, open_clip.get_tokenizer(arch), concepts,
                                  get_templates(spec.templates), device)
    pp = open_clip.get_model_preprocess_cfg(model)
    return (model.visual, ConceptEmbeddings(text_emb, torch.tensor(owners, dtype=torch.long)),
            (pp.get("mean", CLIP_MEAN), pp.get("std", CLIP_STD)))
