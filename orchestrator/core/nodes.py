"""Naming a Ray node the way a person can find it: its IP, a short id and its custom resources."""
from __future__ import annotations

_STANDARD = ("CPU", "GPU", "memory", "object_store_memory")
# A sliver of a custom resource: it pins its holder to the nodes that have the resource, without limiting
# how many fit there (their CPUs and GPUs do that).
CUSTOM_SHARE = 0.001


def describe_node(ip: str, node_id: str, resources: dict[str, float]) -> str:
    custom = sorted(k for k in resources if k not in _STANDARD and not k.startswith(("node:", "accelerator_type:")))
    return f"{ip} (node {node_id[:8]}" + (f", resources {', '.join(custom)})" if custom else ")")


def this_node() -> str:
    """The node this process runs on (needs a connected Ray)."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    for n in ray.nodes():
        if n["NodeID"] == node_id:
            return describe_node(n["NodeManagerAddress"], node_id, n["Resources"])
    return f"node {node_id[:8]}"
