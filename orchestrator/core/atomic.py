"""Writing files so that a crash or a full disk leaves either the old file or the new one, never half of one;
and telling a full disk apart from other write errors, so the user gets one line naming the folder.
"""
from __future__ import annotations

import contextlib
import errno
import os
import uuid
from pathlib import Path
from typing import Iterator

from orchestrator.core.errors import UserError

NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
NO_SPACE_TEXT = ("No space left on device", "Disk quota exceeded", "[Errno 28]", "errno 28")


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yields a temporary path beside `path`; on success it replaces `path` in one rename, on any error it
    is removed (and `path` is untouched)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        with open(tmp, "rb+") as handle:   # on disk before the rename makes it visible
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_text(path: Path, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text)


def is_no_space(exc: BaseException | None) -> bool:
    """True when `exc`, anything it was raised from, or the error a Ray task carried is a full disk."""
    return any((isinstance(item, OSError) and item.errno in NO_SPACE) or any(t in str(item) for t in NO_SPACE_TEXT)
               for item in _chain(exc))


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__


def folder_of(exc: BaseException) -> str | None:
    """The folder of the file a write failed on, when the error says which."""
    for item in _chain(exc):
        name = getattr(item, "filename", None)
        if isinstance(name, (str, os.PathLike)):
            return str(Path(name).parent)
    return None


def no_space_error(folder: Path | str, what: str, fix: str = "run the same command again") -> UserError:
    return UserError(f"no space left on the device of {folder} while {what}; nothing incomplete was kept. "
                     f"Fix: free space there (or point the command at another folder), then {fix}.")
