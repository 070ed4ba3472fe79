"""Progress of a long step, with an ETA: a tqdm bar on a terminal, one plain line every few seconds otherwise
(a log file or a pipe gets no carriage-return soup; core.console's Console prints those lines its way: the time
in front).

    with progress("teacher fit", total=1500, unit="step") as bar:
        bar.update(100)

`silent` is the same interface doing nothing (--quiet, tests).
"""
from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

EVERY_SECONDS = 5.0   # a line at most this often when the stream is not a terminal


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    minutes, secs = divmod(seconds, 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def progress_line(label: str, done: float, total: float, elapsed: float, unit: str,
                  rate: float | None = None) -> str:
    """'teacher fit: 300/1500 step (20%), 12.5 step/s, elapsed 24s, ETA 1m36s'; without a rate (none measured
    yet) neither rate nor ETA."""
    share = f" ({100 * done / total:.0f}%)" if total else ""
    speed = f", {rate:.1f} {unit}/s" if rate is not None else ""
    eta = f", ETA {format_duration((total - done) / rate)}" if rate and total else ""
    return f"{label}: {done:g}/{total:g} {unit}{share}{speed}, elapsed {format_duration(elapsed)}{eta}"


class Progress:
    """One long step. A bar when `stream` is a terminal, else `progress_line` at most every `every` seconds
    (and once at the end)."""

    def __init__(self, label: str, total: float, unit: str = "it", stream: TextIO | None = None,
                 every: float = EVERY_SECONDS, clock: Callable[[], float] = time.monotonic,
                 write: Callable[[str], None] | None = None):
        self.label, self.total, self.unit, self.every, self.clock = label, total, unit, every, clock
        self.stream = stream or sys.stdout
        self.write = write or (lambda line: print(line, file=self.stream, flush=True))   # a periodic line
        self.done = 0.0
        self.shown = None   # the count of the last line printed
        self.first = None   # (time, count) of the first progress
        self.started = self.last = clock()
        self._bar = None
        if _is_terminal(self.stream):
            from tqdm import tqdm
            self._bar = tqdm(total=total, desc=label, unit=unit, file=self.stream, dynamic_ncols=True)

    def update(self, n: float = 1) -> None:
        self.set(self.done + n)

    def set(self, done: float) -> None:
        if self._bar is not None:
            self._bar.update(done - self.done)
        now = self.clock()
        if self.first is None and done > 0:
            self.first = (now, done)   # the rate counts from here: start-up before it is not work
        self.done = done
        if self._bar is None and now - self.last >= self.every:
            self.last = now
            self._print()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.done and self.shown != self.done:
            self._print()

    def _print(self) -> None:
        self.shown = self.done
        now = self.clock()
        rate = None   # counted from the first progress: the start-up before it (a worker starting, data
        if self.first is not None and now > self.first[0] and self.done > self.first[1]:   # loading) is no rate
            rate = (self.done - self.first[1]) / (now - self.first[0])
        self.write(progress_line(self.label, self.done, self.total, now - self.started, self.unit, rate))

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Silent:
    def update(self, n: float = 1) -> None: ...
    def set(self, done: float) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> "_Silent": return self
    def __exit__(self, *exc) -> None: ...


ProgressFactory = Callable[..., "Progress | _Silent"]


def progress(label: str, total: float, unit: str = "it") -> Progress:
    """The default factory: on stdout."""
    return Progress(label, total, unit)


def silent(label: str, total: float, unit: str = "it") -> _Silent:
    return _Silent()


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
