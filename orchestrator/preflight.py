"""Before any work: every alive Ray node must see the cache and storage folders the driver sees.

On a cluster these folders must be on a filesystem every node mounts; a folder on the head's own disk
only fails much later, deep in a trial, with a misleading error. So the driver writes a marker file into
each folder and a tiny task pinned to each alive node reads it back. A folder some node cannot see is
one `error:` line naming the folder, the node and the fix, before anything else is written.

A trial that starts later on a node that joined after the check looks for the roots' lasting markers
(`require_visible`) and fails with the same message.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from orchestrator.core.errors import UserError
from orchestrator.core.nodes import describe_node, this_node

ROOT_MARKER = ".semiovs-root"   # lasting marker of a cache root (checked by trials)
_PROBE_PREFIX = ".semiovs-preflight-"


@dataclass(frozen=True)
class NodeSight:
    """What one node saw: the folders (by role) whose marker it read back."""
    node: str                 # readable: ip, short id, custom resources
    seen: frozenset[str]


def blind_spots(sights: list[NodeSight], folders: dict[str, str]) -> list[tuple[str, str]]:
    """(role, node) for every folder some node could not see (pure)."""
    return [(role, sight.node) for sight in sights for role in folders if role not in sight.seen]


def not_shared_message(role: str, folder: str, node: str) -> str:
    return (f"the {role} folder {folder} is not visible from Ray node {node}: that node does not share this "
            f"machine's disk. Fix: put the cache and the storage on a filesystem every node mounts (NFS, EFS, "
            f"the cluster's shared home or scratch) and pass --cache DIR and --storage DIR on it "
            f"(README: Run on a cluster).")


def check_shared_folders(folders: dict[str, Path]) -> None:
    """Raise a UserError unless every alive node sees each folder (role -> local path). Needs ray.init()."""
    import ray

    local = {role: path for role, path in folders.items() if "://" not in str(path)}   # URIs: the same anywhere
    if not local:
        return
    token = secrets.token_hex(8)
    markers = {}
    for role, path in local.items():
        Path(path).mkdir(parents=True, exist_ok=True)
        markers[role] = Path(path) / f"{_PROBE_PREFIX}{token}"
        markers[role].write_text(token)
    try:
        sights = _look_from_every_node({role: str(m) for role, m in markers.items()}, token)
    finally:
        for marker in markers.values():
            marker.unlink(missing_ok=True)
    problems = blind_spots(sights, local)
    if problems:
        role, node = problems[0]
        raise UserError(not_shared_message(role, str(local[role]), node))
    for role, path in local.items():   # lasting markers: a trial on a node that joins later checks them
        (Path(path) / ROOT_MARKER).write_text(f"the {role} root of a semiovs-orchestrator run\n")


def require_visible(role: str, folder: str | Path) -> None:
    """In a trial: a root the driver checked must carry its lasting marker here too (same message)."""
    if "://" not in str(folder) and not (Path(folder) / ROOT_MARKER).is_file():
        raise UserError(not_shared_message(role, str(folder), this_node()))


def _look_from_every_node(markers: dict[str, str], token: str, timeout_s: float = 60.0) -> list[NodeSight]:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0, max_retries=0)
    def look(paths: dict[str, str]) -> list[str]:
        seen = []
        for role, path in paths.items():
            try:
                if Path(path).read_text() == token:
                    seen.append(role)
            except OSError:   # not there: this node does not see the folder
                pass
        return seen

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = [look.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(markers)
            for n in nodes]
    results = ray.get(refs, timeout=timeout_s)
    return [NodeSight(describe_node(n["NodeManagerAddress"], n["NodeID"], n["Resources"]), frozenset(seen))
            for n, seen in zip(nodes, results)]
