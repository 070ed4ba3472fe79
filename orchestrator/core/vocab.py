"""Class vocabularies: the names (and synonyms) a dataset's label ids stand for.

An open-vocabulary teacher is prompted with a Vocabulary; a dataset ships the one its labels use.
Label id = index into ``classes``; id 0 is background. ``background_concepts`` are extra names whose
scores vote for class 0 (SemiOVS prompts 151 COCO-Stuff concepts this way for VOC).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ClassConcepts:
    name: str
    synonyms: tuple[str, ...] = ()

    @property
    def concepts(self) -> tuple[str, ...]:
        return (self.name, *self.synonyms)


@dataclass(frozen=True)
class Vocabulary:
    classes: tuple[ClassConcepts, ...]
    background_concepts: tuple[str, ...] = field(default=())

    def __post_init__(self):
        if not self.classes:
            raise ValueError("a Vocabulary needs at least one class (index 0 = background)")
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError(f"class names must be unique, got {names}")

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict:
        return {
            "classes": [{"name": c.name, "synonyms": list(c.synonyms)} for c in self.classes],
            "background_concepts": list(self.background_concepts),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Vocabulary":
        return cls(
            classes=tuple(ClassConcepts(c["name"], tuple(c.get("synonyms", ()))) for c in d["classes"]),
            background_concepts=tuple(d.get("background_concepts", ())),
        )
