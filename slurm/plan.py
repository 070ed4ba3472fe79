"""Pure decisions of the Slurm launcher: what each node gets, which commands run, which environment they see.

Nothing here starts a process or reads the machine; slurm/launch.py does, with these answers. Inputs are the
environment Slurm gives a job step (SLURM_*), so the same functions serve the head and every worker node.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

# Set in the environment of every process the launcher starts on a node (Ray's head or worker, its workers,
# the sweep driver), with this job's Ray temp folder as the value: the launcher finds exactly its own
# processes by it when it cleans up, and never touches another job's Ray (or anyone else's) on the node.
MARKER = "SEMIOVS_SLURM_RAY"


class LaunchError(Exception):
    """A mistake in how the launcher was called: one line with the fix, exit 2."""


@dataclass(frozen=True)
class NodeResources:
    cpus: int
    gpus: int
    memory_bytes: int | None   # None: Ray measures it (it reads the job's cgroup limit where there is one)


def node_resources(env: Mapping[str, str]) -> NodeResources:
    """What this job may use on this node, from Slurm's variables (not from the hardware: a node is often
    shared with other jobs, and Ray would otherwise claim all of it)."""
    cpus = _int(env, "SLURM_CPUS_PER_TASK") or _int(env, "SLURM_CPUS_ON_NODE") or 1
    gpus = _int(env, "SLURM_GPUS_ON_NODE")
    if gpus is None:
        visible = env.get("CUDA_VISIBLE_DEVICES", "").strip()
        gpus = len([d for d in visible.split(",") if d.strip()]) if visible and visible != "NoDevFile" else 0
    mem_mb = _int(env, "SLURM_MEM_PER_NODE")
    if mem_mb is None and _int(env, "SLURM_MEM_PER_CPU") is not None:
        mem_mb = _int(env, "SLURM_MEM_PER_CPU") * cpus
    return NodeResources(cpus=cpus, gpus=gpus, memory_bytes=mem_mb * 1024 * 1024 if mem_mb else None)


def _int(env: Mapping[str, str], key: str) -> int | None:
    """Slurm's integer variables; per-node lists such as SLURM_CPUS_ON_NODE are plain numbers in a step, but
    SLURM_JOB_CPUS_PER_NODE-style values like `4(x2)` may appear: take the leading number."""
    raw = env.get(key, "").strip()
    digits = ""
    for ch in raw:
        if not ch.isdigit():
            break
        digits += ch
    return int(digits) if digits else None


def job_temp_dir(env: Mapping[str, str]) -> Path:
    """This job's Ray temp folder on the node's local disk (Ray's sockets must not live on a shared filesystem,
    and their paths must stay under 108 characters). SEMIOVS_RAY_TMP moves its parent (default /tmp)."""
    job = env.get("SLURM_JOB_ID")
    if not job:
        raise LaunchError("SLURM_JOB_ID is not set: this launcher runs inside a Slurm job. "
                          "Fix: submit it with `sbatch slurm/sweep.sbatch --space FILE`.")
    return Path(env.get("SEMIOVS_RAY_TMP") or "/tmp") / f"semiovs-ray-{job}"


def ray_env(env: Mapping[str, str], temp_dir: Path, dashboard_url: str) -> dict[str, str]:
    """The environment of every process the launcher starts: token authentication on (a per-job token when the
    user has none; srun hands it to the worker nodes), the API server named (another Ray on the node would make
    Ray's state API refuse to guess which one), no 30-s drain on SIGTERM (Slurm kills after KillWait), and the
    marker that lets the launcher find its own processes."""
    out = {k: v for k, v in env.items() if k != "RAY_ADDRESS"}
    out.setdefault("RAY_AUTH_MODE", "token")
    if out["RAY_AUTH_MODE"] == "token" and not _has_token(out):
        out["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    out["RAY_API_SERVER_ADDRESS"] = dashboard_url
    out.setdefault("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "0")
    out[MARKER] = str(temp_dir)
    return out


def _has_token(env: Mapping[str, str]) -> bool:
    if env.get("RAY_AUTH_TOKEN") or env.get("RAY_AUTH_TOKEN_PATH"):
        return True
    home = env.get("HOME")
    return bool(home) and (Path(home) / ".ray" / "auth_token").is_file()


def resource_flags(res: NodeResources) -> list[str]:
    flags = [f"--num-cpus={res.cpus}", f"--num-gpus={res.gpus}"]
    if res.memory_bytes:
        flags.append(f"--memory={res.memory_bytes}")
    return flags


def head_command(ray: str, temp_dir: Path, ip: str, ports: Sequence[int], res: NodeResources) -> list[str]:
    """`ray start --head --block`: it stays in the foreground, so Slurm tracks it and it takes its node's Ray
    processes down when it gets SIGTERM. Every fixed-by-default port is given (two jobs on a node must not
    both want 6379, 8265, 10001, 52365); the others Ray picks free itself."""
    gcs, dashboard, client, agent, metrics = ports
    return [ray, "start", "--head", "--block", f"--node-ip-address={ip}", f"--port={gcs}",
            "--include-dashboard=true", f"--dashboard-host={ip}", f"--dashboard-port={dashboard}",
            f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
            f"--metrics-export-port={metrics}", f"--temp-dir={temp_dir}", "--disable-usage-stats",
            *resource_flags(res)]


def worker_command(ray: str, temp_dir: Path, address: str, ports: Sequence[int], res: NodeResources) -> list[str]:
    agent, metrics = ports
    return [ray, "start", "--block", f"--address={address}", f"--dashboard-agent-listen-port={agent}",
            f"--metrics-export-port={metrics}", f"--temp-dir={temp_dir}", "--disable-usage-stats",
            *resource_flags(res)]


def worker_step(python: str, head_node: str, num_nodes: int, env: Mapping[str, str], address: str,
                dashboard_url: str) -> list[str] | None:
    """One srun step with one task on each node but the head's (None on a one-node job). A step does not
    inherit the job's --cpus-per-task (Slurm ≥ 22.05) and may not get its GPUs unless asked: both are passed."""
    if num_nodes <= 1:
        return None
    cpus, gpus = env.get("SLURM_CPUS_PER_TASK"), env.get("SLURM_GPUS_PER_NODE")
    return ["srun", f"--nodes={num_nodes - 1}", f"--ntasks={num_nodes - 1}", "--ntasks-per-node=1",
            f"--exclude={head_node}", *([f"--cpus-per-task={cpus}"] if cpus else []),
            *([f"--gpus-per-node={gpus}"] if gpus else []), "--kill-on-bad-exit=0",
            python, "-m", "slurm.launch", "worker", "--address", address, "--dashboard", dashboard_url]


def sweep_command(python: str, user_args: Sequence[str], address: str) -> list[str]:
    """`python run.py sweep <the user's arguments> --ray-address <this job's head>`."""
    check_sweep_args(user_args)
    return [python, "run.py", "sweep", *user_args, "--ray-address", address]


def check_sweep_args(user_args: Sequence[str]) -> None:
    """The user's flags for `run.py sweep` that the launcher cannot take (checked before anything starts)."""
    for arg in user_args:
        if arg == "--ray-address" or arg.startswith("--ray-address="):
            raise LaunchError("--ray-address: the launcher joins the sweep to this job's own Ray. "
                              "Fix: leave --ray-address out.")
    if not any(a == "--space" or a.startswith("--space=") for a in user_args):
        raise LaunchError("no --space given. Fix: sbatch slurm/sweep.sbatch --space search_spaces/FILE.yaml "
                          "[more `run.py sweep` flags].")
