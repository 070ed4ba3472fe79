"""Headless Chromium (Debian's `chromium`) for tests that look at the MLflow UI as a user would."""
from __future__ import annotations

import html
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.conftest import require

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,1000", "--virtual-time-budget=20000"]  # let the single-page app fetch its data


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    require(path, "Chromium is not installed (.ci/run installs Debian's `chromium` as root)")
    return path


def _run(*args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              timeout=120, check=True)


def page_text(url: str) -> str:
    """The page's visible text after its scripts ran."""
    dom = _run("--dump-dom", url).stdout.decode("utf-8", "replace")
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", dom, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)))


def screenshot(url: str, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    _run(f"--screenshot={out}", url)
    return out
