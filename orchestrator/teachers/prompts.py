"""Prompt side shared by all teachers: templates, the concept list of a vocabulary, concept→class max-pooling."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from orchestrator.core.vocab import Vocabulary

Template = Callable[[str], str]


def get_templates(name: str) -> list[Template]:
    """"single" = CLIP's default prompt; "imagenet80" = open_clip's 80 ImageNet templates (callables in 3.x)."""
    if name == "single":
        return [lambda c: f"a photo of a {c}."]
    if name == "imagenet80":
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
        return [t if callable(t) else t.format for t in OPENAI_IMAGENET_TEMPLATES]
    raise ValueError(f"unknown template set '{name}'; valid: single, imagenet80")


def vocab_concepts(vocab: Vocabulary) -> tuple[list[str], list[int]]:
    """Every concept string and the class id it votes for: each class's name + synonyms, then the background concepts
    (class 0). Duplicates are kept: a max over a repeated concept is harmless."""
    concepts: list[str] = []
    owners: list[int] = []
    for cid, cls in enumerate(vocab.classes):
        concepts += cls.concepts
        owners += [cid] * len(cls.concepts)
    concepts += vocab.background_concepts
    owners += [0] * len(vocab.background_concepts)
    return concepts, owners


@torch.no_grad()
def embed_concepts(encode: Callable[[torch.Tensor], torch.Tensor], tokenize: Callable[[list[str]], torch.Tensor],
                   concepts: Sequence[str], templates: Sequence[Template], device: torch.device) -> torch.Tensor:
    """(K, D) unit vectors: per concept, the re-normalised mean over templates of normalised text embeddings."""
    rows = []
    for concept in concepts:
        tokens = tokenize([t(concept) for t in templates]).to(device)
        per_template = F.normalize(encode(tokens).float(), dim=-1)
        rows.append(F.normalize(per_template.mean(0), dim=-1))
    return torch.stack(rows)


def concepts_to_classes(concept_logits: torch.Tensor, owners: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class score = max over the class's concepts. concept_logits (B, K, ...) → (B, num_classes, ...).

    A class with no concept at all cannot happen (every class has its name), so no -inf survives."""
    shape = (concept_logits.shape[0], num_classes, *concept_logits.shape[2:])
    index = owners.view(1, -1, *([1] * (concept_logits.dim() - 2))).expand_as(concept_logits)
    out = concept_logits.new_full(shape, float("-inf"))
    return out.scatter_reduce(1, index, concept_logits, reduce="amax", include_self=True)
