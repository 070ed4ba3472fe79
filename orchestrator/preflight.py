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

from orchestrator.core import storage as store
from orchestrator.core.errors import UserError
from orchestrator.core.nodes import describe_node, this_node

ROOT_MARKER = ".semiovs-root"   # lasting marker of a cache root (checked by trials)
_PROBE_PREFIX = ".semiovs-preflight-"


@dataclass(frozen=True)
class NodeSight:
    """What one node saw: the folders (by role) whose marker it read back, and why others failed."""
    node: str                 # readable: ip, short id, custom resources
    seen: frozenset[str]
    errors: tuple[tuple[str, str], ...] = ()   # (role, error) where reading a remote store raised


def blind_spots(sights: list[NodeSight], folders: dict[str, str]) -> list[tuple[str, str]]:
    """(role, node) for every folder some node could not see (pure)."""
    return [(role, sight.node) for sight in sights for role in folders if role not in sight.seen]


def unreachable_message(role: str, uri: str, node: str, error: str) -> str:
    return (f"the {role} {uri} cannot be read from Ray node {node} ({error or 'the probe file was not there'}). "
            f"Fix: give every node the store's credentials and endpoint (AWS_ENDPOINT_URL or "
            f"?endpoint_override=HOST:PORT in the URI; README: Cloud storage), or pass a shared folder.")


def not_shared_message(role: str, folder: str, node: str) -> str:
    return (f"the {role} folder {folder} is not visible from Ray node {node}: that node does not share this "
            f"machine's disk. Fix: put the cache and the storage on a filesystem every node mounts (NFS, EFS, "
            f"the cluster's shared home or scratch) and pass --cache DIR and --storage DIR on it "
            f"(docs/deploy.md: Run on a cluster).")


def check_shared_folders(folders: dict[str, Path | str]) -> None:
    """Raise a UserError unless every alive node sees each root (role -> folder or storage URI): the driver
    writes a probe file, a task on each node reads it back. Needs ray.init()."""
    roots = {role: str(path) for role, path in folders.items()}
    token = secrets.token_hex(8)
    markers = {}
    for role, root in roots.items():
        markers[role] = store.join(root, f"{_PROBE_PREFIX}{token}")
        try:
            store.write_text(markers[role], token)
        except OSError as err:
            raise UserError(f"cannot write to the {role} {root}: {err}. Fix: check the path (or the bucket, its "
                            f"endpoint and credentials), or pass another --{role}.") from None
    try:
        sights = _look_from_every_node(markers, token)
    finally:
        for marker in markers.values():
            store.delete_file(marker)
    problems = blind_spots(sights, roots)
    if problems:
        role, node = problems[0]
        if store.is_uri(roots[role]):
            error = next((e for s in sights if s.node == node for r, e in s.errors if r == role), "")
            raise UserError(unreachable_message(role, roots[role], node, error))
        raise UserError(not_shared_message(role, roots[role], node))
    for role, root in roots.items():   # lasting markers: a trial on a node that joins later checks them
        if not store.is_uri(root):
            (Path(root) / ROOT_MARKER).write_text(f"the {role} root of a semiovs-orchestrator run\n")


def require_visible(role: str, folder: str | Path) -> None:
    """In a trial: a root the driver checked must carry its lasting marker here too (same message)."""
    if "://" not in str(folder) and not (Path(folder) / ROOT_MARKER).is_file():
        raise UserError(not_shared_message(role, str(folder), this_node()))


def _look_from_every_node(markers: dict[str, str], token: str, timeout_s: float = 60.0) -> list[NodeSight]:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0, max_retries=0)
    def look(paths: dict[str, str]) -> tuple[list[str], list[tuple[str, str]]]:
        seen, errors = [], []
        for role, path in paths.items():
            try:
                if store.read_text(path) == token:
                    seen.append(role)
            except OSError as err:   # a folder this node does not see, or a store it cannot reach
                errors.append((role, str(err)[:300]))
        return seen, errors

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = [look.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(markers)
            for n in nodes]
    results = ray.get(refs, timeout=timeout_s)
    return [NodeSight(describe_node(n["NodeManagerAddress"], n["NodeID"], n["Resources"]), frozenset(seen),
                      tuple(errors)) for n, (seen, errors) in zip(nodes, results)]
