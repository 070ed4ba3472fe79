"""A folder that fills up while labeling, checkpointing or writing a report: one `error:` line naming the
folder, nothing that looks complete but is not, and the same command completes once space is freed.

The full disk is a small tmpfs (mounting needs root; the tests skip with the reason otherwise, and fail with it
under CI=true: tests/conftest.py's `require`).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from orchestrator.core import atomic
from orchestrator.core.errors import UserError
from tests.conftest import TINY, require


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs, unmounted afterwards."""
    folder = tmp_path / "disk"
    folder.mkdir()
    require(shutil.which("mount"), "cannot mount a tmpfs here: `mount` is not installed (Debian: mount)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], capture_output=True,
                          text=True)
    require(done.returncode == 0, f"cannot mount a tmpfs here (it needs root with CAP_SYS_ADMIN): "
                                  f"{done.stderr.strip() or done.stdout.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path, leave: int) -> Path:
    """Fill `folder`'s file system up to `leave` free bytes; returns the filler (delete it to free space)."""
    filler = folder / f"filler-{uuid.uuid4().hex[:6]}"
    st = os.statvfs(folder)
    with open(filler, "wb") as handle:
        handle.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


def files_under(folder: Path) -> list[str]:
    """Every file under `folder` and every EMPTY folder (as `name/`): a temp folder left behind counts even once
    its files are gone. The fillers are left out, and so are folders that only hold listed entries or fillers."""
    out = []
    for p in folder.rglob("*"):
        if "filler" in p.name:
            continue
        if p.is_file():
            out.append(str(p.relative_to(folder)))
        elif p.is_dir() and not any(p.iterdir()):
            out.append(f"{p.relative_to(folder)}/")
    return sorted(out)


def test_no_space_is_recognised_through_wrappers():
    inner = OSError(28, "No space left on device", "/data/x/shard.parquet")
    wrapped = RuntimeError("task failed")
    wrapped.__cause__ = inner
    ray_task = RuntimeError("task failed")   # Ray's task errors carry the worker's exception as `cause`
    ray_task.cause = inner
    assert atomic.is_no_space(wrapped) and atomic.folder_of(wrapped) == "/data/x"
    assert atomic.is_no_space(ray_task) and atomic.folder_of(ray_task) == "/data/x"
    assert atomic.is_no_space(RuntimeError("pyarrow: [Errno 28] Error writing bytes to file"))
    assert not atomic.is_no_space(OSError(13, "Permission denied"))


@pytest.mark.e2e
def test_full_disk_while_labeling_keeps_no_entry_and_the_rerun_completes(ray_session, shared_cache, small_disk):
    from orchestrator.core.config import build_config
    from orchestrator.labels.job import ensure_labels, label_job
    from orchestrator.labels.pipeline import run_labeling
    from orchestrator.labels.store import LabelStore

    cfg = build_config({**TINY, "train.method": "semiovs"}, "test")
    ensure_labels(cfg, shared_cache, lambda *_: None)   # data and teacher in the shared cache (reused if there)
    job = label_job(cfg, shared_cache)
    job = dataclasses.replace(job, store=LabelStore.at(small_disk, job.store.key))   # labels onto the small disk
    filler = fill(small_disk, leave=24 * 1024)
    with pytest.raises(UserError) as info:
        run_labeling(job)
    message = str(info.value)
    assert "no space left" in message and str(small_disk / "labels") in message and "\n" not in message
    assert files_under(small_disk) == [f"labels/{job.store.key}.lock"]   # no entry, no temp folder
    assert not job.store.is_complete()

    filler.unlink()
    outcome = run_labeling(job)                         # space freed: the same job completes
    assert not outcome.reused and job.store.is_complete() and outcome.labeled == len(job.items)


def test_full_disk_while_saving_a_checkpoint_leaves_no_file(small_disk):
    import torch

    from trainables.distributed import save_checkpoint
    from trainables.run_state import STATE_FILE

    state = {"model": {"w": torch.zeros(256, 1024)}, "epoch": 3}   # 1 MiB of weights
    save_checkpoint({STATE_FILE: {"epoch": 2}}, str(small_disk))   # an older checkpoint in the folder
    fill(small_disk, leave=64 * 1024)
    with pytest.raises(OSError) as info:
        save_checkpoint({STATE_FILE: state}, str(small_disk))
    assert atomic.is_no_space(info.value)
    assert files_under(small_disk) == [STATE_FILE]                 # no torn temp file beside it
    assert torch.load(small_disk / STATE_FILE, weights_only=True) == {"epoch": 2}   # the old one, whole


def test_trials_that_filled_the_storage_end_the_sweep_with_one_error_line(tmp_path):
    from orchestrator.sweep.driver import _refuse_full_disk

    trial_error = RuntimeError("ray.exceptions.RayTaskError: ... OSError: [Errno 28] No space left on device")
    _refuse_full_disk(SimpleNamespace(errors=[]), tmp_path, None)             # no error: nothing to say
    with pytest.raises(UserError, match=f"no space left on the device of {tmp_path} .* with --resume"):
        _refuse_full_disk(SimpleNamespace(errors=[trial_error]), tmp_path, None)


def test_full_disk_while_writing_a_report_keeps_whole_files(sqlite_uri, small_disk):
    from orchestrator.tracking import client as tracking
    from orchestrator.tracking.report import write_report

    exp = tracking.ensure_experiment(sqlite_uri, "full")
    parent = tracking.start_parent_run(sqlite_uri, exp, "full", {}, resume=False)
    for i, ratio in enumerate(["0.0", "0.5"] * 2):
        run = tracking.create_run(sqlite_uri, exp, f"t{i}", {"role": "trial", "trial_id": f"t{i}",
                                                             "mlflow.parentRunId": parent})
        tracking.log_params(sqlite_uri, run, {"ood.ratio": ratio, "seed": i // 2})
        tracking.log_metrics(sqlite_uri, run, {"best_val_miou": 30.0 + i, "val_miou": 30.0 + i}, step=1)
    out = small_disk / "report"
    filler = fill(small_disk, leave=8 * 1024)   # room for the table, not for the plot
    with pytest.raises(UserError, match=f"no space left on the device of {out} while writing the report"):
        write_report(sqlite_uri, "full", out)
    left = files_under(small_disk)
    assert not any(".tmp-" in name for name in left)                      # no torn file
    assert "report/miou_vs_ood_ratio.png" not in left

    filler.unlink()
    summary = write_report(sqlite_uri, "full", out)                       # space freed: the same call completes
    assert (out / "miou_vs_ood_ratio.png").read_bytes()[:4] == b"\x89PNG"
    assert "| 0.0 | 2 | 31.00 ± 1.41 |" in (out / "report.md").read_text() and summary["trials"] == 4
