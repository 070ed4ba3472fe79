"""Starting (or joining) Ray, the same way for every command, and saying which Ray it is.

A plain `ray.init()` joins whatever cluster `ray start` last recorded on this machine (its
`ray_current_cluster` file), silently, or hangs when that cluster is gone. So a cluster is joined only
when asked: `--ray-address`, or `RAY_ADDRESS` (which `ray job submit` sets for its entrypoint). Otherwise
a private local instance starts (`address="local"`).

The dashboard stays on: Ray Train's placement-group cleaner asks its state API whether a stopped trial's
controller is gone; without it, trials stopped early by ASHA leak their workers (ray #54305). That state
API finds its server by looking for Ray processes on the machine, which fails when another Ray instance
runs there too ("Found multiple active Ray instances"), so a private instance tells its workers the
dashboard's address (RAY_API_SERVER_ADDRESS).
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Mapping

from orchestrator.core.console import HARMLESS_RAY_LINES

_TARGET = None   # the RayTarget this process started or joined (set once by init_ray)

# Ray's own setting RAY_DEDUP_LOGS_SKIP_REGEX drops a line from the worker output Ray forwards to this console
# (it stays in Ray's log files): here only the harmless constructor-arguments line (core.console).


def quiet_harmless_ray_lines(env=os.environ) -> None:
    """Set Ray's skip pattern unless the user set one; read when `ray` is first imported."""
    env.setdefault("RAY_DEDUP_LOGS_SKIP_REGEX", HARMLESS_RAY_LINES)


def local_worker_priority(env=os.environ) -> None:
    """A private local Ray runs its workers at this process's priority (unless the user set one). Ray's
    default is nice 15: on a machine shared with other people's work, the sweep's trials, teacher fit and
    labeling actors then got a few percent of a core while everyone else's processes ran (measured: a
    2-thread teacher fit at 3-8% CPU under load 30-70). Read by the raylet it starts (RayConfig)."""
    env.setdefault("RAY_worker_niceness", "0")


@dataclass(frozen=True)
class RayTarget:
    address: str    # "local" (a private instance) or the cluster's address
    source: str     # where the address came from, for the first line of output

    @property
    def joins_cluster(self) -> bool:
        return self.address != "local"


def choose_target(flag: str | None, env: Mapping[str, str]) -> RayTarget:
    """Which Ray to use: the flag, else RAY_ADDRESS, else a private local instance (never an implicit join)."""
    if flag:
        return RayTarget(flag, "--ray-address")
    if env.get("RAY_ADDRESS"):
        return RayTarget(env["RAY_ADDRESS"], "RAY_ADDRESS")
    return RayTarget("local", "no --ray-address or RAY_ADDRESS")


# On a private one-node instance Ray Train's preemption watcher (an actor per trial that polls the nodes for
# a spot-instance drain notice) has nothing to watch: the only node is this machine. Off, each trial starts
# one process fewer (~2 CPU-seconds). Clusters keep it.
LOCAL_ONLY_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def init_ray(quiet: bool = False, num_cpus: int | None = None, address: str | None = None) -> str:
    """Start or join Ray (once per process); returns one line naming the Ray, its nodes, CPUs and GPUs."""
    quiet_harmless_ray_lines()
    import ray

    if not ray.is_initialized():
        target = choose_target(address, os.environ)
        kwargs = {"log_to_driver": not quiet, "include_dashboard": True}
        if target.joins_cluster:
            ray.init(address=target.address, **kwargs)
        else:
            local_worker_priority()
            port = _free_port()
            ray.init(address="local", num_cpus=num_cpus, dashboard_host="127.0.0.1", dashboard_port=port,
                     runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}",
                                               **LOCAL_ONLY_ENV}}, **kwargs)
        global _TARGET
        _TARGET = target
    return describe_ray()


def joined_cluster() -> bool:
    """Whether init_ray joined a cluster (rather than starting a private local Ray)."""
    return bool(_TARGET and _TARGET.joins_cluster)


def describe_ray() -> str:
    import ray

    target = _TARGET
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = sum(n["Resources"].get("CPU", 0) for n in nodes)
    gpus = sum(n["Resources"].get("GPU", 0) for n in nodes)
    context = ray.get_runtime_context()
    where = (f"joined the cluster at {target.address} (from {target.source})" if target and target.joins_cluster
             else "started a private local instance")
    return (f"Ray: {where}, GCS {context.gcs_address}: {len(nodes)} node(s), {cpus:g} CPU(s), {gpus:g} GPU(s)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
