"""The console a person reads: what a command prints, on the real thing.

Quick: how lines are shaped (the time in front when stdout is not a terminal, no line over WIDTH), library warnings
as `warning:` lines, a lock held by another process named while we wait, stderr passed through live, a worker
SIGTERMed inside a garbage-collection callback exiting without a traceback.
End to end (e2e): the smoke sweep's whole console as a log file sees it (stdout and stderr, not a terminal), and
`--verbose` bringing Ray's own output back.
"""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from orchestrator.core import console
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parent.parent
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")


def test_a_log_line_has_the_time_in_front_and_no_line_is_longer_than_the_width():
    long = "labeled OOD pseudo-labels: " + " ".join(f"word{i}" for i in range(80))
    lines = console.lines_of(f"short\n\n{long}", stamp=True)
    assert all(STAMP.match(line) for line in lines), lines          # every line, continuations too
    assert max(map(len, lines)) <= console.WIDTH and len(lines) > 2
    assert lines[0].endswith(" short") and lines[1][20:].startswith("labeled")   # the blank line: not in a log
    assert all(line[20:].startswith(console.CONTINUATION + "word") for line in lines[2:])
    assert " ".join(line.split(" ", 2)[2].strip() for line in lines[1:]) == long   # folded at spaces, nothing lost
    assert console.lines_of("short\n\nend", stamp=False) == ["short", "", "end"]   # a terminal: as written


def test_a_library_warning_prints_as_a_warning_line_and_its_info_not_at_all(capsys):
    logger = logging.getLogger("semiovs-test-library")
    handler = logging.StreamHandler(sys.stderr)   # what Ray's and Ray Data's console handlers are
    logger.addHandler(handler)
    logger.propagate = False
    try:
        console.restyle_logger("semiovs-test-library", verbose=False)
        logger.warning("Cluster resources are not enough to run any task from ActorPoolMapOperator[Teacher].")
        logger.info("Starting execution of Dataset dataset_1.")
        logger.error("it failed")
    finally:
        logger.removeHandler(handler)
    assert [_unstamped(line) for line in capsys.readouterr().err.splitlines()] == [
        "warning: Cluster resources are not enough to run any task from ActorPoolMapOperator[Teacher].",
        "error: it failed"]


def _unstamped(line: str) -> str:
    return re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", "", line)


def test_a_python_warning_is_a_warning_line(capsys, monkeypatch):
    import warnings

    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)   # restored after the test
    console.configure(verbose=False, env={})
    warnings.warn("this option is deprecated", FutureWarning, stacklevel=1)
    err = capsys.readouterr().err
    assert re.search(r"warning: this option is deprecated \(FutureWarning, test_console\.py:\d+\)", err), err


def test_a_lock_held_by_another_process_is_named_while_we_wait(tmp_path):
    lock = tmp_path / "textseg-1d14.lock"
    said, waited = [], threading.Event()
    with console.exclusive_lock(lock, "the OOD labels textseg-1d14", say=said.append):
        def second():
            with console.exclusive_lock(lock, "the OOD labels textseg-1d14", say=said.append):
                waited.set()
        other = threading.Thread(target=second)   # another open file: flock treats it as another process
        other.start()
        deadline = time.monotonic() + 10
        while not said and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not waited.is_set()
    other.join(10)
    assert waited.is_set()
    assert said[0].startswith(f"waiting for the OOD labels textseg-1d14: another process") and str(lock) in said[0]
    assert said[1].startswith("got the lock on the OOD labels textseg-1d14 after ")


def test_stderr_passes_through_at_once_except_the_harmless_line(capfd):
    with console.stderr_without(console.HARMLESS_RAY_LINES):
        os.write(2, b"[E core_worker.cc] Actor 'MapWorker' has constructor arguments in the object store and "
                    b"max_restarts > 0. If ...\n")
        os.write(2, b"warning: Cluster resources are not enough to run any task\n")
        deadline = time.monotonic() + 10
        seen = ""
        while "Cluster resources" not in seen and time.monotonic() < deadline:
            time.sleep(0.05)
            seen += capfd.readouterr().err
        assert seen == "warning: Cluster resources are not enough to run any task\n"   # during the block
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"


SIGTERM_IN_A_GC_CALLBACK = textwrap.dedent("""
    import os, signal, sys, time, weakref
    from orchestrator.core import console
    if sys.argv[1] == "hook":
        console.worker_setup()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))   # as a Ray worker's handler: SystemExit(1)
    class Thing: pass
    def collected(ref):   # runs inside garbage collection, where the signal lands
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
    thing = Thing()
    keep = weakref.ref(thing, collected)
    del thing
    print("lingered", flush=True)
""")


@pytest.mark.parametrize("hook", ["hook", "none"])
def test_a_worker_told_to_exit_inside_a_gc_callback_exits_without_a_traceback(hook):
    out = subprocess.run([sys.executable, "-c", SIGTERM_IN_A_GC_CALLBACK, hook], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    if hook == "none":   # what Python does on its own: the exit is swallowed, a traceback printed
        assert "Exception ignored" in out.stderr and "SystemExit: 1" in out.stderr and "lingered" in out.stdout
    else:
        assert (out.returncode, out.stdout, out.stderr) == (1, "", "")


# ---- end to end ---------------------------------------------------------------------------------------------

TUNE_AND_TRAIN_DUMPS = ["Trial status", "Configuration for experiment", "View detailed results", "╭", "│",
                        "Reporting training result", "TrainingReport(", "Reported metrics", "Started a local Ray",
                        "Exception ignored", "Traceback", "INFO", "(raylet)"]


def _run(args: list[str], cwd: Path, timeout: float = 1200) -> subprocess.CompletedProcess:
    """A command as a log file sees it: stdout and stderr into one pipe, not a terminal."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "SEMIOVS_VERBOSE")}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout, env=env)


def _tiny_sets() -> list[str]:
    return [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]


@pytest.mark.e2e
def test_the_smoke_sweep_console_is_short_stamped_and_free_of_ray_dumps(shared_cache, tmp_path):
    out = _run(["sweep", "--space", str(ROOT / "search_spaces" / "smoke.yaml"), *_tiny_sets(),
                "--cache", str(shared_cache), "--storage", str(tmp_path / "runs"),
                "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"], tmp_path)
    lines = out.stdout.splitlines()
    assert out.returncode == 0, out.stdout[-4000:]
    assert len(lines) <= 60, out.stdout
    assert max(map(len, lines)) <= console.WIDTH, max(lines, key=len)
    assert [line for line in lines if not STAMP.match(line)] == [], out.stdout
    assert [line for line in lines if any(dump in line for dump in TUNE_AND_TRAIN_DUMPS)] == [], out.stdout
    text = "\n".join(line[20:] for line in lines)
    for expected in ("Ray: started a private local instance, GCS 127.0.0.1:", "stage 5/5 trials",
                     "epoch 2: val_miou", "trial ", "open it: python run.py ui", "best model: models:/"):
        assert expected in text, (expected, out.stdout)


@pytest.mark.e2e
def test_verbose_brings_rays_own_output_back(shared_cache, tmp_path):
    """`label` is the cheapest command that starts Ray (its labels are cached by the sweep above, or made once);
    --verbose after the command here, --quiet and --verbose are accepted on either side."""
    out = _run(["label", *_tiny_sets(), "--cache", str(shared_cache), "--verbose"], tmp_path)
    assert out.returncode == 0, out.stdout[-4000:]
    assert "INFO worker.py" in out.stdout and "Started a local Ray instance" in out.stdout, out.stdout


def test_rays_harmless_lines_are_skipped_unless_verbose():
    """Ray's own skip setting drops the lines that are no news (here: Train's local-mode note, once per trial) from
    the console; --verbose keeps them."""
    import re

    from orchestrator.core.console import quiet_harmless_ray_lines

    line = ("Running in local mode. The training function will run in the same process. If you are using it and "
            "running into issues please file a report at https://github.com/ray-project/ray/issues.")
    quiet = {"SEMIOVS_VERBOSE": "0"}
    quiet_harmless_ray_lines(quiet)
    assert re.search(quiet["RAY_DEDUP_LOGS_SKIP_REGEX"], line)
    verbose = {"SEMIOVS_VERBOSE": "1"}
    quiet_harmless_ray_lines(verbose)
    assert not re.search(verbose["RAY_DEDUP_LOGS_SKIP_REGEX"], line)
