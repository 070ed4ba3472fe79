"""How busy the cores were during the trial phase: `cost.core_utilization` on the sweep's parent run.

busy core-seconds ÷ (cores × wall seconds). The busy core-seconds are the CPU time (user + system, from
/proc/<pid>/stat) of this process and every process under it: a private local Ray's GCS, raylet, dashboard
and the worker processes the raylet forks (trial functions, Train workers), sampled every 2 s: a worker that
exits is not reliably added to its parent's reaped-children time (a first version that relied on it reported
10% for a trial phase in which two Train workers were busy), so each process counts up to its last sample. The machine-wide figure from /proc/stat (every process, other users' too) is logged beside
it: on a shared machine it tells a packing problem (ours low, machine low) from contention (ours low,
machine high).
"""
from __future__ import annotations

import os
import threading
import time

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def core_utilization(busy_core_seconds: float, cores: float, wall_seconds: float) -> float:
    """busy ÷ (cores × wall), 0 when there is no time or no core to speak of."""
    if cores <= 0 or wall_seconds <= 0:
        return 0.0
    return busy_core_seconds / (cores * wall_seconds)


def parse_stat(text: str) -> tuple[int, int, float]:
    """(parent pid, start time in ticks, utime + stime in seconds) from a /proc/<pid>/stat line. The command
    name (field 2) may hold spaces and parentheses, so fields are counted after its last ')'."""
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[19]), (int(fields[11]) + int(fields[12])) / _TICKS


def tree_cpu_times(root: int, proc: str = "/proc") -> dict[tuple[int, int], float]:
    """CPU seconds so far of `root` and each of its descendants, keyed by (pid, start time)."""
    stats: dict[int, tuple[int, int, float]] = {}
    for entry in os.listdir(proc):
        if entry.isdigit():
            try:
                with open(f"{proc}/{entry}/stat") as f:
                    stats[int(entry)] = parse_stat(f.read())
            except (OSError, IndexError, ValueError):   # the process ended while we listed
                pass
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            out[(pid, stats[pid][1])] = stats[pid][2]
        todo += children.get(pid, [])
    return out


def machine_busy_seconds(proc: str = "/proc") -> float:
    """Non-idle CPU seconds of the whole machine since boot (all cores, all users), from /proc/stat."""
    with open(f"{proc}/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)   # idle + iowait
    busy = sum(values[:8]) - idle                               # guest time is already inside user
    return busy / _TICKS


class UsageWindow:
    """Samples the process tree every `every` seconds from `start` to `finish`. Ray's raylet does not collect
    its exited workers' times (cutime stays 0), so a Train worker that ends with its trial is counted from
    its last sample: each process adds its last-seen CPU time minus what it had at the start."""

    def __init__(self, cores: float, every: float = 2.0, root: int | None = None, proc: str = "/proc"):
        self.cores, self.every, self.root, self.proc = cores, every, root or os.getpid(), proc
        self.first: dict[tuple[int, int], float] = {}
        self.last: dict[tuple[int, int], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="core-usage", daemon=True)

    def sample(self) -> None:
        for key, seconds in tree_cpu_times(self.root, self.proc).items():
            self.first.setdefault(key, seconds if self.started_at_start else 0.0)
            self.last[key] = seconds

    def busy_seconds(self) -> float:
        return sum(self.last[k] - self.first[k] for k in self.last)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()

    def start(self) -> "UsageWindow":
        self.started, self.machine = time.time(), machine_busy_seconds(self.proc)
        self.started_at_start = True
        self.sample()                      # what the processes alive now had already used
        self.started_at_start = False      # processes seen later started during the phase
        self._thread.start()
        return self

    def finish(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        self.sample()
        wall = time.time() - self.started
        ours = self.busy_seconds()
        machine = machine_busy_seconds(self.proc) - self.machine
        return {"cost.core_utilization": round(core_utilization(ours, self.cores, wall), 4),
                "cost.busy_core_seconds": round(ours, 1), "cost.trial_phase_seconds": round(wall, 1),
                "cost.cores": self.cores,
                "cost.machine_core_utilization": round(core_utilization(machine, os.cpu_count() or 1, wall), 4)}
