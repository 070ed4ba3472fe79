"""User-facing errors: one message saying what is wrong, where, and how to fix it.

`run.py` turns a UserError into that message on stderr and exit code 2, without a traceback.
Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake the user can fix (bad file, key, value, missing folder)."""

    exit_code = 2


class ConfigError(UserError):
    """A bad configuration key or value; the message names the dotted key path."""


class SpaceError(UserError):
    """A bad search-space file; the message names the file and the key path inside it."""
