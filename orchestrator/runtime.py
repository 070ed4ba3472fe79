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

A private instance stays private: every port of it (GCS, raylet, object manager, workers, dashboard and its
agents) listens on 127.0.0.1 only (`loopback_node`), and its token-authentication token is a new one kept
in a folder of this process's own, not in the user's ~/.ray (`private_token`). A joined cluster is the
cluster's: neither applies.
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import secrets
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

# HARMLESS_RAY_LINES and quiet_harmless_ray_lines live in core.console; callers have found them here too
from orchestrator.core.console import (HARMLESS_RAY_LINES, VERBOSE_ENV, is_verbose, quiet_harmless_ray_lines,  # noqa: F401
                                      ray_log_level, restyle_logger)

_TARGET = None   # the RayTarget this process started or joined (set once by init_ray)


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
    """Start or join Ray (once per process); returns one line naming the Ray, its nodes, CPUs and GPUs.
    `quiet`: no worker output on this console; Ray's own INFO output only with --verbose (core.console)."""
    quiet_harmless_ray_lines()
    import ray

    if not ray.is_initialized():
        target = choose_target(address, os.environ)
        # Ray's own logging settings: its driver-side INFO lines ("Started a local Ray instance...") and those of
        # the libraries under it (Tune, Train) only with --verbose
        kwargs = {"log_to_driver": not quiet, "include_dashboard": True,
                  "logging_level": getattr(logging, ray_log_level())}
        if target.joins_cluster:
            ray.init(address=target.address, **kwargs)
        else:
            _start_private(num_cpus, kwargs)
        restyle_logger("ray")   # what Ray still prints here (warnings, errors) as our warning:/error: lines
        global _TARGET
        _TARGET = target
    return describe_ray()


def _start_private(num_cpus: int | None, kwargs: dict) -> None:
    import ray

    local_worker_priority()
    private_token()
    port = _free_port()
    env_vars = {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}", **LOCAL_ONLY_ENV,
                VERBOSE_ENV: "1" if is_verbose() else "0"}   # the workers' log level (core.console)
    with loopback_node():
        ray.init(address="local", num_cpus=num_cpus, dashboard_host="127.0.0.1", dashboard_port=port,
                 runtime_env={"env_vars": env_vars, "worker_process_setup_hook": WORKER_SETUP}, **kwargs)


# Runs in every worker process of a private instance when it starts (Ray's worker_process_setup_hook): a trial
# process Tune stops quietly, not with a Python traceback on this console (core.console.worker_setup).
WORKER_SETUP = "orchestrator.core.console.worker_setup"


# Ray names a new local node by the machine's outward address (ray._private.services.get_node_ip_address), even
# when asked for 127.0.0.1 (services.resolve_ip_for_localhost swaps it), and its servers then listen on every
# interface. Only when its "cluster" switch is off (ray_constants.ENABLE_RAY_CLUSTER, from
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER; off by default on macOS and Windows) does it take 127.0.0.1, and with that
# address the C++ servers (GCS, raylet, object manager, core workers) listen on 127.0.0.1 only, as do the
# dashboard's agents, the runtime-env agent and the metrics ports. The switch is read once, when `ray` is first
# imported, into that constant: both are set for the length of ray.init, so that the processes it starts
# inherit it and nothing else in this process does (`ray start`, which a test may run from here, refuses to
# join a cluster with it off).
CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def loopback_node():
    import ray._private.ray_constants as ray_constants

    before_env, before_const = os.environ.get(CLUSTER_SWITCH), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[CLUSTER_SWITCH] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before_const
        if before_env is None:
            os.environ.pop(CLUSTER_SWITCH, None)
        else:
            os.environ[CLUSTER_SWITCH] = before_env


_TOKEN_FILE: Path | None = None   # this process's private token (one for every private instance it starts)


def private_token(env=os.environ) -> Path | None:
    """Token authentication for a private instance, with a token of its own: a random one in a folder only this
    user can read, removed when this process exits. Ray 2.60 reads the token from RAY_AUTH_TOKEN, else the file
    RAY_AUTH_TOKEN_PATH names, else ~/.ray/auth_token, which it creates (and every later local Ray of the user
    shares) when none of them is set. Returns the token file (None when the user gave RAY_AUTH_TOKEN or
    turned token authentication off with RAY_AUTH_MODE). The variables stay set: every Ray process started
    from here, and every client of this instance started from here, needs them."""
    global _TOKEN_FILE
    env.setdefault("RAY_AUTH_MODE", "token")
    if env["RAY_AUTH_MODE"] != "token" or env.get("RAY_AUTH_TOKEN"):
        return None
    if _TOKEN_FILE is None:
        folder = Path(tempfile.mkdtemp(prefix="semiovs-ray-auth-"))   # mode 0700
        path = folder / "auth_token"
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
            handle.write(secrets.token_hex(32))
        atexit.register(_remove_token_folder, folder)
        _TOKEN_FILE = path
    env["RAY_AUTH_TOKEN_PATH"] = str(_TOKEN_FILE)
    _forget_loaded_token()
    return _TOKEN_FILE


def _forget_loaded_token() -> None:
    """Ray read its settings when it was imported: have it read the mode and the token again, as Ray does when
    it turns token authentication on itself (authentication_token_setup._enable_token_auth). This process may
    also have loaded another token already (a cluster joined before)."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _remove_token_folder(folder: Path) -> None:
    import ray

    ray.shutdown()   # first: the instance the token guards (atexit runs this before Ray's own shutdown hook)
    shutil.rmtree(folder, ignore_errors=True)


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
