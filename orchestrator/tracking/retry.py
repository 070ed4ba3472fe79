"""When to retry an MLflow write and how long to wait: pure decisions, no MLflow calls.

A tracking server that is restarting refuses connections or answers 5xx; those pass. A 4xx answer (a bad
parameter, a missing run) will not pass by waiting, so it is not retried: what it left out is reconciled
from Tune's storage later.
"""
from __future__ import annotations

import os

BASE_DELAY_S = 0.5
MAX_DELAY_S = 8.0     # a restarted server is noticed within this many seconds
RETRYABLE_HTTP = {408, 429}


def backoff_s(attempt: int, base: float = BASE_DELAY_S, cap: float = MAX_DELAY_S) -> float:
    """Seconds to wait before retry number `attempt` (1, 2, ...): doubling from `base`, at most `cap`."""
    if attempt < 1:
        return 0.0
    return min(cap, base * 2 ** (attempt - 1))


def http_status(exc: BaseException) -> int | None:
    """The HTTP status an MLflow exception stands for (None for a non-MLflow exception)."""
    get = getattr(exc, "get_http_status_code", None)
    return get() if callable(get) else None


def is_transient(exc: BaseException) -> bool:
    """True when waiting may help: no connection, a timeout, a 5xx, 408/429, a locked sqlite file."""
    status = http_status(exc)
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False   # a local file that is missing or unreadable (a checkpoint) does not come back by waiting
    if status is None:
        return isinstance(exc, (OSError, TimeoutError, ConnectionError)) or "locked" in str(exc)
    return status >= 500 or status in RETRYABLE_HTTP


def configure_http_client() -> None:
    """MLflow's own HTTP retries block a caller for up to ~4 minutes (7 retries, doubling from 2 s);
    our writer retries instead, so one failed call returns quickly. A user's own settings win."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
