"""Short content digests for cache keys, and file checksums: the same input gives the same digest on every machine."""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any


def digest_json(obj: Any, length: int = 20) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


def file_checksum(path) -> dict[str, Any]:
    """Size and sha256 of a file, read in blocks: what a manifest records to find a truncated or changed file."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            size += len(block)
    return {"bytes": size, "sha256": h.hexdigest()}


def checksum_problem(path, recorded: dict[str, Any]) -> str | None:
    """How the file at `path` differs from its recorded checksum (None = intact). The size is compared
    first: a truncated file is named as such without hashing it."""
    if not os.path.isfile(path):
        return f"{path} is missing"
    size = os.path.getsize(path)
    if size != recorded["bytes"]:
        return f"{path} has {size} bytes, {recorded['bytes']} were written (truncated or replaced)"
    if file_checksum(path)["sha256"] != recorded["sha256"]:
        return f"{path} changed after it was written (its sha256 differs)"
    return None
