"""Typed experiment configuration: defaults live here and nowhere else.

A run's config is resolved in this order: dataclass defaults → the search-space file's `fixed:` →
`--set key=value` → the trial's sampled values. Every key is a dotted path (`ood.ratio`); the flat form
is what MLflow records as params and what search spaces and `--set` address.

Each field is declared with `setting(default, roles, help)`: its roles (orchestrator/core/config_roles.py) say what
the key does, and every list of keys other modules act on (the label cache's, the encoder's, what a resume may
change, what the report treats as inert) is computed from them by `keys_with`. docs/config.md is generated from
these fields: `python -m orchestrator.core.config_doc`.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal, get_args

from orchestrator.core.config_roles import (DECIDES_LABELS, DIAGNOSTICS, ENCODER, EXPERIMENT, FAULT_TOLERANCE,
                                          INERT_WITHOUT_OOD, INERT_WITHOUT_TEACHER_LABELS, LABELS, PURPOSES,
                                          RESOURCES, RESUMABLE, ROLES, TEACHER_FIT)
from orchestrator.core.errors import ConfigError
from orchestrator.core.names import resource_problem, text_problem
from orchestrator.core.plugins import IMPORT_PATH_FORM, is_import_path, load_student_class, load_teacher_class

# Allowed values, declared once: the config validates against them, the CLI help lists them, and the code
# that dispatches on them (losses, students, teachers, datasets) imports them from here.
Method = Literal["supervised", "unimatch", "semiovs"]
LabelSource = Literal["teacher", "self", "none"]
TeacherKind = Literal["textseg", "maskclip"]   # registered teachers; teacher.kind may also be an import path
TemplateSet = Literal["single", "imagenet80"]
Dataset = Literal["shapes", "pascal", "pc60"]
IdClassPrior = Literal["skewed", "uniform"]   # `shapes`: uniform = every target class equally common in ID
StudentArch = Literal["unet_small", "deeplabv3plus_r50", "deeplabv3plus_r101"]   # registered; or an import path
AmpDtype = Literal["auto", "bf16", "fp16"]
Pretrain = Literal["none", "source_classification"]   # model.pretrain (orchestrator/students)
METHODS: tuple[str, ...] = get_args(Method)
LABEL_SOURCES: tuple[str, ...] = get_args(LabelSource)
TEACHER_KINDS: tuple[str, ...] = get_args(TeacherKind)
TEMPLATE_SETS: tuple[str, ...] = get_args(TemplateSet)
DATASETS: tuple[str, ...] = get_args(Dataset)
ID_CLASS_PRIORS: tuple[str, ...] = get_args(IdClassPrior)
STUDENT_ARCHS: tuple[str, ...] = get_args(StudentArch)
AMP_DTYPES: tuple[str, ...] = get_args(AmpDtype)
PRETRAINS: tuple[str, ...] = get_args(Pretrain)
CHOICES = {"data.dataset": DATASETS, "data.id_class_prior": ID_CLASS_PRIORS, "ood.label_source": LABEL_SOURCES,
           "teacher.kind": TEACHER_KINDS, "teacher.templates": TEMPLATE_SETS, "train.method": METHODS,
           "model.arch": STUDENT_ARCHS}
CHOICES["train.amp_dtype"] = AMP_DTYPES
CHOICES["model.pretrain"] = PRETRAINS
# Keys that take a registered name or a plug-in's import path (docs/extending.md): their registries are
# orchestrator/teachers/registry.py and trainables/models.py, whose names must be the ones listed here.
PLUGIN_KEYS = {"teacher.kind": "teacher", "model.arch": "student"}


def _require(ok: bool, key: str, problem: str, fix: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {problem}. Fix: {fix}.")


def _one_of(value: str, allowed: tuple[str, ...], key: str) -> None:
    _require(value in allowed, key, f"'{value}' is not a valid value",
             "use one of " + ", ".join(allowed))


def _registered_or_import_path(value: str, registered: tuple[str, ...], key: str) -> None:
    """A registered name, or text of the form package.module:Class. Syntax only: importing it is build_config's
    job (see _check_plugins)."""
    _require(value in registered or is_import_path(value), key,
             f"'{value}' is not a valid value: neither a registered {PLUGIN_KEYS[key]} nor an import path",
             f"use one of {', '.join(registered)}, or a plug-in's import path {IMPORT_PATH_FORM} "
             f"(docs/extending.md)")


def _between(value: float, lo: float, hi: float, key: str) -> None:
    _require(lo <= value <= hi, key, f"{value} is out of range", f"use a value in [{lo}, {hi}]")


def setting(default: Any, roles: tuple[str, ...], help: str) -> Any:
    """A config field: its default, its roles (orchestrator/core/config_roles.py says what each means; the lists of
    keys other modules act on are computed from them) and its help text (docs/config.md)."""
    return field(default=default, metadata={"roles": tuple(roles), "help": help})


# Role sets many fields share.
_DATASET = (EXPERIMENT, LABELS, ENCODER)   # which images exist: the labels and the pretrained encoder depend on it
_TEACHER = (EXPERIMENT, LABELS, INERT_WITHOUT_OOD, INERT_WITHOUT_TEACHER_LABELS)   # how the teacher labels
_OOD = (EXPERIMENT, INERT_WITHOUT_OOD)      # how the OOD stream is drawn, once labeled
_RESOURCE = (RESOURCES, RESUMABLE)


@dataclass
class DataConfig:
    """The dataset: a real one in the VOC/UniMatch layout, or the generated `shapes` benchmark and its generator's
    settings; and the labeled split."""
    dataset: Dataset = setting("shapes", _DATASET, "which layout and class list: `shapes` (the generated benchmark), "
                               "`pascal` (VOC) or `pc60` (Pascal Context-60), the real ones read from data.root")
    root: str = setting("", _DATASET, "dataset folder in the VOC/UniMatch layout; \"\" = the generated `shapes` "
                        "benchmark in the cache (made on first use)")
    split: str = setting("16", (EXPERIMENT,), "labeled split (`<root>/splits/<split>/labeled.txt`): the number of "
                         "labeled images (`8`…`128` for `shapes`, `92`…`1464` for VOC) or a split name (`1_16`)")
    splits_dir: str = setting("", (EXPERIMENT,), "folder holding `<split>/labeled.txt` and `val.txt` "
                              "(\"\" = `<root>/splits`)")
    seed: int = setting(0, (*_DATASET, TEACHER_FIT), "generator seed of the `shapes` benchmark (it also seeds the "
                        "textseg teacher's fit and the encoder's pretraining)")
    image_size: int = setting(64, _DATASET, "`shapes`: image side")
    crop_size: int = setting(64, (EXPERIMENT,), "training crop (the paper uses 321 on VOC)")
    num_train: int = setting(2000, _DATASET, "`shapes`: ID train pool (labeled splits + unlabeled)")
    num_val: int = setting(2000, _DATASET, "`shapes`: ID val images (300 until the val-noise measurement: that left "
                           "±2 mIoU of sampling noise; docs/results.md)")
    num_test: int = setting(2000, _DATASET, "`shapes`: held-out ID test images (`splits/test.txt`), never used for "
                            "selection: each trial's best-on-val model is scored on them once (`test_miou`); "
                            "0 = none")
    num_ood: int = setting(4000, _DATASET, "`shapes`: OOD corpus images")
    num_source: int = setting(2000, _DATASET, "`shapes`: labeled source corpus (a wide vocabulary) that the textseg "
                              "teacher is fitted on and the student's encoder pretrained on")
    distractor_share: float = setting(0.5, _DATASET, "`shapes`: how OOD images differ in content: the share of OOD "
                                      "objects that are distractors")
    style_shift: float = setting(0.2, _DATASET, "`shapes`: how OOD images differ in low-level style (0 = same as ID)")
    id_class_prior: IdClassPrior = setting(
        "uniform", _DATASET, "`shapes`: ID class frequencies: `uniform` (every target class equally common) or "
        "`skewed` (disks common, rings rare, as VOC has rare classes; the default until the 5-seed comparison in "
        "docs/results.md); the OOD corpus keeps the reversed skewed prior")
    id_distractor_share: float = setting(0.0, _DATASET, "`shapes`: share of ID objects that are distractors "
                                         "(background in ID labels)")
    max_broken_share: float = setting(0.05, (FAULT_TOLERANCE,), "stop when more than this share of a corpus cannot "
                                      "be read (broken files are skipped and listed)")

    def __post_init__(self):
        _one_of(self.dataset, DATASETS, "data.dataset")
        _require(bool(self.split), "data.split", "is empty", "name a split, e.g. 16")
        _between(self.image_size, 32, 512, "data.image_size")
        _between(self.crop_size, 16, 1024, "data.crop_size")
        for key in ("num_train", "num_val", "num_ood", "num_source"):
            _require(getattr(self, key) >= 1, f"data.{key}", "must be >= 1", "use a positive count")
        _require(self.num_test >= 0, "data.num_test", "is negative", "use 0 (no test split) or a positive count")
        _between(self.distractor_share, 0.0, 1.0, "data.distractor_share")
        _between(self.style_shift, 0.0, 1.0, "data.style_shift")
        _one_of(self.id_class_prior, ID_CLASS_PRIORS, "data.id_class_prior")
        _between(self.id_distractor_share, 0.0, 0.9, "data.id_distractor_share")
        _between(self.max_broken_share, 0.0, 1.0, "data.max_broken_share")
        _require(self.dataset == "shapes" or bool(self.root), "data.root",
                 f"is required for data.dataset={self.dataset}", "set data.root to the dataset folder")


@dataclass
class OODConfig:
    """The OOD stream of `semiovs`: which corpus, how much of each unlabeled batch, and whose labels."""
    root: str = setting("", (EXPERIMENT, LABELS, INERT_WITHOUT_OOD), "OOD corpus: a folder of images or a list file; "
                        "\"\" = the benchmark's `ood/`")
    ratio: float = setting(0.5, (*_OOD, DECIDES_LABELS), "share of each unlabeled batch drawn from the OOD corpus "
                           "(0 = ID only; 0.5 = the paper's 1:1)")
    num_images: int = setting(0, _OOD, "use a seeded random subset of this many OOD images (0 = all); read from the "
                              "labels of the whole corpus, so it never labels again")
    label_source: LabelSource = setting("teacher", (*_OOD, DECIDES_LABELS), "`teacher` = open-vocabulary "
                                        "pseudo-labels; `self` = the student's own (the naive baseline); `none`")
    teacher_thresh: float = setting(0.0, (*_OOD, INERT_WITHOUT_TEACHER_LABELS), "teacher pixels below this "
                                    "confidence are ignored (applied when training reads the labels)")

    def __post_init__(self):
        _between(self.ratio, 0.0, 1.0, "ood.ratio")
        _require(self.num_images >= 0, "ood.num_images", "is negative", "use 0 (all) or a positive count")
        _one_of(self.label_source, LABEL_SOURCES, "ood.label_source")
        _between(self.teacher_thresh, 0.0, 1.0, "ood.teacher_thresh")


@dataclass
class TeacherConfig:
    """The open-vocabulary teacher that labels the OOD corpus (once per distinct setting, cached)."""
    kind: str = setting("textseg", (*_TEACHER, TEACHER_FIT), "`textseg` (the benchmark's teacher, fitted on the "
                        "source corpus), `maskclip` (open_clip ViT, training-free), or a plug-in's import path "
                        "`package.module:Class` (docs/extending.md)")
    pretrained: str = setting("", _TEACHER, "checkpoint file (or open_clip tag for maskclip); \"\" = fit/reuse the "
                              "cached textseg")
    arch: str = setting("ViT-B-16", _TEACHER, "open_clip model name (maskclip)")
    templates: TemplateSet = setting("single", (*_TEACHER, TEACHER_FIT), "prompt templates")
    resolution: int = setting(0, _TEACHER, "teacher input side (0 = native image size)")
    sliding_window: bool = setting(False, _TEACHER, "label images larger than the model's input in overlapping "
                                   "windows of that size (maskclip)")
    batch_size: int = setting(64, (RESOURCES, INERT_WITHOUT_OOD, INERT_WITHOUT_TEACHER_LABELS),
                              "images per teacher call")
    fit_steps: int = setting(1500, (*_TEACHER, TEACHER_FIT), "textseg fitting steps on the source corpus (~100 s "
                             "on 2 CPU cores)")
    label_noise: float = setting(0.0, _TEACHER, "a weaker teacher on purpose: this share of its OOD object segments "
                                 "get another target class (seeded by image id; a new label set per value; "
                                 "docs/method.md §7)")

    def __post_init__(self):
        _registered_or_import_path(self.kind, TEACHER_KINDS, "teacher.kind")
        _one_of(self.templates, TEMPLATE_SETS, "teacher.templates")
        _require(self.resolution >= 0, "teacher.resolution", "is negative", "use 0 (native) or a size in pixels")
        _require(self.batch_size >= 1, "teacher.batch_size", "must be >= 1", "use a positive batch size")
        _require(self.fit_steps >= 1, "teacher.fit_steps", "must be >= 1", "use a positive number of steps")
        _between(self.label_noise, 0.0, 1.0, "teacher.label_noise")


@dataclass
class TrainConfig:
    """How the student is trained: the method, its losses and schedule, and how the training runs."""
    method: Method = setting("semiovs", (EXPERIMENT, DECIDES_LABELS), "`supervised` (labeled images only), "
                             "`unimatch`, or `semiovs` (UniMatch with the OOD stream)")
    conf_thresh: float = setting(0.95, (EXPERIMENT,), "τ on the student's ID pseudo-labels")
    lambda_ood: float = setting(1.0, (EXPERIMENT,), "λ: weight of the OOD loss; total = (L_x + L_u + λ·L_ood) / "
                                "(2 + λ)")
    epochs: int = setting(6, (EXPERIMENT, RESUMABLE), "training epochs")
    iters_per_epoch: int = setting(40, (EXPERIMENT,), "steps per epoch; 0 = one pass over the ID unlabeled set "
                                   "(the paper's epoch)")
    batch_size: int = setting(8, (EXPERIMENT,), "labeled images per step (per Train worker); ID unlabeled per step "
                              "= this, OOD share of 2× this (semiovs)")
    lr: float = setting(0.1, (EXPERIMENT,), "SGD learning rate, poly decay (power 0.9) per step; 0.1 suits the "
                        "from-scratch CPU student (docs/results.md), the paper's pretrained ResNet uses 0.001 with "
                        "lr_multi 10 (`paper_voc.yaml`)")
    lr_multi: float = setting(1.0, (EXPERIMENT,), "head lr multiplier (the paper: 10 with a pretrained backbone)")
    weight_decay: float = setting(1e-4, (EXPERIMENT,), "SGD weight decay")
    momentum: float = setting(0.9, (EXPERIMENT,), "SGD momentum")
    num_workers: int = setting(1, (EXPERIMENT, RESUMABLE), "Ray Train DDP workers, each with its own batch and shard "
                               "of the unlabeled images; 0 = local mode (in the trial process, fastest here). Under "
                               "`train.*` rather than `resources.*`: it decides how training runs, not only what it "
                               "reserves")
    amp: bool = setting(False, (EXPERIMENT,), "mixed precision: autocast in train.amp_dtype (on a CPU, bf16 only)")
    sync_bn: bool = setting(False, (EXPERIMENT,), "SyncBatchNorm across DDP workers (GPU only)")
    max_failures: int = setting(1, (FAULT_TOLERANCE, RESUMABLE), "Train worker failures a trial survives (it "
                                "restarts from its last checkpoint)")
    trial_retries: int = setting(1, (FAULT_TOLERANCE,), "times Tune restarts a failed trial (e.g. its driver's node "
                                 "died), from its last checkpoint")
    overlay_images: int = setting(4, (DIAGNOSTICS, RESUMABLE), "val images drawn with their predictions every epoch "
                                  "(MLflow `eval/overlays_epoch_NNN.png`; 0 = off, at most 16)")
    prevmatch: bool = setting(False, (EXPERIMENT,), "PrevMatch guidance (docs/method.md §5; `unimatch`/`semiovs` "
                              "only): frozen copies of the model after each new best val mIoU label the ID unlabeled "
                              "images; total = (L_x + L_u + λ_prev·L_prev + λ·L_ood) / (2 + λ_prev + λ), λ_prev a "
                              "triangle over the epochs peaking at half; logs `loss_prev`, `lambda_prev`, "
                              "`prev_models`")
    prev_max_models: int = setting(8, (EXPERIMENT,), "PrevMatch: frozen past models kept (the oldest is dropped past "
                                   "this; each adds its weights to every checkpoint)")
    prev_max_k: int = setting(3, (EXPERIMENT,), "PrevMatch: each step ensembles K ~ U{1..min(this, kept)} past "
                              "models with Dirichlet weights")
    prev_thresh: float = setting(0.9, (EXPERIMENT,), "PrevMatch: confidence threshold on the ensemble's "
                                 "pseudo-labels")
    loader_workers: int = setting(0, _RESOURCE, "DataLoader processes that make each Train worker's coming batches "
                                  "while it trains (prefetch 2 steps each; pinned memory and `non_blocking` copies "
                                  "on CUDA); 0 = the worker makes each batch itself between steps. Same batches "
                                  "either way, also after a resume. They share the worker's CPU reservation: raise "
                                  "`resources.cpus_per_worker` to give them cores")
    amp_dtype: AmpDtype = setting("auto", (EXPERIMENT,), "train.amp's dtype: `auto` = bf16 where the device supports "
                                  "it (a CPU, or a GPU with bf16), else fp16 with loss scaling; `fp16` is CUDA only")
    channels_last: bool = setting(False, _RESOURCE, "NHWC memory format for the student and its input images "
                                  "(faster convolutions on tensor-core GPUs)")
    cudnn_benchmark: bool = setting(False, _RESOURCE, "let cuDNN search for the fastest convolution algorithms "
                                    "(fixed crop sizes)")

    def __post_init__(self):
        _one_of(self.method, METHODS, "train.method")
        _between(self.conf_thresh, 0.0, 1.0, "train.conf_thresh")
        _require(self.lambda_ood >= 0, "train.lambda_ood", "is negative", "use a value >= 0")
        _require(self.epochs >= 1, "train.epochs", "must be >= 1", "use a positive number of epochs")
        _require(self.iters_per_epoch >= 0, "train.iters_per_epoch", "is negative", "use 0 (auto) or more")
        _require(self.batch_size >= 1, "train.batch_size", "must be >= 1", "use a positive batch size")
        _require(self.lr > 0, "train.lr", "must be > 0", "use a positive learning rate")
        _require(self.num_workers >= 0, "train.num_workers", "is negative", "use 0 (local mode) or more")
        _require(self.max_failures >= 0, "train.max_failures", "is negative", "use 0 or more")
        _require(self.trial_retries >= 0, "train.trial_retries", "is negative", "use 0 or more")
        # one picture row per image, drawn every epoch: a handful
        _between(self.overlay_images, 0, 16, "train.overlay_images")
        _require(not self.prevmatch or self.method != "supervised", "train.prevmatch",
                 "applies only to train.method unimatch or semiovs, not supervised",
                 "set train.method to unimatch or semiovs, or train.prevmatch to false")
        _require(self.prev_max_models >= 1, "train.prev_max_models", "must be >= 1", "use e.g. 8 (the paper)")
        _require(self.prev_max_k >= 1, "train.prev_max_k", "must be >= 1", "use e.g. 3 (the paper)")
        _between(self.prev_thresh, 0.0, 1.0, "train.prev_thresh")
        _between(self.loader_workers, 0, 64, "train.loader_workers")
        _one_of(self.amp_dtype, AMP_DTYPES, "train.amp_dtype")


@dataclass
class ModelConfig:
    """The student network and how its encoder starts."""
    arch: str = setting("unet_small", (EXPERIMENT, ENCODER), "`unet_small` (the CPU student), `deeplabv3plus_r50`, "
                        "`deeplabv3plus_r101`, or a plug-in's import path `package.module:Class` "
                        "(docs/extending.md)")
    width: int = setting(16, (EXPERIMENT, ENCODER), "base channel count of unet_small")
    fp_dropout: float = setting(0.5, (EXPERIMENT,), "Dropout2d of UniMatch's feature-perturbation branch")
    pretrained_backbone: str = setting("", (EXPERIMENT, ENCODER), "local file with torchvision ResNet weights "
                                       "(\"\" = random init, or model.pretrain); takes precedence over model.pretrain")
    pretrain: Pretrain = setting("none", (EXPERIMENT, ENCODER), "how the encoder starts when pretrained_backbone is "
                                 "\"\": `source_classification` = pretrained once (cached) by image-level "
                                 "classification of the dataset's labeled source corpus (orchestrator/students); "
                                 "`none` = random")
    pretrain_steps: int = setting(3000, (EXPERIMENT, ENCODER), "SGD steps of that pretraining (batch 32)")

    def __post_init__(self):
        _registered_or_import_path(self.arch, STUDENT_ARCHS, "model.arch")
        _require(self.width >= 4, "model.width", "must be >= 4", "use a larger width")
        _between(self.fp_dropout, 0.0, 0.95, "model.fp_dropout")
        _one_of(self.pretrain, PRETRAINS, "model.pretrain")
        _require(self.pretrain_steps >= 1, "model.pretrain_steps", "must be >= 1", "use a positive number of steps")


@dataclass
class ResourcesConfig:
    """What each part of a run reserves from Ray, and on which nodes."""
    cpus_per_worker: float = setting(1.0, _RESOURCE, "CPUs per Train worker (its train.loader_workers share them)")
    gpus_per_worker: float = setting(0.0, _RESOURCE, "GPUs per Train worker; > 0 selects nccl, AMP and SyncBN where "
                                     "enabled")
    trial_cpus: float = setting(0.0, _RESOURCE, "CPUs of the Tune function that drives a trial's TorchTrainer: it only "
                                "waits on it, so it holds resources.trial_driver_mib of Ray's `memory` and no CPU; in local mode "
                                "it holds the worker's CPUs")
    trial_driver_mib: int = setting(1400, _RESOURCE, "Ray `memory` (MiB) a trial's Tune function reserves for the "
                                    "trial's processes beside its Train workers (the Tune function, Train's "
                                    "controller and its helper actors: 1.4 GiB measured, docs/architecture.md), so "
                                    "a node never holds more trial drivers than its memory, e.g. a head with 0 CPUs")
    trial_resource: str = setting("", _RESOURCE, "a custom Ray resource a trial's driver needs (e.g. `on_demand`): "
                                  "pins it to the nodes that have it; \"\" = any node")
    worker_resource: str = setting("", _RESOURCE, "a custom Ray resource each Train worker needs (e.g. a GPU pool): "
                                   "pins them to the nodes that have it; \"\" = any node")
    teacher_actors: int = setting(1, _RESOURCE, "Ray Data actor-pool size for pseudo-labeling (one per GPU on a "
                                  "cluster)")
    cpus_per_teacher: float = setting(1.0, _RESOURCE, "CPUs per labeling actor")
    gpus_per_teacher: float = setting(0.0, _RESOURCE, "GPUs per labeling actor")

    def __post_init__(self):
        _require(self.cpus_per_worker > 0, "resources.cpus_per_worker", "must be > 0", "use e.g. 1")
        _require(self.gpus_per_worker >= 0, "resources.gpus_per_worker", "is negative", "use 0 or more")
        _require(self.trial_cpus >= 0, "resources.trial_cpus", "is negative", "use 0 or more")
        _require(self.trial_driver_mib >= 64, "resources.trial_driver_mib", "is below 64", "use e.g. 1400")
        _require(self.teacher_actors >= 1, "resources.teacher_actors", "must be >= 1", "use 1 or more")
        _require(self.cpus_per_teacher >= 0, "resources.cpus_per_teacher", "is negative", "use 0 or more")
        _require(self.gpus_per_teacher >= 0, "resources.gpus_per_teacher", "is negative", "use 0 or more")
        for key in ("trial_resource", "worker_resource"):   # a Ray name: refused here, not by Ray mid-sweep
            problem = resource_problem(getattr(self, key))
            _require(problem is None, f"resources.{key}", f"{getattr(self, key)!r} {problem}",
                     "use the name a node's `ray start --resources` declares, e.g. on_demand")


@dataclass
class ExperimentConfig:
    """A run's whole config: the sections above, and the run seed."""
    data: DataConfig = field(default_factory=DataConfig)
    ood: OODConfig = field(default_factory=OODConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    seed: int = setting(0, (EXPERIMENT,), "run seed (per-worker seeds derive from it)")

    @property
    def uses_teacher_labels(self) -> bool:
        return self.train.method == "semiovs" and self.ood.label_source == "teacher" and self.ood.ratio > 0

    @property
    def uses_ood(self) -> bool:
        return self.train.method == "semiovs" and self.ood.label_source != "none" and self.ood.ratio > 0


# ---- flat <-> typed -------------------------------------------------------------------------------

def _field_types() -> dict[str, type]:
    """Dotted key → the Python type of its field."""
    types: dict[str, type] = {}
    for top in dataclasses.fields(ExperimentConfig):
        section = top.default_factory() if top.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(section):
            for f in dataclasses.fields(section):
                types[f"{top.name}.{f.name}"] = type(getattr(section, f.name))
        else:
            types[top.name] = type(top.default)
    return types


CONFIG_KEYS: dict[str, type] = _field_types()


def _key_fields() -> dict[str, dataclasses.Field]:
    """Dotted key → its dataclass field, in declaration order (the order of CONFIG_KEYS)."""
    found: dict[str, dataclasses.Field] = {}
    for top in dataclasses.fields(ExperimentConfig):
        if top.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(top.default_factory):
            found.update({f"{top.name}.{f.name}": f for f in dataclasses.fields(top.default_factory)})
        else:
            found[top.name] = top
    return found


KEY_FIELDS: dict[str, dataclasses.Field] = _key_fields()
KEY_ROLES: dict[str, tuple[str, ...]] = {key: tuple(f.metadata.get("roles", ())) for key, f in KEY_FIELDS.items()}
KEY_HELP: dict[str, str] = {key: f.metadata.get("help", "") for key, f in KEY_FIELDS.items()}


def keys_with(role: str) -> tuple[str, ...]:
    """The config keys that have `role` (config_roles.py), in declaration order."""
    if role not in ROLES:
        raise ValueError(f"unknown config role {role!r}; the roles are {', '.join(ROLES)}")
    return tuple(key for key, roles in KEY_ROLES.items() if role in roles)


def key_prefixes(role: str) -> tuple[str, ...]:
    """keys_with(role) for `str.startswith`: a section whose every key has the role is given once, as `section.`,
    so a key that older code wrote in that section (e.g. in a checkpoint's config) counts too."""
    keys = keys_with(role)
    sections = {key.split(".")[0] for key in keys if "." in key}
    whole = {s for s in sections if all(role in r for k, r in KEY_ROLES.items() if k.startswith(s + "."))}
    out: list[str] = []
    for key in keys:
        section = key.split(".")[0]
        entry = f"{section}." if "." in key and section in whole else key
        if entry not in out:
            out.append(entry)
    return tuple(out)


def role_problems(fields: dict[str, dataclasses.Field] | None = None) -> list[str]:
    """What is wrong with the fields' roles and help (default: every config key): each needs exactly one purpose
    role, only known roles, and a help text."""
    problems = []
    for key, f in (KEY_FIELDS if fields is None else fields).items():
        roles = tuple(f.metadata.get("roles", ()))
        purposes = [r for r in roles if r in PURPOSES]
        unknown = [r for r in roles if r not in ROLES]
        if not roles:
            problems.append(f"{key}: no roles. Fix: declare it with setting(default, roles, help) "
                            f"(orchestrator/core/config_roles.py lists the roles)")
            continue
        if unknown:
            problems.append(f"{key}: unknown role(s) {', '.join(unknown)}. Fix: use {', '.join(ROLES)}")
        if len(purposes) != 1:
            problems.append(f"{key}: needs exactly one of the purpose roles {', '.join(PURPOSES)}, has "
                            f"{', '.join(purposes) or 'none'}")
        if len(set(roles)) != len(roles):
            problems.append(f"{key}: a role is given twice")
        if not f.metadata.get("help"):
            problems.append(f"{key}: no help text")
    return problems


def check_key(key: str, source: str) -> None:
    """Raise a ConfigError naming `source` when `key` is not a config key, with the closest match."""
    if key in CONFIG_KEYS:
        return
    close = difflib.get_close_matches(key, CONFIG_KEYS, n=1)
    hint = f"did you mean '{close[0]}'?" if close else "see the config keys in README.md."
    section = key.split(".")[0]
    same = sorted(k for k in CONFIG_KEYS if k.startswith(section + "."))
    listing = f" Keys under '{section}': {', '.join(same)}." if same else ""
    raise ConfigError(f"{source}: unknown config key '{key}'. Fix: {hint}{listing}")


def coerce_value(key: str, value: Any, source: str) -> Any:
    """Convert `value` to the type of config `key`, or raise a ConfigError naming key and source."""
    check_key(key, source)
    want = CONFIG_KEYS[key]
    ok: Callable[[Any], bool]
    if want is bool:
        ok = lambda v: isinstance(v, bool)
    elif want is int:
        ok = lambda v: isinstance(v, int) and not isinstance(v, bool)
    elif want is float:
        ok = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    else:  # str: numbers are fine as names (data.split: 16)
        ok = lambda v: isinstance(v, (str, int, float)) and not isinstance(v, bool)
    if not ok(value):
        raise ConfigError(f"{source}: config key '{key}' expects {want.__name__}, got {value!r} "
                          f"({type(value).__name__}). Fix: give a {want.__name__} value.")
    if want is str:   # a text value becomes a path, a Ray name or an MLflow param: no control characters
        problem = text_problem(str(value))
        if problem:
            raise ConfigError(f"{source}: config key '{key}' {problem}. Fix: give a plain one-line value.")
    return want(value)


def flatten(cfg: ExperimentConfig) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in dataclasses.asdict(cfg).items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def _check_plugins(cfg: ExperimentConfig) -> None:
    """Import the plug-ins an import-path teacher.kind / model.arch names and check them against their protocol.

    Why here: every value a user gives (--set, a search space's fixed: and each swept value, the Python API) is
    turned into a config by build_config before Ray starts, so a missing module or class is one error line, not
    a failed labeling actor or trial. Not in __post_init__ and not in config_from_flat: a config rebuilt from its
    flat form (a trial's params, a saved student's config) was checked when it was made, and there it would make
    every trial process and `run.py predict` import a teacher they never run. A module is imported once per
    process (sys.modules), so checking every swept value costs nothing more."""
    if is_import_path(cfg.teacher.kind):
        load_teacher_class(cfg.teacher.kind, "teacher.kind")
    if is_import_path(cfg.model.arch):
        load_student_class(cfg.model.arch, "model.arch")


def build_config(overrides: dict[str, Any] | None = None, source: str = "config", *,
                 check_plugins: bool = True) -> ExperimentConfig:
    """Defaults + dotted-key overrides → a validated ExperimentConfig (raises ConfigError).
    `check_plugins`: import and check a plug-in teacher.kind / model.arch (see _check_plugins)."""
    values = flatten(ExperimentConfig())
    for key, value in (overrides or {}).items():
        values[key] = coerce_value(key, value, source)
    sections: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for key, value in values.items():
        if "." in key:
            section, name = key.split(".", 1)
            sections.setdefault(section, {})[name] = value
        else:
            top[key] = value
    classes = {f.name: f.default_factory for f in dataclasses.fields(ExperimentConfig)
               if f.default_factory is not dataclasses.MISSING}
    try:
        built = {name: classes[name](**kwargs) for name, kwargs in sections.items()}
        cfg = ExperimentConfig(**built, **top)
        if check_plugins:
            _check_plugins(cfg)
        return cfg
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def config_from_flat(flat: dict[str, Any], source: str = "config") -> ExperimentConfig:
    """Rebuild a config from its flat form (e.g. a trial's resolved params). Its plug-ins were checked when it was
    first built; they are imported where they run (see _check_plugins)."""
    return build_config(flat, source, check_plugins=False)


def allowed_values_help() -> str:
    """The keys that take one of a few values, with those values (for `--help`)."""
    def listing(key: str, values: tuple[str, ...]) -> str:
        plugin = [f"{IMPORT_PATH_FORM} (a plug-in {PLUGIN_KEYS[key]}, docs/extending.md)"] if key in PLUGIN_KEYS else []
        return f"{key} = {' | '.join([*values, *plugin])}"

    return "keys with fixed values: " + "; ".join(listing(key, values) for key, values in CHOICES.items())


@dataclass(frozen=True)
class KeyedRequest:
    """The values a config has on the keys of one role (`KEYS`): equal requests share one cached product, such as a
    label set or a pretrained encoder (hashable, picklable). Subclasses set KEYS and WHAT."""
    values: tuple[tuple[str, Any], ...]
    KEYS: ClassVar[tuple[str, ...]] = ()
    WHAT: ClassVar[str] = "request"   # names the source in a validation error

    @classmethod
    def from_config(cls, cfg: ExperimentConfig):
        flat = flatten(cfg)
        return cls(tuple((key, flat[key]) for key in cls.KEYS))

    def config(self) -> ExperimentConfig:
        """A config holding only the request's values (defaults elsewhere): all that the product may read."""
        return build_config(dict(self.values), self.WHAT)
