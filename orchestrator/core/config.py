"""Typed experiment configuration: defaults live here and nowhere else.

A run's config is resolved in this order: dataclass defaults → the search-space file's `fixed:` →
`--set key=value` → the trial's sampled values. Every key is a dotted path (`ood.ratio`); the flat form
is what MLflow records as params and what search spaces and `--set` address.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, get_args

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
Pretrain = Literal["none", "source_classification"]   # model.pretrain (orchestrator/students)   # train.amp: auto = bf16 where the device supports it, else fp16
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


@dataclass
class DataConfig:
    dataset: Dataset = "shapes"  # which layout/class list: the generated benchmark, or real VOC / Context-60
    root: str = ""              # "" = the generated `shapes` benchmark in the cache (made on first use)
    split: str = "16"           # labeled split: number of labeled images ("16", "92") or a split name ("1_16")
    splits_dir: str = ""        # folder holding <split>/labeled.txt and val.txt ("" = <root>/splits)
    seed: int = 0               # generator seed of the `shapes` benchmark
    image_size: int = 64        # `shapes` image side
    crop_size: int = 64         # training crop (the paper uses 321 on VOC)
    num_train: int = 2000       # `shapes`: ID train pool (labeled splits + unlabeled)
    num_val: int = 2000         # `shapes`: ID val images (300 left ±2 mIoU of sampling noise; README, Measured)
    num_test: int = 2000        # `shapes`: held-out ID test images, never used for selection (0 = none)
    num_ood: int = 4000         # `shapes`: OOD corpus images
    num_source: int = 2000      # `shapes`: labeled source corpus (wide vocabulary) for fitting the teacher
    distractor_share: float = 0.5  # `shapes`: share of OOD objects that are distractors
    style_shift: float = 0.2    # `shapes`: low-level style difference of OOD images (0 = same as ID)
    id_class_prior: IdClassPrior = "uniform"  # `shapes`: ID class frequencies; skewed = rings rare (README, Measured)
    max_broken_share: float = 0.05  # stop when more than this share of a corpus cannot be read

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
        _between(self.max_broken_share, 0.0, 1.0, "data.max_broken_share")
        _require(self.dataset == "shapes" or bool(self.root), "data.root",
                 f"is required for data.dataset={self.dataset}", "set data.root to the dataset folder")


@dataclass
class OODConfig:
    root: str = ""              # OOD corpus: a folder of images or a list file; "" = the benchmark's ood/
    ratio: float = 0.5          # share of each unlabeled batch drawn from the OOD corpus (0.5 = paper's 1:1)
    num_images: int = 0         # subsample the corpus to this many images (0 = all)
    label_source: LabelSource = "teacher"  # teacher = open-vocabulary pseudo-labels; self = the student's own; none
    teacher_thresh: float = 0.0  # teacher pixels below this confidence are ignored (applied at read time)

    def __post_init__(self):
        _between(self.ratio, 0.0, 1.0, "ood.ratio")
        _require(self.num_images >= 0, "ood.num_images", "is negative", "use 0 (all) or a positive count")
        _one_of(self.label_source, LABEL_SOURCES, "ood.label_source")
        _between(self.teacher_thresh, 0.0, 1.0, "ood.teacher_thresh")


@dataclass
class TeacherConfig:
    # textseg = the benchmark's fitted teacher; maskclip = open_clip ViT, training-free; or a plug-in's import
    # path package.module:Class (docs/extending.md)
    kind: str = "textseg"
    pretrained: str = ""        # checkpoint file (or open_clip tag for maskclip); "" = fit/reuse the cached textseg
    arch: str = "ViT-B-16"      # open_clip model name (maskclip)
    templates: TemplateSet = "single"  # prompt templates
    resolution: int = 0         # teacher input side (0 = native image size)
    sliding_window: bool = False
    batch_size: int = 64        # images per teacher call
    fit_steps: int = 1500       # textseg fitting steps on the source corpus (~100 s on 2 CPU cores)
    label_noise: float = 0.0    # share of the teacher's OOD object segments given a wrong class (a weaker teacher)

    def __post_init__(self):
        _registered_or_import_path(self.kind, TEACHER_KINDS, "teacher.kind")
        _one_of(self.templates, TEMPLATE_SETS, "teacher.templates")
        _require(self.resolution >= 0, "teacher.resolution", "is negative", "use 0 (native) or a size in pixels")
        _require(self.batch_size >= 1, "teacher.batch_size", "must be >= 1", "use a positive batch size")
        _require(self.fit_steps >= 1, "teacher.fit_steps", "must be >= 1", "use a positive number of steps")
        _between(self.label_noise, 0.0, 1.0, "teacher.label_noise")


@dataclass
class TrainConfig:
    method: Method = "semiovs"
    conf_thresh: float = 0.95   # τ on the student's ID pseudo-labels
    lambda_ood: float = 1.0     # λ: weight of the OOD loss; total = (L_x + L_u + λ L_ood) / (2 + λ)
    epochs: int = 6
    iters_per_epoch: int = 40   # 0 = one pass over the ID unlabeled set (the paper's epoch)
    batch_size: int = 8         # labeled images per step (and ID unlabeled images per step for unimatch)
    lr: float = 0.1             # for the from-scratch CPU student (README, "Measured")
    lr_multi: float = 1.0       # head lr multiplier (the paper: 10 with a pretrained backbone)
    weight_decay: float = 1e-4
    momentum: float = 0.9
    num_workers: int = 1        # Ray Train DDP workers; 0 = local mode (in the trial process, fastest here)
    amp: bool = False           # mixed precision: autocast in amp_dtype (on CPU: bf16 only)
    sync_bn: bool = False       # SyncBatchNorm across DDP workers (GPU only)
    max_failures: int = 1       # Train worker failures survived per trial (restart from the last checkpoint)
    trial_retries: int = 1      # times Tune restarts a failed trial (e.g. its driver's node died), from its last checkpoint
    overlay_images: int = 4     # val images drawn with their predictions every epoch (0 = off); MLflow artifact
    prevmatch: bool = False     # PrevMatch guidance by past best models (docs/method.md §5); unimatch/semiovs only
    prev_max_models: int = 8    # PrevMatch: frozen snapshots kept (the oldest is dropped past this)
    prev_max_k: int = 3         # PrevMatch: each step ensembles K ~ U{1..min(this, kept)} snapshots
    prev_thresh: float = 0.9    # PrevMatch: confidence threshold on the ensemble's pseudo-labels
    loader_workers: int = 0     # DataLoader processes preparing each Train worker's batches (0 = in its own process)
    amp_dtype: AmpDtype = "auto"   # train.amp's dtype: auto = bf16 where the device supports it, else fp16
    channels_last: bool = False    # NHWC memory format for the student and its inputs (faster convs on GPUs)
    cudnn_benchmark: bool = False  # let cuDNN pick the fastest convolution algorithms (fixed crop sizes)

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
    arch: str = "unet_small"    # a registered student (StudentArch) or a plug-in's import path package.module:Class
    width: int = 16             # base channel count of unet_small
    fp_dropout: float = 0.5     # Dropout2d of UniMatch's feature-perturbation branch
    pretrained_backbone: str = ""  # local file with torchvision ResNet weights ("" = random init)
    # How the encoder starts when pretrained_backbone is "": source_classification = pretrained once (cached) by
    # image-level classification of the dataset's labeled source corpus (orchestrator/students); none = random
    pretrain: Pretrain = "none"
    pretrain_steps: int = 3000   # SGD steps of that pretraining (batch 32)

    def __post_init__(self):
        _registered_or_import_path(self.arch, STUDENT_ARCHS, "model.arch")
        _require(self.width >= 4, "model.width", "must be >= 4", "use a larger width")
        _between(self.fp_dropout, 0.0, 0.95, "model.fp_dropout")
        _one_of(self.pretrain, PRETRAINS, "model.pretrain")
        _require(self.pretrain_steps >= 1, "model.pretrain_steps", "must be >= 1", "use a positive number of steps")


@dataclass
class ResourcesConfig:
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0   # > 0 selects nccl, AMP and SyncBN where enabled
    trial_cpus: float = 0.0        # the Tune function that drives each trial's TorchTrainer (it only waits on it)
    trial_resource: str = ""       # custom Ray resource a trial's driver needs (e.g. on-demand nodes); "" = any node
    worker_resource: str = ""      # custom Ray resource each Train worker needs (e.g. a GPU pool); "" = any node
    teacher_actors: int = 1        # Ray Data actor-pool size for pseudo-labeling (one per GPU on a cluster)
    cpus_per_teacher: float = 1.0
    gpus_per_teacher: float = 0.0

    def __post_init__(self):
        _require(self.cpus_per_worker > 0, "resources.cpus_per_worker", "must be > 0", "use e.g. 1")
        _require(self.gpus_per_worker >= 0, "resources.gpus_per_worker", "is negative", "use 0 or more")
        _require(self.trial_cpus >= 0, "resources.trial_cpus", "is negative", "use 0 or more")
        _require(self.teacher_actors >= 1, "resources.teacher_actors", "must be >= 1", "use 1 or more")
        _require(self.cpus_per_teacher >= 0, "resources.cpus_per_teacher", "is negative", "use 0 or more")
        _require(self.gpus_per_teacher >= 0, "resources.gpus_per_teacher", "is negative", "use 0 or more")
        for key in ("trial_resource", "worker_resource"):   # a Ray name: refused here, not by Ray mid-sweep
            problem = resource_problem(getattr(self, key))
            _require(problem is None, f"resources.{key}", f"{getattr(self, key)!r} {problem}",
                     "use the name a node's `ray start --resources` declares, e.g. on_demand")


@dataclass
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    ood: OODConfig = field(default_factory=OODConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    seed: int = 0

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
