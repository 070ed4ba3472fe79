"""The fitted textseg teacher at inference: load a checkpoint, prompt it with any vocabulary."""
from __future__ import annotations

import logging
import pickle
import zipfile

import torch
import torch.nn.functional as F

from orchestrator.teachers.base import DenseTeacher
from orchestrator.teachers.prompts import embed_concepts, get_templates, vocab_concepts
from orchestrator.teachers.textseg_fit import CHECKPOINT_FORMAT
from orchestrator.teachers.textseg_model import TextSegNet, TextTowerCfg, build_text_tower
from orchestrator.teachers.spec import TeacherSpec
from orchestrator.core.vocab import Vocabulary

log = logging.getLogger(__name__)


class TextSegTeacher(DenseTeacher):
    def __init__(self, net: TextSegNet, concept_emb: torch.Tensor, owners: torch.Tensor, vocab: Vocabulary,
                 spec: TeacherSpec, fit_info: dict):
        super().__init__(vocab, spec.device, spec.resolution)
        self.net = net.to(self.device).eval().to(memory_format=torch.channels_last)   # as images_to_tensor lays out
        self.concept_emb = concept_emb.to(self.device)
        self.owners = owners.to(self.device)
        self.fit_info = fit_info  # fitting vocabulary, hyper-parameters, final loss: for logging/diagnostics

    def class_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) normalised pixels → (B, num_classes, H/2, W/2) logits (max over each class's concepts)."""
        return self.net.class_logits(x, self.concept_emb, self.owners, self.num_classes)

    def _class_probs(self, x: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
        logits = self.class_logits(x)
        logits = F.interpolate(logits, size=out_hw, mode="bilinear", align_corners=False)
        return logits.softmax(dim=1)


def _load(path: str) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"textseg checkpoint '{path}' does not exist (teacher.pretrained); "
                                "fit one with `run.py teacher fit`") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as err:
        raise ValueError(f"textseg checkpoint '{path}' cannot be read ({err}): truncated or not a checkpoint; "
                         "fit it again with `run.py teacher fit`") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        got = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"'{path}' is not a textseg checkpoint (format {got!r}, expected {CHECKPOINT_FORMAT!r}); "
                         "for open_clip weights use teacher.kind=maskclip")
    return ckpt


def load_textseg(spec: TeacherSpec, vocab: Vocabulary) -> TextSegTeacher:
    ckpt = _load(spec.pretrained)
    if spec.templates != ckpt["templates"]:
        # The tower is random: prompts it was not fitted with map to arbitrary directions.
        raise ValueError(f"textseg checkpoint '{spec.pretrained}' was fitted with templates "
                         f"'{ckpt['templates']}' but the spec asks for '{spec.templates}'; set "
                         f"teacher.templates={ckpt['templates']} or refit with the templates you want")
    tower, tokenizer = build_text_tower(TextTowerCfg(**ckpt["text_tower"]))
    templates = get_templates(spec.templates)
    cpu = torch.device("cpu")
    check = ckpt["text_check"]
    again = embed_concepts(tower, tokenizer, check["concepts"], templates, cpu)
    if not torch.allclose(again, check["embeddings"], atol=1e-4):
        raise RuntimeError(f"the seeded text tower of '{spec.pretrained}' no longer reproduces the embeddings it was "
                           f"fitted with (fitted under torch {ckpt['torch_version']}, running {torch.__version__}); "
                           "refit the teacher with this torch build")
    fit_vocab = Vocabulary.from_dict(ckpt["vocab"])
    concepts, owners = vocab_concepts(vocab)
    unseen = sorted(set(concepts) - set(vocab_concepts(fit_vocab)[0]))
    if unseen:
        log.warning("textseg teacher '%s' never saw the concepts %s while fitting; with a random text tower their "
                    "scores are arbitrary", spec.pretrained, unseen)
    net = TextSegNet(**ckpt["net"])
    net.load_state_dict(ckpt["model"])
    concept_emb = embed_concepts(tower, tokenizer, concepts, templates, cpu)
    fit_info = {k: ckpt[k] for k in ("vocab", "fit", "num_images", "final_loss", "final_pixel_acc")}
    return TextSegTeacher(net, concept_emb, torch.tensor(owners, dtype=torch.long), vocab, spec, fit_info)
