"""Where things live on disk: the cache (data, teachers, labels) and Tune's storage.

Defaults are folders under `.semiovs/` in the working directory; `SEMIOVS_HOME` moves them, and the
CLI's --cache / --storage override each one. Every derived path goes through `inside`, so a name
built from user input can never escape its root.
"""
from __future__ import annotations

import os
from pathlib import Path

from orchestrator.core.errors import UserError


def home() -> Path:
    return Path(os.environ.get("SEMIOVS_HOME") or Path.cwd() / ".semiovs").resolve()


def default_cache_root() -> Path:
    return home() / "cache"


def default_storage_root() -> Path:
    return home() / "ray_results"


def resolve_root(value: str | None, default: Path, flag: str = "--cache") -> Path:
    """A local folder (made absolute) from a CLI value, or the default."""
    if not value:
        return default
    if "://" in value:
        # Datasets, teachers and label shards are read as files by every worker, many times per epoch.
        raise UserError(f"{flag} '{value}': the cache must be a folder, not a URI. Fix: put it on a filesystem "
                        f"every node mounts (NFS, EFS, the cluster's shared home or scratch) and pass its path; "
                        f"--storage (checkpoints) may be an s3:// URI.")
    return Path(value).expanduser().resolve()


def inside(root: Path, *parts: str) -> Path:
    """root/parts…, refusing any result outside `root` (e.g. a key containing '..')."""
    root = root.resolve()
    path = root.joinpath(*parts).resolve()
    if path != root and root not in path.parents:
        raise UserError(f"path {path} escapes its root {root}. Fix: use a plain name without '..' or '/'.")
    return path


def train_run_name(run_id: str) -> str:
    """The Ray Train run of a trial (or of a single run): a stable name, so a restart finds it again."""
    return f"train-{run_id}"


def run_files_dir(files_root: Path, run_name: str) -> Path:
    """Where a run's rank-0 worker writes per-epoch pictures and its broken-sample list for the driver."""
    return inside(files_root, "files", run_name)


def files_root(storage: str, cache: Path, *parts: str) -> Path:
    """The folder that holds run files (`run_files_dir`) of a sweep (parts = its name) or of single runs:
    in the storage when that is a folder; with storage in a bucket, in the cache, which every node mounts,
    so the driver reads the workers' pictures as files."""
    if "://" in storage:
        return inside(cache, "runs", *parts)
    return inside(Path(storage), *parts)
