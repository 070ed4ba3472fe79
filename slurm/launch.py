"""Ray on a Slurm allocation, then the sweep: `python -m slurm.launch head <run.py sweep flags>` (slurm/sweep.sbatch
calls it on the allocation's first node) and `python -m slurm.launch worker --address …` (one srun task on each
other node).

The head starts `ray start --head --block` here, the workers with one srun step, waits until every node has
joined, runs `python run.py sweep … --ray-address <head>`, and stops Ray on every node when the sweep ends,
fails, or the job is cancelled (scancel and the time limit send SIGTERM, then SIGKILL after KillWait). A node's
clean-up stops `ray start` (which takes its node's Ray down) and then every process carrying this job's marker,
by PID; it never runs `ray stop`, which would stop every Ray on the node, other jobs' included.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from slurm import plan, procs

RAY = str(Path(sys.executable).parent / "ray")


def say(message: str) -> None:
    print(f"[slurm-launch {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Cancelled(Exception):
    """SIGTERM / SIGINT / SIGHUP arrived: the job was cancelled or reached its time limit."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StartError(Exception):
    """Ray did not come up on every node."""


def _raise_cancelled(signum, frame):
    raise Cancelled(signum)


@contextmanager
def cancellable():
    """Turns the stop signals into Cancelled while the job runs; the clean-up after it is not interrupted."""
    stops = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    for sig in stops:
        signal.signal(sig, _raise_cancelled)
    try:
        yield
    finally:
        for sig in stops:
            signal.signal(sig, signal.SIG_IGN)


class NodeSession:
    """What the launcher started on this node, so that it can stop exactly that."""

    def __init__(self, temp_dir: Path, env: dict[str, str]):
        self.temp_dir, self.env = temp_dir, env
        self.children: dict[str, subprocess.Popen] = {}

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None, log: bool = True):
        out = (self.temp_dir / f"{name}.log").open("w") if log else None
        self.children[name] = subprocess.Popen(cmd, env=env or self.env, stdout=out,
                                               stderr=subprocess.STDOUT if out else None)
        return self.children[name]

    def log_tail(self, name: str) -> str:
        log = self.temp_dir / f"{name}.log"
        return log.read_text(errors="replace")[-3000:] if log.exists() else ""

    def check_alive(self, names: list[str]) -> None:
        for name in names:
            proc = self.children.get(name)
            if proc is not None and proc.poll() is not None:
                raise StartError(f"{name} exited with code {proc.returncode} while Ray was starting:\n"
                                 f"{self.log_tail(name)}")

    def wait_started(self, timeout_s: float) -> None:
        """Until this node's `ray start` says the node is up (reading its log costs nothing; asking Ray would
        start a Python client every time)."""
        deadline = time.monotonic() + timeout_s
        while "Ray runtime started." not in self.log_tail("ray"):
            self.check_alive(["ray"])
            if time.monotonic() > deadline:
                raise StartError(f"`ray start` did not come up within {timeout_s:.0f} s:\n{self.log_tail('ray')}")
            time.sleep(0.5)

    def stop(self, grace_s: float = 15.0) -> None:
        """The driver first, then the worker nodes' step, then this node's `ray start`, then whatever still
        carries the marker (a worker that outlived its raylet, a process forked meanwhile)."""
        for name in ("driver", "workers", "ray"):
            procs.stop_child(self.children.pop(name, None), grace_s)
        killed = procs.stop_marked(plan.MARKER, str(self.temp_dir), grace_s=5.0)
        if killed:
            say(f"killed {len(killed)} process(es) of this job that outlived `ray start`: {killed}")


def start_ray(session: NodeSession, env: dict[str, str], command, tries: int = 2) -> None:
    """`ray start` on this node; once more with new ports if it fails to come up (on an overloaded node the
    raylet can miss Ray's fixed 30-s registration window). `command()` chooses the ports and builds the
    command."""
    timeout = float(env.get("SEMIOVS_RAY_START_TIMEOUT", "180"))
    for attempt in range(1, tries + 1):
        cmd = command()
        session.start("ray", cmd, env={**session.env, "PYTHONUNBUFFERED": "1"})
        try:
            session.wait_started(timeout)
            return
        except StartError as err:
            if attempt == tries:
                raise
            say(f"Ray did not start on this node, trying again: {str(err).splitlines()[0]}")
            session.stop()


def alive_nodes(address: str, env: dict[str, str]) -> int:
    out = subprocess.run([RAY, "list", "nodes", f"--address={address}", "--format=json", "--filter",
                          "state=ALIVE"], capture_output=True, text=True, env=env)
    try:
        return len(json.loads(out.stdout))
    except json.JSONDecodeError:
        return 0


def wait_joined(session: NodeSession, address: str, count: int, timeout_s: float) -> None:
    """Until `count` nodes are alive in the cluster (only asked when there are worker nodes)."""
    deadline = time.monotonic() + timeout_s
    while count > 1 and alive_nodes(address, session.env) < count:
        session.check_alive(["ray", "workers"])
        if time.monotonic() > deadline:
            raise StartError(f"fewer than {count} Ray node(s) joined {address} within {timeout_s:.0f} s; "
                             f"each node's `ray start` log is in {session.temp_dir}/ray.log there")
        time.sleep(5.0)


def node_ip(env: dict[str, str]) -> str:
    """SEMIOVS_RAY_NODE_IP, else the address Ray itself would pick (the one that routes off the node)."""
    if env.get("SEMIOVS_RAY_NODE_IP"):
        return env["SEMIOVS_RAY_NODE_IP"]
    import ray.util

    return ray.util.get_node_ip_address()


def job_nodes(env: dict[str, str]) -> list[str]:
    out = subprocess.run(["scontrol", "show", "hostnames", env["SLURM_JOB_NODELIST"]],
                         capture_output=True, text=True, check=True)
    return out.stdout.split()


class Head:
    """The head's addresses, new for each start attempt (ports are chosen free when Ray starts)."""

    def __init__(self, session: NodeSession, env: dict[str, str], ip: str, res: plan.NodeResources):
        self.session, self.env, self.ip, self.res = session, env, ip, res
        self.address = self.dashboard = ""

    def command(self) -> list[str]:
        gcs, dash, client, agent, metrics = procs.free_ports(5)
        self.address, self.dashboard = f"{self.ip}:{gcs}", f"http://{self.ip}:{dash}"
        self.session.env = plan.ray_env(self.env, self.session.temp_dir, self.dashboard)
        say(f"Ray head at {self.address} (dashboard {self.dashboard}), {self.res.cpus} CPU(s), "
            f"{self.res.gpus} GPU(s); Ray temp folder {self.session.temp_dir}")
        return plan.head_command(RAY, self.session.temp_dir, self.ip, [gcs, dash, client, agent, metrics], self.res)


def run_head(user_args: list[str], env: dict[str, str]) -> int:
    temp_dir = plan.job_temp_dir(env)
    plan.check_sweep_args(user_args)   # a bad call is refused before anything starts
    nodes, head_node = job_nodes(env), env.get("SLURMD_NODENAME") or os.uname().nodename
    say(f"job {env['SLURM_JOB_ID']}: {len(nodes)} node(s), the head on {head_node}")
    temp_dir.mkdir(parents=True, exist_ok=True)
    session = NodeSession(temp_dir, {})
    head = Head(session, env, node_ip(env), plan.node_resources(env))
    try:
        with cancellable():
            start_ray(session, env, head.command)
            step = plan.worker_step(sys.executable, head_node, len(nodes), env, head.address, head.dashboard)
            if step:   # srun hands the token to the workers; each worker sets its own marker
                session.start("workers", step, env={k: v for k, v in session.env.items() if k != plan.MARKER},
                              log=False)
            wait_joined(session, head.address, len(nodes), float(env.get("SEMIOVS_RAY_JOIN_TIMEOUT", "300")))
            say(f"all {len(nodes)} node(s) joined; running the sweep")
            driver = session.start("driver", plan.sweep_command(sys.executable, user_args, head.address), log=False)
            code = driver.wait()
            say(f"the sweep exited with code {code}")
            return code if code >= 0 else 128 - code
    except Cancelled as stop:
        say(f"{stop} received (scancel or the time limit): stopping the sweep and Ray on every node")
        return 128 + stop.signum
    except StartError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 1
    finally:
        session.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)
        say("Ray stopped on this node")


def run_worker(address: str, dashboard: str, env: dict[str, str]) -> int:
    temp_dir = plan.job_temp_dir(env)
    temp_dir.mkdir(parents=True, exist_ok=True)
    session = NodeSession(temp_dir, plan.ray_env(env, temp_dir, dashboard))

    def command() -> list[str]:
        return plan.worker_command(RAY, temp_dir, address, procs.free_ports(2), plan.node_resources(env))

    try:
        with cancellable():
            start_ray(session, env, command)
            code = session.children["ray"].wait()   # returns only if Ray fails here: the head ends the step
            print(f"error: `ray start` on {os.uname().nodename} exited with code {code}:\n"
                  f"{session.log_tail('ray')}", file=sys.stderr, flush=True)
            return code or 1
    except Cancelled:
        return 0
    except StartError as err:
        print(f"error: {os.uname().nodename}: {err}", file=sys.stderr, flush=True)
        return 1
    finally:
        session.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    env = dict(os.environ)
    try:
        if argv[:1] == ["head"]:   # everything after `head` is the user's, for `run.py sweep`
            return run_head(argv[2:] if argv[1:2] == ["--"] else argv[1:], env)
        parser = argparse.ArgumentParser(prog="python -m slurm.launch", description=__doc__.split("\n\n")[0])
        parser.add_argument("role", choices=["head", "worker"],
                            help="head RUN.PY-SWEEP-FLAGS… on the first node; worker (started by the head via srun)")
        parser.add_argument("--address", required=True, help="the head's GCS address")
        parser.add_argument("--dashboard", required=True, help="the head's dashboard URL")
        args = parser.parse_args(argv)
        return run_worker(args.address, args.dashboard, env)
    except plan.LaunchError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
