"""The pseudo-label store: content-addressed, written atomically, read with thresholds applied late.

Layout of one entry, `<cache>/labels/<key>/`:
    shards/*.parquet   columns image_id, label (PNG bytes), confidence (PNG bytes, uint8 = round(255·p)),
                       error (non-empty for a skipped, broken image), class_pixels, conf_hist
    manifest.json      the key's inputs, counts, rejected images, diagnostics (written last)

The key digests everything that changes the teacher's output (teacher kind, weights, vocabulary, templates,
resolution, labeling code version, the corpus' files) and nothing that doesn't: confidence thresholds are
applied when training reads the labels, so sweeping them never re-runs the teacher.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from orchestrator.paths import inside

# Bump when the labeling code changes what it writes; old entries then stop matching.
LABELING_CODE_VERSION = "1"


def digest_json(obj: Any, length: int = 20) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


def corpus_fingerprint(paths: list[str]) -> str:
    """Digest of the corpus' files by path, size and mtime (cheap, and changes when a file does)."""
    h = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def key_inputs(*, teacher_kind: str, weights_digest: str, arch: str, templates: str, resolution: int,
               sliding_window: bool, vocabulary: dict, corpus: str) -> dict[str, Any]:
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
        return self.root / "shards"

    def is_complete(self) -> bool:
        return self.manifest_path.is_file()

    def manifest(self) -> dict[str, Any]:
        return json.loads(self.manifest_path.read_text())

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive per-key lock across processes: one labels, the others wait, then reuse."""
        self.root.parent.mkdir(parents=True, exist_ok=True)
        with open(self.root.parent / f"{self.key}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def encode_png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array.astype(np.uint8), mode="L").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)))


def apply_threshold(label: np.ndarray, confidence_u8: np.ndarray, thresh: float) -> np.ndarray:
    """Teacher pixels below `thresh` become 255 (ignored by the OOD loss)."""
    if thresh <= 0:
        return label
    out = label.copy()
    out[confidence_u8 < round(255 * thresh)] = 255
    return out


def read_label_table(store: LabelStore) -> dict[str, tuple[bytes, bytes]]:
    """image_id → (label PNG, confidence PNG) for every image the teacher labeled (broken ones left out)."""
    import pyarrow.parquet as pq

    table = pq.read_table(store.shards, columns=["image_id", "label", "confidence", "error"])
    ids, labels, confs, errors = (table.column(c).to_pylist() for c in ("image_id", "label", "confidence", "error"))
    return {i: (l, c) for i, l, c, e in zip(ids, labels, confs, errors) if not e}
