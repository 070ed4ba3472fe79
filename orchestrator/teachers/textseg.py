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
    """The registered "textseg" teacher (orchestrator/teachers/registry.py): TextSegTeacher(spec, vocab) loads the
    checkpoint spec.pretrained and prompts it with `vocab`."""

    # Traits (core.plugins.TeacherTraits): weights are a checkpoint file; with teacher.pretrained empty they are
    # fitted on the benchmark's source corpus through fit_weights.
    pretrained_kind = "file"
    fits_on_source = True

    def __init__(self, spec: TeacherSpec, vocab: Vocabulary):
        net, concept_emb, owners, fit_info = _load_parts(spec, vocab)
        super().__init__(vocab, spec.device, spec.resolution)
        self.net = net.to(self.device).eval().to(memory_format=torch.channels_last)   # as images_to_tensor lays out
        self.concept_emb = concept_emb.to(self.device)
        self.owners = owners.to(self.device)
        self.fit_info = fit_info  # fitting vocabulary, hyper-parameters, final loss: for logging/diagnostics

    @classmethod
    def fit_weights(cls, images, masks, vocabulary: Vocabulary, out_path: str, *, steps: int, seed: int,
                    templates: str, on_step=None) -> None:
        """The fits_on_source hook: fit on the labeled source corpus (uint8 images [N,H,W,3], masks [N,H,W] with
        ids of `vocabulary`) and write the checkpoint to `out_path`; `on_step(step)` reports progress."""
        from orchestrator.teachers.textseg_fit import fit_textseg, save_checkpoint

        report = (lambda record: on_step(record["step"])) if on_step else None
        ckpt = fit_textseg(images, masks, vocabulary, steps=steps, seed=seed, templates=templates, on_log=report,
                           log_every=10)   # as often as fit_task.PROGRESS_EVERY shows it
        save_checkpoint(ckpt, out_path)

    @staticmethod
    def weights_problem(path: str) -> str | None:
        """Why the weights file at `path` cannot be this teacher's (None = it may be): checked before labeling."""
        if not zipfile.is_zipfile(path):   # torch.save writes a zip archive; a truncated one is not
            return "is not a complete torch checkpoint (truncated, or another format)"
        return None

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
    return TextSegTeacher(spec, vocab)


def _load_parts(spec: TeacherSpec, vocab: Vocabulary) -> tuple[TextSegNet, torch.Tensor, torch.Tensor, dict]:
    """The fitted net, `vocab`'s concept embeddings and their owning classes, and the fit's record."""
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
    return net, concept_emb, torch.tensor(owners, dtype=torch.long), fit_info
