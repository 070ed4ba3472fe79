"""Tune and Train storage: a local folder, or a `pyarrow.fs` URI (`s3://bucket/prefix`, `gs://…`, `hdfs://…`).

Ray Tune and Train write checkpoints and experiment state there themselves; this module covers the few
files the orchestrator keeps beside them (the sweep's `sweep.json`). An S3-compatible store's endpoint comes
from `AWS_ENDPOINT_URL` (read by pyarrow and boto3 alike) or from the URI itself:
`s3://bucket/prefix?endpoint_override=host:port&scheme=http`. Names joined to a root are plain names, so
a sweep name can never reach outside its storage root.
"""
from __future__ import annotations

import os
from pathlib import Path

from orchestrator.core.errors import UserError
from orchestrator.core.paths import inside


def is_uri(location: str | Path) -> bool:
    return "://" in str(location)


def resolve_storage(value: str | None, default: Path) -> str:
    """The storage root from a CLI value: an absolute local path, or a URI pyarrow can open."""
    if not value:
        return str(default)
    if not is_uri(value):
        return str(Path(value).expanduser().resolve())
    _open(value, what="--storage")
    return value.rstrip("/") if "?" not in value else value


def join(root: str, *names: str) -> str:
    """root/names… for a local folder or a URI (the URI's query, e.g. its endpoint, stays at the end)."""
    if not is_uri(root):
        return str(inside(Path(root), *names))
    for name in names:
        if not name or name in (".", "..") or "/" in name or "?" in name:
            raise UserError(f"'{name}' cannot be a folder name in the storage {root}. "
                            f"Fix: use a plain name without '/', '?' or '..'.")
    base, _, query = root.partition("?")
    return "/".join([base.rstrip("/"), *names]) + (f"?{query}" if query else "")


def read_text(location: str) -> str | None:
    """The text of a file in local or remote storage; None when there is no such file."""
    if not is_uri(location):
        path = Path(location)
        return path.read_text() if path.is_file() else None
    import pyarrow.fs

    fs, path = _open(location)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        return stream.read().decode()


def write_text(location: str, text: str) -> None:
    """Write a whole file at once: a local file via rename, an object by one upload (never half of one)."""
    if not is_uri(location):
        path = Path(location)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
        return
    fs, path = _open(location)
    with fs.open_output_stream(path) as stream:
        stream.write(text.encode())


def delete_file(location: str) -> None:
    if not is_uri(location):
        Path(location).unlink(missing_ok=True)
        return
    fs, path = _open(location)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass


def _open(location: str, what: str = "the storage"):
    """(filesystem, path) for a URI, with one clear error for an unknown scheme or a malformed URI."""
    import pyarrow.fs

    try:
        return pyarrow.fs.FileSystem.from_uri(location)
    except (pyarrow.ArrowInvalid, pyarrow.ArrowNotImplementedError, ValueError) as err:
        raise UserError(f"{what} '{location}' cannot be opened: {err}. Fix: pass a local folder or a URI pyarrow "
                        f"supports (s3://bucket/prefix, gs://bucket/prefix, hdfs://host/path); for an "
                        f"S3-compatible store set AWS_ENDPOINT_URL or add ?endpoint_override=HOST:PORT.") from None
