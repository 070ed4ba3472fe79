"""Names a user gives: a sweep (which is also an MLflow experiment), an experiment, a text config value.

A name is data, never syntax. It becomes a folder (`<storage>/<name>`), the last part of an artifact URI
(`<root>/<name>`), a Tune experiment, an MLflow tag value inside a search filter, and a word in the commands
we print. Quotes, spaces and any script are fine: every consumer quotes them (tracking.client.find_runs,
shlex.quote in printed commands). What none of them can hold is refused up front, before anything is written:
a path separator or `.`/`..` (the folder would escape or alias its root), `#`, `%`, `?` (they cut or escape
a URI: `a#b` would put its artifacts in `a/`), characters that do not print (a newline splits our one-line
errors and the logs), a leading `-` (it reads as a flag), and names too long for one file name.
"""
from __future__ import annotations

import re

from orchestrator.core.errors import UserError

MAX_NAME_CHARS = 100
MAX_NAME_BYTES = 200          # a file name holds 255 bytes on ext4/xfs; keep room for suffixes
MAX_TEXT_CHARS = 4096         # a text config value (a path, a tag); MLflow keeps a param of at most 6000
URI_CHARS = "#%?"
SEPARATORS = "/\\"


def name_problem(name: object) -> str | None:
    """What makes `name` unusable as a sweep or experiment name (None = usable). Pure."""
    if not isinstance(name, str):
        return f"is a {type(name).__name__}, not text"
    if not name.strip():
        return "is empty"
    if name != name.strip():
        return "starts or ends with white space"
    if len(name) > MAX_NAME_CHARS or len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_CHARS} characters ({MAX_NAME_BYTES} bytes in UTF-8)"
    if not name.isprintable():
        return "holds a character that does not print (a newline, tab or control character)"
    found = sorted({c for c in name if c in SEPARATORS + URI_CHARS})
    if found:
        return f"holds {' '.join(found)} (a path separator or a URI character)"
    if name.startswith("."):
        return "starts with '.' (a hidden or relative folder)"
    if name.startswith("-"):
        return "starts with '-' (it would read as a flag)"
    return None


def shown(value: str, limit: int = 60) -> str:
    """A user string for an error line: quoted, escapes visible, never more than one line or `limit` chars."""
    text = value if len(value) <= limit else value[: limit - 3] + "..."
    return repr(text)


def check_name(name: object, where: str) -> str:
    """`name` itself when usable, else a UserError naming `where` it came from and the fix."""
    problem = name_problem(name)
    if problem is not None:
        raise UserError(f"{where} {shown(str(name))} {problem}. Fix: choose a name of letters, digits, spaces "
                        f"and - _ . ' (at most {MAX_NAME_CHARS} characters), e.g. obrien-test.")
    return name  # type: ignore[return-value]


def text_problem(value: str) -> str | None:
    """What makes a free-text config value (a path, a resource name) unusable (None = usable). Pure."""
    if len(value) > MAX_TEXT_CHARS:
        return f"is longer than {MAX_TEXT_CHARS} characters"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "holds a control character (a NUL, newline or tab)"
    return None


RESERVED_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


def resource_problem(value: str) -> str | None:
    """What makes `value` unusable as a custom Ray resource name ("" = none asked, usable). Pure."""
    if not value:
        return None
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,100}", value):
        return "is not a Ray resource name (letters, digits and _ . : - only, at most 100)"
    if value in RESERVED_RESOURCES:
        return f"is one of Ray's own resources ({', '.join(RESERVED_RESOURCES)}), not a custom one"
    return None
