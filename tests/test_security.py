"""Secure defaults, checked on the real thing: the servers we start listen on loopback only (read from the
socket table: every port of every process of the private Ray), Ray's token authentication is on with a token
of the run's own (not the user's ~/.ray), and the code never unpickles a cache or user file nor runs a shell
(an AST scan of every module, which a planted offence makes fail)."""
from __future__ import annotations

import ast
import contextlib
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
    for path in [*SCANNED, ROOT / "cluster.yaml", ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
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
    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)   # ::ffff:127.0.0.1, an IPv6 socket's view of 127.0.0.1
    return (mapped or address).is_loopback


def test_loopback_covers_ipv4_mapped_addresses():
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("::ffff:127.0.0.1")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("::") and not _is_loopback("192.0.2.2")


def _private_ray_processes() -> list[psutil.Process]:
    """Every process of the private Ray this test process started: the ones its node started (GCS, raylet,
    dashboard, monitors, ...), their descendants (agents, dashboard modules, workers), and this driver."""
    from ray._private.worker import global_worker

    started = [info.process.pid for infos in global_worker.node.all_processes.values() for info in infos]
    procs = {os.getpid(): psutil.Process()}
    for pid in started:
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(pid)
            for p in [root, *root.children(recursive=True)]:
                procs[p.pid] = p
    return list(procs.values())


def _listening_by_process(procs: list[psutil.Process]) -> dict[str, list[str]]:
    """'pid name' → the local addresses ('ip:port') its TCP sockets listen on."""
    out = {}
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            found = [f"{c.laddr.ip}:{c.laddr.port}" for c in p.net_connections(kind="tcp")
                     if c.status == psutil.CONN_LISTEN]
            if found:
                out[f"{p.pid} {p.name()}"] = found
    return out


def test_every_port_of_the_private_ray_listens_on_loopback(ray_session):
    """GCS, raylet and object manager, dashboard and its agents, the runtime-env agent, metrics, and the core
    workers' gRPC servers (this driver's, a task's, an actor's): none reachable from another machine."""
    from ray._private.worker import global_worker

    @ray_session.remote(num_cpus=0)
    class Probe:
        def pid(self):
            return os.getpid()

    @ray_session.remote(num_cpus=0)
    def task_pid():
        return os.getpid()

    probe = Probe.remote()
    actor_pid = ray_session.get(probe.pid.remote())
    ray_session.get(task_pid.remote())
    listening = _listening_by_process(_private_ray_processes())
    everything = [a for addresses in listening.values() for a in addresses]
    exposed = {who: [a for a in addresses if not _is_loopback(a.rsplit(":", 1)[0])]
               for who, addresses in listening.items()}
    assert {who: a for who, a in exposed.items() if a} == {}, listening
    gcs_port = ray_session.get_runtime_context().gcs_address.rsplit(":", 1)[1]
    dashboard_port = global_worker.node.address_info["webui_url"].rsplit(":", 1)[1]
    node_manager_port = str(global_worker.node.node_manager_port)
    for port in (gcs_port, dashboard_port, node_manager_port):   # the test saw the servers it is about
        assert any(a.endswith(f":{port}") for a in everything), (port, listening)
    assert any(who.startswith(f"{actor_pid} ") for who in listening), listening   # a worker's server too
    assert ray_session.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    ray_session.kill(probe)


def test_the_private_ray_keeps_its_token_in_its_own_folder_and_asks_for_it(ray_session):
    from ray._private.authentication.authentication_utils import is_token_auth_enabled
    from ray._private.worker import global_worker

    assert is_token_auth_enabled()
    token_file = Path(os.environ["RAY_AUTH_TOKEN_PATH"])   # set by orchestrator.runtime.private_token
    assert Path.home() / ".ray" not in token_file.parents and token_file.name == "auth_token"
    assert token_file.stat().st_mode & 0o777 == 0o600 and token_file.parent.stat().st_mode & 0o777 == 0o700
    url = "http://" + global_worker.node.address_info["webui_url"].removeprefix("http://") + "/api/jobs/"
    with pytest.raises(urllib.error.HTTPError) as refused:   # no token sent
        urllib.request.urlopen(url, timeout=10)
    assert refused.value.code in (401, 403)
    token = token_file.read_text().strip()
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"}),
                                timeout=30) as answer:   # this token is the one the instance asks for
        assert answer.status == 200


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
