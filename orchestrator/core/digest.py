"""Short content digests for cache keys: the same JSON-able value gives the same digest on every machine."""
from __future__ import annotations

import hashlib
import json
from typing import Any


def digest_json(obj: Any, length: int = 20) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]
