"""The package's version, for `--version`: the installed distribution's, else the checkout's pyproject.toml."""
from __future__ import annotations

import re
from pathlib import Path

DISTRIBUTION = "semiovs-orchestrator"
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:   # run from a checkout that was never installed (`python run.py`)
        return checkout_version(PYPROJECT)


def checkout_version(pyproject: Path) -> str:
    """`version = "…"` of pyproject.toml's [project] table, marked as not installed; "unknown" without one."""
    try:
        text = pyproject.read_text()
    except OSError:
        return "unknown (not installed, no pyproject.toml beside the code)"
    project = text.split("[project]", 1)[-1].split("\n[", 1)[0]
    found = re.search(r'^version\s*=\s*"([^"]+)"', project, re.MULTILINE)
    return f"{found.group(1)} (not installed: from {pyproject})" if found else "unknown"
