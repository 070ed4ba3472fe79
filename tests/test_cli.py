"""The command line as a user meets it: help on every command, and user mistakes → one line, exit 2."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def run(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("command", [["sweep"], ["train"], ["label"], ["data", "synth"], ["data", "check"],
                                     ["teacher", "fit"], ["teacher", "eval"], ["ui"]])
def test_every_command_has_help(tmp_path, command):
    out = run(*command, "--help", cwd=tmp_path)
    assert out.returncode == 0 and "usage: run.py" in out.stdout


@pytest.mark.parametrize("args, message", [
    (["sweep", "--space", "missing.yaml"], "search space file 'missing.yaml' does not exist"),
    (["sweep", "--space", "{bad}", "--set", "train.epochs=2"], "not valid YAML at line"),
    (["sweep", "--space", "{space}", "--set", "train.epoch=2"], "unknown config key 'train.epoch'"),
    (["sweep", "--space", "{space}", "--set", "ood.ratio=0.3"], "'ood.ratio' is swept by"),
    (["sweep", "--space", "{space}", "--set", "train.lr=-1"], "'train.lr': must be > 0"),
    (["sweep", "--space", "{space}", "--set", "train.lr"], "expected key=value"),
    (["sweep", "--space", "{space}", "--resume", "--storage", "{tmp}"], "nothing to resume"),
    (["train", "--set", "data.dataset=pascal", "--set", "data.root=/nonexistent"], "does not exist"),
    (["train", "--tracking-uri", "./mlruns"], "file store, which MLflow 3 refuses"),
    (["data", "check", "/nonexistent/root"], "/nonexistent/root"),
    (["report", "--experiment", "x", "--score", "worst"], "--score worst: unknown score. Fix: use one of best"),
])
def test_user_errors_print_one_line_and_exit_2(tmp_path, args, message):
    space = tmp_path / "space.yaml"
    space.write_text("parameters: {ood.ratio: {grid: [0, 0.5]}}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("parameters: {ood.ratio: [0\n")
    args = [a.format(space=space, bad=bad, tmp=tmp_path / "runs") for a in args]
    out = run(*args, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert message in out.stderr
    assert out.stderr.strip().startswith("error:") or "problem" in out.stderr
    assert not (tmp_path / ".semiovs" / "ray_results" / "space").exists()   # nothing half-started
