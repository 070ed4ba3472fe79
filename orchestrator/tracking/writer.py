"""A background writer: MLflow calls leave the caller's thread (Tune's event loop) and are retried there.

Operations run one at a time in submission order (a trial's run is created before its epochs are logged).
An operation that fails in a way waiting may fix (see retry.is_transient) is retried with backoff, holding
back the ones after it; one that fails otherwise is dropped and counted, and the reconcile from Tune's
storage writes what it left out. `close` gives the queue a grace period, then says what is left.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from orchestrator.tracking import retry

log = logging.getLogger(__name__)


@dataclass
class Op:
    label: str                       # what it writes, for messages ("epoch 3 of trial abc")
    run: Callable[[int], None]       # called with the attempt number: 0, then 1, 2, ... on retries


class TrackingWriter:
    def __init__(self, backoff: Callable[[int], float] = retry.backoff_s):
        self._backoff = backoff
        self._queue: collections.deque[Op] = collections.deque()
        self._cond = threading.Condition()
        self._busy = False                     # an op is running (it is no longer in the queue)
        self._deadline: float | None = None    # set by close(): give up waiting after this time
        self._current: Op | None = None
        self.dropped: list[tuple[str, str]] = []   # (label, error) of ops that failed for good
        self.last_error = ""                       # the newest transient failure, for the final message
        self.failing_since: float | None = None    # monotonic time the current run of failures began
        self.retries = 0
        self._thread = threading.Thread(target=self._loop, name="mlflow-writer", daemon=True)
        self._thread.start()

    def submit(self, label: str, run: Callable[[int], None]) -> None:
        """Queue a write and return at once."""
        with self._cond:
            self._queue.append(Op(label, run))
            self._cond.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until every queued write is done (or dropped); False if time ran out first."""
        end = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + int(self._busy)

    def close(self, grace_s: float) -> list[str]:
        """Let the queue drain for up to `grace_s`, then stop retrying. Returns the labels of the writes
        that did not happen (empty: everything was written or deliberately dropped)."""
        drained = self.flush(grace_s)
        with self._cond:
            self._deadline = time.monotonic()
            left = ([self._current.label] if self._current is not None and self._busy else []) + \
                [op.label for op in self._queue]
            self._queue.clear()
            self._cond.notify_all()
        return [] if drained else left

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                op = self._queue.popleft()
                self._busy, self._current = True, op
            try:
                self._attempt(op)
            finally:
                with self._cond:
                    self._busy, self._current = False, None
                    self._cond.notify_all()

    def _attempt(self, op: Op) -> None:
        attempt = 0
        while True:
            try:
                op.run(attempt)
                self.failing_since = None
                return
            except Exception as exc:   # noqa: BLE001 - a write must never take the sweep down
                if not retry.is_transient(exc):
                    log.warning("MLflow write dropped (%s): %s", op.label, exc)
                    self.dropped.append((op.label, _short(exc)))
                    return
                self.last_error = _short(exc)
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
            attempt += 1
            self.retries += 1
            with self._cond:   # wait, but wake up at once when close() gives up
                end = time.monotonic() + self._backoff(attempt)
                while self._deadline is None and time.monotonic() < end:
                    self._cond.wait(end - time.monotonic())
                if self._deadline is not None:
                    return


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}"
