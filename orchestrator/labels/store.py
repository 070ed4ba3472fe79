"""The pseudo-label store: content-addressed, written atomically, read with thresholds applied late.

Layout of one entry, `<cache>/labels/<key>/`:
    shards/*.parquet   columns image_id, label (PNG bytes), confidence (PNG bytes, uint8 = round(255·p)),
                       error (non-empty for a skipped, broken image), class_pixels, conf_hist
    manifest.json      the key's inputs, counts, rejected images, diagnostics, the size and sha256 of every
                       shard (written last; readers check the shards against it)

The key digests everything that changes the teacher's output (teacher kind, weights, vocabulary, templates,
resolution, labeling code version, the corpus' files) and nothing that doesn't: confidence thresholds are
applied when training reads the labels, so sweeping them never re-runs the teacher.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from orchestrator.core.console import exclusive_lock
from orchestrator.core.digest import digest_json
from orchestrator.core.label_format import SHARDS_DIR
from orchestrator.core.paths import inside

# Bump when the labeling code changes what it writes; old entries then stop matching.
LABELING_CODE_VERSION = "1"


def corpus_fingerprint(paths: list[str]) -> str:
    """Digest of the corpus' files by path, size and mtime (cheap, and changes when a file does)."""
    h = hashlib.sha256()
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError as err:   # missing, dangling or looping: labeling rejects and lists it
            h.update(f"{p}\0unreadable {err.errno}\n".encode())
    return h.hexdigest()[:20]


def key_inputs(*, teacher_kind: str, weights_digest: str, arch: str, templates: str, resolution: int,
               sliding_window: bool, vocabulary: dict, corpus: str) -> dict[str, Any]:
    """The dict `cache_key` hashes: what the teacher's labels depend on.

    Existing cache entries were keyed with exactly these names ("weights", not "weights_digest") and values:
    changing either orphans every cached label set (a test pins one key).
    """
    return {"teacher_kind": teacher_kind, "weights": weights_digest, "arch": arch, "templates": templates,
            "resolution": resolution, "sliding_window": sliding_window, "vocabulary": vocabulary,
            "corpus": corpus, "code_version": LABELING_CODE_VERSION}


def cache_key(inputs: dict[str, Any]) -> str:
    return f"{inputs['teacher_kind']}-{digest_json(inputs)}"


@dataclass(frozen=True)
class LabelStore:
    root: Path

    @classmethod
    def at(cls, cache_root: Path, key: str) -> "LabelStore":
        return cls(inside(cache_root, "labels", key))

    @property
    def key(self) -> str:
        return self.root.name

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @property
    def shards(self) -> Path:
        return self.root / SHARDS_DIR

    def is_complete(self) -> bool:
        return self.manifest_path.is_file()

    def manifest(self) -> dict[str, Any]:
        return json.loads(self.manifest_path.read_text())

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive per-key lock across processes: one labels, the others wait (saying so), then reuse."""
        self.root.parent.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(self.root.parent / f"{self.key}.lock", f"the OOD labels {self.key}"):
            yield
