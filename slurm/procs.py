"""Processes on this node: free ports, stopping a child, and finding every process of this job by its marker.

Ray renames its workers (`ray::IDLE`, `ray::DashboardAgent`) and puts them in their own process groups, so
neither a command line nor a process group finds all of a node's Ray processes. Their environment does: every
one inherits the marker variable the launcher gave `ray start` (slurm/plan.py MARKER).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_ports(count: int) -> list[int]:
    """`count` distinct ports that are free on every interface of this node right now."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def marked_pids(marker: str, value: str, proc_root: Path = Path("/proc")) -> list[int]:
    """PIDs of the processes whose environment holds marker=value (not this process)."""
    needle = f"{marker}={value}".encode()
    found = []
    for entry in proc_root.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:      # gone meanwhile, or not ours to read
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return sorted(found)


def stop_child(proc: subprocess.Popen | None, grace_s: float) -> None:
    """SIGTERM a child we started, SIGKILL it after grace_s; reaps it either way."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def stop_marked(marker: str, value: str, grace_s: float) -> list[int]:
    """SIGTERM every process carrying this job's marker, SIGKILL what is left after grace_s. Returns the PIDs
    that had to be killed."""
    pids = marked_pids(marker, value)
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while pids and time.monotonic() < deadline:
        time.sleep(0.2)
        pids = [p for p in pids if _alive(p)]
    left = marked_pids(marker, value)   # also what was forked meanwhile
    _signal_all(left, signal.SIGKILL)
    return left


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (a zombie holds no resources; its parent reaps it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
