"""How busy the cores were during the trial phase: `cost.core_utilization` on the sweep's parent run.

busy core-seconds ÷ (cores × wall seconds). The busy core-seconds are the CPU time (user + system, from
/proc/<pid>/stat) of this process and every process under it: a private local Ray's GCS, raylet, dashboard
and the worker processes the raylet forks (trial functions, Train workers). A process that exits during the
phase is counted through its parent's reaped-children time (cutime + cstime), so summing
utime + stime + cutime + cstime over the tree at the end and subtracting the same sum at the start counts each
core-second once. The machine-wide figure from /proc/stat (every process, other users' too) is logged beside
it: on a shared machine it tells a packing problem (ours low, machine low) from contention (ours low,
machine high).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def core_utilization(busy_core_seconds: float, cores: float, wall_seconds: float) -> float:
    """busy ÷ (cores × wall), 0 when there is no time or no core to speak of."""
    if cores <= 0 or wall_seconds <= 0:
        return 0.0
    return busy_core_seconds / (cores * wall_seconds)


def parse_stat(text: str) -> tuple[int, float]:
    """(parent pid, utime + stime + cutime + cstime in seconds) from a /proc/<pid>/stat line. The command
    name (field 2) may hold spaces and parentheses, so fields are counted after its last ')'."""
    fields = text.rsplit(")", 1)[1].split()
    ppid = int(fields[1])
    ticks = sum(int(f) for f in fields[11:15])   # utime stime cutime cstime (fields 14-17 of stat)
    return ppid, ticks / _TICKS


def tree_cpu_seconds(root: int, proc: str = "/proc") -> float:
    """CPU seconds of `root` and all its descendants (their own and their reaped children's)."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir(proc):
        if entry.isdigit():
            try:
                with open(f"{proc}/{entry}/stat") as f:
                    stats[int(entry)] = parse_stat(f.read())
            except (OSError, IndexError, ValueError):   # the process ended while we listed
                pass
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += stats.get(pid, (0, 0.0))[1]
        todo += children.get(pid, [])
    return total


def machine_busy_seconds(proc: str = "/proc") -> float:
    """Non-idle CPU seconds of the whole machine since boot (all cores, all users), from /proc/stat."""
    with open(f"{proc}/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)   # idle + iowait
    busy = sum(values[:8]) - idle                               # guest time is already inside user
    return busy / _TICKS


@dataclass
class UsageWindow:
    """Start it when the phase begins; `finish` returns the figures to log."""
    cores: float
    started: float = 0.0
    ours: float = 0.0
    machine: float = 0.0

    def start(self) -> "UsageWindow":
        self.started, self.ours, self.machine = time.time(), tree_cpu_seconds(os.getpid()), machine_busy_seconds()
        return self

    def finish(self) -> dict[str, float]:
        wall = time.time() - self.started
        ours = tree_cpu_seconds(os.getpid()) - self.ours
        machine = machine_busy_seconds() - self.machine
        return {"cost.core_utilization": round(core_utilization(ours, self.cores, wall), 4),
                "cost.busy_core_seconds": round(ours, 1), "cost.trial_phase_seconds": round(wall, 1),
                "cost.cores": self.cores,
                "cost.machine_core_utilization": round(core_utilization(machine, os.cpu_count() or 1, wall), 4)}
