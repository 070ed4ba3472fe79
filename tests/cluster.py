"""A multi-node Ray cluster on one machine, whose worker nodes cannot see the head's local files.

The head (0 CPUs, like cluster.yaml's) is a `ray start --head --block` process. Each worker node is a
`ray start --address … --block` process in its own mount namespace (`unshare -m`), with a tmpfs over the
head's Ray temp folder (where `ray job submit` unpacks the job's working directory, and so where a
sweep's default `.semiovs` lands) and over the project's `.semiovs`: as on a second machine, only the
`shared` folder is common to all nodes, standing in for NFS/EFS. Each worker node carries a custom
resource named after it, so a test can tell the nodes apart. Every process is started here and stopped
here by its PID; everything binds to loopback.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")
# `ray start` clusters use token authentication, which the CLI clients must be told about.
CLUSTER_ENV = {"RAY_AUTH_MODE": "token"}
# The head's GCS checks each node every second instead of every 3 s (5 failed checks mark a node dead, as
# by default): a killed node is noticed in ~5 s instead of ~15 s, which the node-loss tests wait out.
HEAD_ENV = {"RAY_health_check_period_ms": "1000"}
# Ray swaps the literal 127.0.0.1 for the machine's outward address; other loopback addresses it keeps. So
# each node gets its own loopback address (as separate machines have their own), and all the cluster's
# traffic stays on loopback. Each cluster has its own /24 of loopback addresses (see make_cluster).


def loopback_subnet() -> str:
    """`127.0.<k>.`: a range of its own for each pytest-xdist worker (gw0 → k = 10, …), so that clusters
    started by tests running at the same time never share an address; `127.0.0.` outside xdist."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return f"127.0.{10 + int(worker[2:])}." if worker.startswith("gw") and worker[2:].isdigit() else "127.0.0."


def unshare_available() -> str | None:
    """None when a worker node can be started here as add_worker starts it (a tmpfs mounted inside its own
    mount namespace), else the reason it cannot."""
    missing = [tool for tool in ("unshare", "mount") if not shutil.which(tool)]
    if missing:
        return (f"{' and '.join(missing)} not installed (Debian: apt-get install util-linux mount; "
                f".ci/run does so as root)")
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return (f"unshare -m is not permitted here ({probe.stderr.strip() or probe.returncode}); "
                f"it needs root with CAP_SYS_ADMIN")
    with tempfile.TemporaryDirectory(prefix="rcprobe", dir="/tmp") as folder:   # private: gone with the probe
        probe = subprocess.run(["unshare", "-m", "--propagation", "private", "mount", "-t", "tmpfs", "tmpfs", folder],
                               capture_output=True, text=True)
    if probe.returncode != 0:
        return (f"mount -t tmpfs inside `unshare -m` is not permitted here "
                f"({probe.stderr.strip() or probe.returncode}); it needs root with CAP_SYS_ADMIN")
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Dashboard:
    """The head's HTTP API (the one behind `ray job status` and `ray list`), called from the test process:
    each `ray` CLI call costs ~2 CPU-seconds, which polling every second takes from the tests' 2 cores."""

    def __init__(self, url: str):
        self.url = url

    def _get(self, path: str, **params) -> dict:
        # `ray start` clusters here use token authentication; the token is where Ray's own clients look.
        token = os.environ.get("RAY_AUTH_TOKEN") or Path(
            os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").read_text().strip()
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        request = urllib.request.Request(self.url + path + query, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def job_status(self, job_id: str) -> str:
        """PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
        return self._get(f"/api/jobs/{job_id}")["status"]

    def job_logs(self, job_id: str) -> str:
        return self._get(f"/api/jobs/{job_id}/logs")["logs"]

    def alive(self, kind: str) -> list[dict]:
        """The alive `nodes` or `actors`, with details, as `ray list <kind> --detail` shows them; none while
        the dashboard is not up yet."""
        try:
            reply = self._get(f"/api/v0/{kind}", detail="true", limit=1000, filter_keys="state",
                              filter_predicates="=", filter_values="ALIVE")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return []
        return reply["data"]["result"]["result"]


class NodeExited(RuntimeError):
    """A node's `ray start` process ended while the cluster waited for something."""


@dataclass
class Node:
    name: str
    proc: subprocess.Popen
    log: Path
    ip: str
    resource: str = ""   # the custom resource a worker node carries

    def raylet_pid(self) -> int | None:
        """The node's raylet (a child of `ray start --block`, inside the namespace's shell for workers)."""
        out = subprocess.run(["ps", "-eo", "pid,ppid,comm"], capture_output=True, text=True).stdout
        children: dict[int, list[tuple[int, str]]] = {}
        for line in out.splitlines()[1:]:
            pid, ppid, comm = line.split(None, 2)
            children.setdefault(int(ppid), []).append((int(pid), comm.strip()))
        todo = [self.proc.pid]
        while todo:
            pid = todo.pop()
            for child, comm in children.get(pid, []):
                if comm == "raylet":
                    return child
                todo.append(child)
        return None


@dataclass
class LocalCluster:
    root: Path                       # short path: Ray's socket paths must stay under 108 characters
    project: Path                    # the folder jobs are submitted from (its .semiovs is hidden on workers)
    subnet: str = "127.0.0."         # node addresses: the head is <subnet>2, worker nodes <subnet>3, …
    port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    nodes: dict[str, Node] = field(default_factory=dict)
    killed: list[Node] = field(default_factory=list)   # nodes whose raylet a test killed (stopped at the end)

    @property
    def head_ip(self) -> str:
        return f"{self.subnet}2"

    @property
    def address(self) -> str:
        return f"{self.head_ip}:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def shared(self) -> Path:
        return self.root / "shared"

    def start_head(self) -> None:
        self.shared.mkdir(parents=True, exist_ok=True)
        (self.project / ".semiovs").mkdir(parents=True, exist_ok=True)
        self._start("head", self.head_ip, [
            RAY, "start", "--head", "--block", "--num-cpus=0", f"--node-ip-address={self.head_ip}",
            f"--port={self.port}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}", f"--temp-dir={self.root / 'h'}", *own_agent_ports(),
            "--disable-usage-stats"], extra_env=HEAD_ENV)
        self.wait_until(lambda: len(self.alive()) >= 1, "the head node")

    def add_worker(self, name: str, cpus: int = 1, resource: str | None = None) -> Node:
        """A worker node with the custom resource `resource` (default: its name)."""
        hidden = [self.root / "h", self.project / ".semiovs"]
        mounts = " && ".join(f"mount -t tmpfs tmpfs {p}" for p in hidden)
        node_ip = f"{self.subnet}{2 + len(self.nodes) + len(self.killed)}"   # each node its own loopback address
        start = [RAY, "start", "--block", f"--address={self.address}", f"--num-cpus={cpus}",
                 f"--node-ip-address={node_ip}", f"--temp-dir={self.root / name}",
                 f"--resources={json.dumps({resource or name: 1})}", *own_agent_ports(), "--disable-usage-stats"]
        shell = f"{mounts} && exec {' '.join(_quote(a) for a in start)}"
        for attempt in range(3):
            node = self._start(name, node_ip, ["unshare", "-m", "--propagation", "private", "sh", "-c", shell])
            node.resource = resource or name
            try:
                self.wait_until(lambda: any(n["node_ip"] == node_ip for n in self.alive()), f"node {name} to join")
                return node
            except NodeExited:
                # `ray start` gives its raylet a fixed 30 s to register with the GCS; on 2 busy cores that
                # can pass ("timed out during startup"). A real cluster's node would be started again too.
                if attempt == 2 or "timed out during startup" not in node.log.read_text():
                    raise
                self.nodes.pop(name)
                _stop_groups([node.proc])
        raise AssertionError("unreachable")

    def _start(self, name: str, ip: str, cmd: list[str], extra_env: dict[str, str] | None = None) -> Node:
        log = self.root / f"{name}.log"
        env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **CLUSTER_ENV, **(extra_env or {})}
        proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)   # its own process group: stopped as one
        self.nodes[name] = Node(name, proc, log, ip)
        return self.nodes[name]

    @property
    def api(self) -> Dashboard:
        return Dashboard(self.dashboard)

    def alive(self) -> list[dict]:
        """The cluster's alive nodes."""
        return self.api.alive("nodes")

    def wait_until(self, ready, what: str, timeout_s: float = 90.0) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            dead = [n for n in self.nodes.values() if n.proc.poll() is not None]
            if dead:
                raise NodeExited(f"ray node {dead[0].name} exited: {dead[0].log.read_text()[-2000:]}")
            if ready():
                return
            time.sleep(1.0)
        raise TimeoutError(f"waited {timeout_s:.0f} s for {what}; logs in {self.root}")

    def submit(self, *run_args: str, wait: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        """`ray job submit --working-dir <project> -- python run.py …`, as a cluster user does (blocking unless
        wait=False). A head that has just started may have no job agent yet: then it retries, as Ray advises."""
        cmd = [RAY, "job", "submit", *([] if wait else ["--no-wait"]), f"--address={self.dashboard}",
               "--working-dir", str(self.project), "--", "python", "run.py", *run_args]
        for _ in range(30):
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=self.env(), cwd=self.project)
            if "No available agent to submit job" not in out.stdout + out.stderr:
                break
            time.sleep(2)
        return out

    def env(self) -> dict[str, str]:
        """The environment of a client of this cluster (CLI, job submission)."""
        return {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **CLUSTER_ENV,
                "RAY_ADDRESS": self.address}

    def node_named_by(self, node_id: str) -> str:
        """Our name of the alive node with this Ray node id (each node has its own loopback address)."""
        ip = next(n["node_ip"] for n in self.alive() if n["node_id"] == node_id)
        return next(node.name for node in self.nodes.values() if node.ip == ip)

    def kill_raylet(self, name: str) -> None:
        """A node dies as a machine does: its raylet gets SIGKILL."""
        node = self.nodes.pop(name)
        self.killed.append(node)
        pid = node.raylet_pid()
        if pid is None:
            raise RuntimeError(f"no raylet found under node {name}")
        os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        _stop_groups([node.proc for node in self.killed], grace_s=0)      # dead machines: nothing to wait for
        workers = [node for node in self.nodes.values() if node.name != "head"]
        _stop_groups([node.proc for node in workers])                     # together: each may take seconds
        _stop_groups([node.proc for node in self.nodes.values() if node.name == "head"])   # the head last
        self.nodes.clear()
        self.killed.clear()


def own_agent_ports() -> list[str]:
    """Ports of a node's agents that default to fixed numbers: another Ray on the machine (the test session's)
    holds those, and a head without its dashboard agent accepts no job ("No available agent")."""
    return [f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}"]


def _stop_groups(procs: list[subprocess.Popen], grace_s: float = 5.0) -> None:
    """SIGTERM each node's process group (ray start --block stops its node's processes), then SIGKILL those
    still there after the grace period."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        for proc in procs:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        procs = [proc for proc in procs if proc.poll() is None]
        if not procs:
            return


def _quote(arg: str) -> str:
    return "'" + arg.replace("'", "'\\''") + "'"


def make_cluster(project: Path) -> LocalCluster:
    return LocalCluster(root=Path(tempfile.mkdtemp(prefix="rc", dir="/tmp")), project=project,
                        subnet=loopback_subnet())
