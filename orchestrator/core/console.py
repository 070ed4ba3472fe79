"""What a command prints while it works: progress lines on stdout, silenced by --quiet."""
from __future__ import annotations

import sys


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
