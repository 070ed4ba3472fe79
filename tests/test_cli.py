"""The command line as a user meets it: help on every command, user mistakes → one line, exit 2, and the
command as installed: `semiovs`, `python -m orchestrator`, `--version`, the declared dependencies."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.cli import main

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


# ---- the installed command ----------------------------------------------------------------------------------

def test_version_from_run_py_and_python_m_orchestrator(tmp_path):
    from orchestrator.cli.version import package_version

    by_module = subprocess.run([sys.executable, "-m", "orchestrator", "--version"], cwd=ROOT, capture_output=True,
                               text=True, timeout=120)
    assert by_module.returncode == 0 and by_module.stdout.strip() == f"python -m orchestrator {package_version()}"
    out = run("--version", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == f"run.py {package_version()}"
    assert re.match(r"\d+\.\d+", package_version())


def test_the_version_without_an_installed_package_is_the_checkouts(tmp_path):
    from orchestrator.cli.version import checkout_version

    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[build-system]\nrequires = ["setuptools"]\n\n[project]\nname = "x"\nversion = "1.2.3"\n')
    assert checkout_version(pyproject) == f"1.2.3 (not installed: from {pyproject})"
    assert checkout_version(tmp_path / "missing.toml").startswith("unknown")


@pytest.mark.parametrize("args", [["--quiet", "sweep", "--space", "missing.yaml"],
                                  ["sweep", "--space", "missing.yaml", "--verbose"],
                                  ["--verbose", "sweep", "--quiet", "--space", "missing.yaml"]])
def test_quiet_and_verbose_go_before_or_after_the_command(tmp_path, args):
    out = run(*args, cwd=tmp_path)
    if "--quiet" in args and "--verbose" in args:
        assert out.returncode == 2 and out.stderr.startswith("error: --quiet and --verbose"), out.stderr
    else:
        assert out.returncode == 2 and "search space file 'missing.yaml' does not exist" in out.stderr, out.stderr


def _pyproject() -> str:
    return (ROOT / "pyproject.toml").read_text()


def test_the_installed_command_is_semiovs_and_no_top_level_run_module_is_installed():
    import importlib

    scripts = re.search(r"^\[project\.scripts\]\n((?:[^\[].*\n)+)", _pyproject(), re.MULTILINE).group(1)
    target = re.search(r'^semiovs\s*=\s*"([\w.]+):(\w+)"', scripts, re.MULTILINE)
    assert target, scripts
    assert getattr(importlib.import_module(target.group(1)), target.group(2)) is main
    assert "py-modules" not in _pyproject()   # it installed run.py as a top-level module named `run`


# import name → distribution name, where they differ
DISTRIBUTIONS = {"PIL": "pillow", "yaml": "pyyaml", "open_clip": "open_clip_torch"}


def _declared() -> set[str]:
    block = re.search(r"^dependencies = \[\n(.*?)^\]", _pyproject(), re.MULTILINE | re.DOTALL).group(1)
    names = re.findall(r'^\s*"([A-Za-z0-9_.\-]+)', block, re.MULTILINE)
    return {n.lower().replace("-", "_") for n in names}


def _imported_top_level_names() -> dict[str, str]:
    """Every top-level module name the code imports (at module level or inside functions) → a file importing it."""
    import ast

    found = {}
    for path in [ROOT / "run.py", *(ROOT / "orchestrator").rglob("*.py"), *(ROOT / "trainables").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def test_every_imported_third_party_package_is_declared():
    own = {"orchestrator", "trainables", "run"}
    third_party = {name: where for name, where in _imported_top_level_names().items()
                   if name not in sys.stdlib_module_names and name not in own}
    missing = {name: where for name, where in third_party.items()
               if DISTRIBUTIONS.get(name, name).lower().replace("-", "_") not in _declared()}
    assert {"torch", "ray", "scipy", "tqdm"} <= set(third_party)
    assert missing == {}, f"imported but not in pyproject.toml's dependencies: {missing}"
    assert re.search(r'"pytest-xdist>=3\.8"', _pyproject())   # addopts' --no-loadscope-reorder needs 3.8
