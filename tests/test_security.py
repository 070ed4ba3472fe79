"""Secure defaults, checked on the real thing: the servers we start listen on loopback only (read from the
socket table), Ray's token authentication is on, and the code never unpickles a cache or user file nor
runs a shell (an AST scan of every module, which a planted offence makes fail)."""
from __future__ import annotations

import ast
import ipaddress
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCANNED = [ROOT / "run.py", *sorted((ROOT / "orchestrator").rglob("*.py")), *sorted((ROOT / "trainables").rglob("*.py")),
           *sorted((ROOT / "benchmarks").rglob("*.py")), *sorted((ROOT / "tests").rglob("*.py"))]

# Calls that turn file bytes into arbitrary objects (or run code): never on a cache or user file.
UNPICKLERS = {"pickle.load", "pickle.loads", "pickle.Unpickler", "cloudpickle.load", "cloudpickle.loads",
              "dill.load", "dill.loads", "joblib.load", "pd.read_pickle", "pandas.read_pickle", "marshal.load",
              "marshal.loads", "shelve.open", "yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.full_load",
              "os.system", "os.popen"}
NEEDS_WEIGHTS_ONLY = ("torch.load", "load_checkpoint")


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_calls(source: str, filename: str = "<src>") -> list[str]:
    """Every call in `source` that unpickles, loads torch files without weights_only=True, or uses a shell."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        name, kw = _dotted(node.func), {k.arg: k.value for k in node.keywords}
        where = f"{filename}:{node.lineno} {name}"
        if name in UNPICKLERS:
            found.append(f"{where}: unpickles or runs a shell")
        if name.endswith(NEEDS_WEIGHTS_ONLY) and not _is_true(kw.get("weights_only")):
            found.append(f"{where}: without weights_only=True")
        if name in ("np.load", "numpy.load") and "allow_pickle" in kw and not (
                isinstance(kw["allow_pickle"], ast.Constant) and kw["allow_pickle"].value is False):
            found.append(f"{where}: allow_pickle")
        if "shell" in kw and not (isinstance(kw["shell"], ast.Constant) and kw["shell"].value is False):
            found.append(f"{where}: shell=")
    return found


def test_the_scanner_finds_each_kind_of_offence():
    planted = ("import torch, pickle, numpy as np, subprocess, yaml, open_clip\n"
               "torch.load(p)\ntorch.load(p, weights_only=False)\npickle.load(f)\nnp.load(p, allow_pickle=True)\n"
               "subprocess.run('ls', shell=True)\nyaml.load(t)\nopen_clip.load_checkpoint(m, p)\n"
               "torch.load(p, weights_only=True)\nnp.load(p)\nsubprocess.run(['ls'])\nyaml.safe_load(t)\n")
    assert [f.split(" ", 1)[1] for f in unsafe_calls(planted)] == [
        "torch.load: without weights_only=True", "torch.load: without weights_only=True",
        "pickle.load: unpickles or runs a shell", "np.load: allow_pickle", "subprocess.run: shell=",
        "yaml.load: unpickles or runs a shell", "open_clip.load_checkpoint: without weights_only=True"]


def test_no_module_unpickles_loads_torch_files_unsafely_or_uses_a_shell():
    assert len(SCANNED) > 50
    found = [f for path in SCANNED for f in unsafe_calls(path.read_text(), str(path.relative_to(ROOT)))]
    assert found == []


def test_nothing_turns_ray_token_authentication_off():
    for path in [*SCANNED, ROOT / "cluster.yaml", ROOT / "README.md"]:
        text = path.read_text()
        for line in text.splitlines():
            assert not ("RAY_AUTH_MODE" in line and "disabled" in line and path.name != Path(__file__).name), \
                f"{path}: {line}"


def _listening(pids: set[int], port: int | None = None) -> list[str]:
    """Local addresses of the TCP sockets in LISTEN state owned by `pids` (optionally on one port)."""
    out = []
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids and (port is None or conn.laddr.port == port):
            out.append(conn.laddr.ip)
    return out


def _is_loopback(ip: str) -> bool:
    return ipaddress.ip_address(ip.split("%")[0]).is_loopback


def test_the_ray_dashboard_listens_on_loopback_and_asks_for_the_token(ray_session):
    from ray._private.authentication.authentication_utils import is_token_auth_enabled
    from ray._private.worker import global_worker

    url = global_worker.node.address_info["webui_url"]   # started by orchestrator.runtime.init_ray
    port = int(url.rsplit(":", 1)[1])
    ray_pids = {p.pid for p in psutil.Process().children(recursive=True)}
    addresses = _listening(ray_pids, port)
    assert addresses and all(_is_loopback(ip) for ip in addresses), addresses
    assert is_token_auth_enabled()
    with pytest.raises(urllib.error.HTTPError) as refused:   # loopback only, and no token sent
        urllib.request.urlopen(f"http://127.0.0.1:{port}/api/jobs/", timeout=10)
    assert refused.value.code in (401, 403)


def test_run_py_ui_serves_mlflow_on_loopback_only(tmp_path):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "ui", "--port", str(port),
                             "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        addresses: list[str] = []
        deadline = time.time() + 180
        while not addresses and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
            tree = {proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))}
            addresses = _listening(tree, port)
        assert addresses, "the MLflow server never listened"
        assert all(_is_loopback(ip) for ip in addresses), addresses
    finally:
        os.killpg(proc.pid, signal.SIGTERM)   # the session this test started, by its id
        proc.wait(timeout=60)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
