"""The student's pretrained encoder: which one a run starts from, and pretraining it (once, cached) when missing.

The paper's students start from ImageNet weights. Nothing can be downloaded here, so a run whose
`model.pretrain` is `source_classification` starts from an encoder pretrained on the dataset's labeled
source corpus, by image-level classification (which classes an image shows: trainables.pretrain): a corpus
and a task disjoint from the target split, as ImageNet is for VOC. It is pretrained once per `EncoderRequest`
(the dataset's digest, the student's architecture and width, the steps) into
`<cache>/students/encoder-<arch>-<key>.pt` (keyed by the source corpus's content, not the rest of the dataset),
beside its size and sha256; every trial and every later sweep
reuses it. `model.pretrained_backbone` (a weights file, e.g. ImageNet's for the DeepLabs) takes precedence.

Like the teacher's fit, the pretraining runs as a Ray task when Ray is up (a cluster can give it a GPU's node),
else in this process.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orchestrator.core.config import ExperimentConfig, KeyedRequest, flatten, keys_with
from orchestrator.core.config_roles import ENCODER
from orchestrator.core.digest import checksum_problem, digest_json, file_checksum
from orchestrator.core.errors import UserError
from orchestrator.core.paths import inside

PRETRAIN_VERSION = "1"   # bump when trainables.pretrain changes what it learns: older encoders stop matching
# The config keys an encoder depends on (the `encoder` role, orchestrator/core/config_roles.py): the dataset (every
# setting of the generator) and the student's encoder. Anything else (the labeled split, the method, the OOD
# stream) leaves it as it is.
ENCODER_KEYS: tuple[str, ...] = keys_with(ENCODER)


class EncoderRequest(KeyedRequest):
    """The values of ENCODER_KEYS: equal requests share one pretrained encoder."""
    KEYS = ENCODER_KEYS
    WHAT = "encoder request"


def wants_pretraining(cfg: ExperimentConfig) -> bool:
    """Whether a run starts from an encoder this tool pretrains (not from random weights or a user's file)."""
    return cfg.model.pretrain != "none" and not cfg.model.pretrained_backbone


def source_corpus(data_root: Path) -> Path:
    return data_root / "source" / "list.txt"


def encoder_path(cfg: ExperimentConfig, cache_root: Path, data_root: Path) -> Path:
    """Where the encoder of `cfg` lives in the cache: keyed by the dataset's digest and the encoder's settings."""
    from orchestrator.data.voc import source_corpus_digest

    m = cfg.model
    key = digest_json({"source": source_corpus_digest(data_root) or str(data_root), "arch": m.arch, "width": m.width,
                       "task": m.pretrain,
                       "steps": m.pretrain_steps, "seed": cfg.data.seed, "version": PRETRAIN_VERSION}, 16)
    return inside(cache_root, "students", f"encoder-{m.arch.replace(':', '.')}-{key}.pt")


def check_pretrainable(cfg: ExperimentConfig, data_root: Path) -> None:
    """A clear error before any work when the run asks for pretraining its dataset cannot give."""
    if not wants_pretraining(cfg):
        return
    if not source_corpus(data_root).is_file():
        raise UserError(f"model.pretrain={cfg.model.pretrain} pretrains the student's encoder on the dataset's "
                        f"labeled source corpus, and {data_root} has none ({source_corpus(data_root)}). Fix: set "
                        f"model.pretrained_backbone to a weights file (e.g. ImageNet's, as the paper), or "
                        f"model.pretrain=none to start from random weights.")


def ensure_pretrained_encoder(cfg: ExperimentConfig, cache_root: Path, data_root: Path, log=print,
                              progress=None) -> Path | None:
    """The encoder `cfg` starts from, pretrained now unless cached (None: random weights or the user's file)."""
    if not wants_pretraining(cfg):
        return None
    check_pretrainable(cfg, data_root)
    path = encoder_path(cfg, cache_root, data_root)
    side = path.with_name(path.name + ".sha256.json")
    if path.is_file() and side.is_file():
        try:
            problem = checksum_problem(path, json.loads(side.read_text()))
        except (ValueError, KeyError, TypeError):
            problem = f"its checksum file {side} cannot be read"
        if problem is None:
            return path
        log(f"the pretrained encoder {path} is damaged ({problem}): pretraining it again")
    log(f"pretraining the {cfg.model.arch} encoder on {data_root / 'source'} ({cfg.model.pretrain_steps} steps, "
        f"image-level classification) → {path}")
    from orchestrator.students.pretrain_task import run_pretraining

    run_pretraining(flatten(cfg), str(data_root), str(path), progress)
    side.write_text(json.dumps(file_checksum(path)))
    return path
