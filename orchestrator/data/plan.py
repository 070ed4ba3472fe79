"""Which files a run trains on: the dataset split, the OOD corpus and the vocabulary (pure decisions + lookups).

The embedded default (`data.dataset: shapes`, no `data.root`) is generated into the cache on first use.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from orchestrator.core.config import ExperimentConfig
from orchestrator.core.errors import ConfigError
from orchestrator.core.vocab import Vocabulary


@dataclass(frozen=True)
class DataPlan:
    root: str
    labeled: tuple[tuple[str, str | None], ...]
    unlabeled: tuple[tuple[str, str | None], ...]
    val: tuple[tuple[str, str | None], ...]
    test: tuple[tuple[str, str | None], ...]  # empty when the dataset has no test list
    ood: tuple[tuple[str, str], ...]        # (image_id, absolute image path), subsampled by ood.num_images
    ood_masks: tuple[str | None, ...]       # ground truth of OOD images when it exists (diagnostics only)
    vocabulary: Vocabulary                  # the target classes (label ids)
    teacher_vocabulary: Vocabulary          # targets + background concepts the teacher is prompted with


def shapes_spec(cfg: ExperimentConfig):
    from orchestrator.data.shapes import ShapesSpec

    d = cfg.data
    splits = tuple(n for n in ShapesSpec.splits if n < d.num_train)  # a small pool keeps the splits that fit
    return ShapesSpec(image_size=d.image_size, num_train=d.num_train, num_val=d.num_val, num_test=d.num_test,
                      num_ood=d.num_ood,
                      num_source=d.num_source, distractor_share=d.distractor_share, style_shift=d.style_shift,
                      seed=d.seed, splits=splits or (1,), id_class_prior=d.id_class_prior, id_distractor_share=d.id_distractor_share)


def dataset_root(cfg: ExperimentConfig, cache_root: Path, progress=None) -> Path:
    """The dataset folder; generates the `shapes` benchmark into the cache when no root is given (with
    `progress`, a core.progress factory, shown while it draws)."""
    if cfg.data.root:
        return Path(cfg.data.root).expanduser().resolve()
    from orchestrator.data.shapes import ensure_shapes

    return ensure_shapes(cache_root, shapes_spec(cfg), progress)


def build_plan(cfg: ExperimentConfig, cache_root: Path) -> DataPlan:
    from orchestrator.data.mixing import subsample_corpus
    from orchestrator.data.voc import SegDataset, load_vocabulary

    root = dataset_root(cfg, cache_root)
    ds = SegDataset.resolve(root, cfg.data.split, cfg.data.splits_dir or None)
    vocab = load_vocabulary(root)
    corpus = ood_corpus(cfg, root) if cfg.uses_ood else []
    if cfg.ood.num_images > len(corpus):
        raise ConfigError(f"ood.num_images={cfg.ood.num_images} but the OOD corpus has {len(corpus)} "
                          f"images. Fix: use at most {len(corpus)}, or 0 for all.")
    keep = subsample_corpus(corpus, cfg.ood.num_images, cfg.seed)  # nested: a larger subset adds images
    return DataPlan(root=str(root), labeled=ds.labeled, unlabeled=ds.unlabeled, val=ds.val, test=ds.test,
                    ood=tuple((image_id, path) for image_id, path, _ in keep),
                    ood_masks=tuple(mask for _, _, mask in keep), vocabulary=vocab,
                    teacher_vocabulary=teacher_vocabulary(root, vocab))


def teacher_vocabulary(root: Path, target: Vocabulary) -> Vocabulary:
    """Targets plus background concepts: every name and synonym of the dataset's non-target classes
    (as SemiOVS prompts COCO-Stuff's 151 non-VOC concepts as background)."""
    import json

    extra: tuple[str, ...] = ()
    classes_file = root / "classes.json"
    if classes_file.is_file():
        source = json.loads(classes_file.read_text()).get("source")
        if source:
            others = Vocabulary.from_dict(source).classes[target.num_classes:]
            extra = tuple(concept for c in others for concept in c.concepts)
    merged = tuple(dict.fromkeys(target.background_concepts + extra))
    return Vocabulary(classes=target.classes, background_concepts=merged)


def ood_corpus(cfg: ExperimentConfig, data_root: Path) -> list[tuple[str, str, str | None]]:
    """(image_id, image path, ground-truth mask or None) of the whole OOD corpus, in corpus order.
    The id is the path relative to the corpus folder: stable across machines that mount it elsewhere."""
    from orchestrator.data.voc import list_ood_corpus

    root = Path(cfg.ood.root).expanduser() if cfg.ood.root else data_root / "ood"
    base = root if root.is_dir() else root.parent
    return [(_image_id(img, base), img, mask) for img, mask in list_ood_corpus(root)]


def _image_id(path: str, base: Path) -> str:
    p = Path(path)
    try:
        return str(p.relative_to(base.resolve()))
    except ValueError:
        return str(p)
