"""The cluster story on a real multi-node Ray cluster whose worker nodes cannot see the head's disk:
the preflight's error, a trial that survives the loss of its nodes, and labeling that survives the loss
of its teacher actor's node.

Jobs are submitted as docs/deploy.md tells cluster users (tests/cluster_jobs.py); the cluster: tests/cluster.py.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.cluster_jobs import (TINY_DATA, a_trial_survives_the_loss_of_its_nodes, sets,
                                submit_no_wait, wait_for_job)

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]


def test_a_cache_only_the_head_sees_is_named_with_the_node_and_the_fix(local_cluster):
    started = time.time()
    out = local_cluster.submit("sweep", "--space", "search_spaces/smoke.yaml", "--name", "head_only", timeout=300)
    log = out.stdout + out.stderr
    assert out.returncode != 0
    assert "error: the cache folder " in log and f"/.semiovs/cache is not visible from Ray node {local_cluster.subnet}" in log
    assert "resources w" in log                                   # it names the worker node that cannot see it
    assert "Fix: put the cache and the storage on a filesystem every node mounts" in log
    assert "Traceback" not in log
    assert time.time() - started < 120                             # seconds, not a failed trial minutes later
    assert not list((local_cluster.root / "h").glob("**/head_only/sweep.json"))   # nothing written: no resume trap


def test_a_trial_survives_the_loss_of_its_train_workers_node_then_of_its_drivers_node(local_cluster):
    a_trial_survives_the_loss_of_its_nodes(local_cluster)


def labeled_so_far(log: str) -> int:
    """Images labeled, from the job's progress lines (`labeling on 1 actor(s): 120/400 image …`)."""
    import re

    counts = [int(n) for n in re.findall(r"labeling on \d+ actor\(s\): (\d+)/\d+ image", log)]
    return max(counts, default=0)


def test_labeling_survives_the_loss_of_the_teacher_actors_node(local_cluster):
    """Kill the node that hosts the only teacher actor mid-run: the actor restarts on another node and
    every OOD image is labeled exactly once, with no torn shard. The kill landed mid-labeling: the label
    store's rows (each names the node whose actor labeled it) show some, not all, labeled on the lost node."""
    import pyarrow.parquet as pq

    cache = local_cluster.shared / "cache"
    images = 400
    # 400 OOD images through the teacher at 256 px: slow enough to kill its node mid-run
    args = ["label", "--cache", str(cache), *sets({**TINY_DATA, "data.num_ood": images, "teacher.resolution": 256,
                                                   "teacher.batch_size": 8})]
    job = submit_no_wait(local_cluster, *args)
    actor_node = actor_node_id = None
    deadline = time.time() + 300
    while actor_node is None and time.time() < deadline:
        actors = [a for a in local_cluster.api.alive("actors") if "TeacherActor" in a.get("class_name", "")
                  or "MapBatches(TeacherActor)" in json.dumps(a.get("repr_name", ""))]
        if actors and labeled_so_far(local_cluster.api.job_logs(job)) > 0:   # labeling is under way
            actor_node_id = actors[0]["node_id"]
            actor_node = local_cluster.node_named_by(actor_node_id)
        time.sleep(1)
    assert actor_node not in (None, "head")
    local_cluster.kill_raylet(actor_node)
    local_cluster.add_worker(f"{actor_node}r{len(local_cluster.nodes)}", cpus=2)
    status, logs = wait_for_job(local_cluster, job)
    assert status == "SUCCEEDED", logs[-3000:]
    summary = json.loads([line for line in logs.splitlines() if line.startswith("{")][-1])
    assert (summary["images"], summary["labeled"], summary["reused"]) == (images, images, False)
    table = pq.read_table(Path(summary["path"]) / "shards", columns=["image_id", "node"])
    ids = table.column("image_id").to_pylist()
    assert len(ids) == len(set(ids)) == images
    # Mid-labeling, from the stored rows (not from the progress lines): each row names the node of the actor
    # that labeled it (`<ip> (node <id[:8]>, …`). Rows from the lost node reached the driver before it died;
    # the rest were labeled after, by the restarted actor elsewhere. All rows from it: the kill came too late.
    nodes = table.column("node").to_pylist()
    on_lost_node = sum(f"(node {actor_node_id[:8]}" in node for node in nodes)
    assert 0 < on_lost_node < images, (on_lost_node, sorted(set(nodes)))
