"""What a command prints while it works: progress lines on stdout, silenced by --quiet."""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile


class Console:
    def __init__(self, quiet: bool = False, stream=None):
        self.quiet = quiet
        self.stream = stream   # None = sys.stdout at the time of each call (tests capture it)

    def say(self, *parts) -> None:
        if not self.quiet:
            print(*parts, file=self.stream or sys.stdout, flush=True)

    def progress(self, label: str, total: float, unit: str = "it"):
        """A progress bar (or periodic lines) for a long step; nothing with --quiet."""
        from orchestrator.core.progress import Progress, silent

        return silent(label, total, unit) if self.quiet else Progress(label, total, unit, stream=self.stream)


# A line Ray prints in red that is not a failure: Ray Data's and Ray Train's own actors (MapWorker,
# PreemptionWatcher) are created with restarts and a reference among their constructor arguments, which
# core_worker.cc flags once per process (ray #53727, #57733). Narrow on purpose: any other line still shows.
HARMLESS_RAY_LINES = r"has constructor arguments in the object store and max_restarts > 0"


@contextlib.contextmanager
def stderr_without(pattern: str):
    """Hold this process's stderr (file descriptor 2, which Ray's C++ core writes to directly) in a temporary
    file while the block runs, then write it out without the lines matching `pattern`. Nothing else is
    dropped: an exception in the block still writes out what was held, after the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            drop = re.compile(pattern)
            kept = [line for line in held.read().decode(errors="replace").splitlines(keepends=True)
                    if not drop.search(line)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()
