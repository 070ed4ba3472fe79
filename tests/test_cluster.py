"""The cluster story on a real multi-node Ray cluster whose worker nodes cannot see the head's disk.

Sweeps are submitted as README tells cluster users: `ray job submit --working-dir . -- python run.py sweep …`
(the upload leaves out what .gitignore and .rayignore name). The cluster: tests/cluster.py.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.cluster import RAY

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

ROOT = Path(__file__).resolve().parent.parent
# The tiny benchmark of the other end-to-end tests (tests/conftest.py's TINY): the cluster path, in seconds.
TINY_DATA = {"data.num_train": 150, "data.num_val": 40, "data.num_ood": 120, "data.num_source": 120,
             "teacher.fit_steps": 30}


def sets(values: dict) -> list[str]:
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


def submit(cluster, *run_args: str, wait: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    return cluster.submit(*run_args, wait=wait, timeout=timeout)


def shared_paths(cluster, name: str) -> list[str]:
    shared = cluster.shared
    return ["--cache", str(shared / "cache"), "--storage", str(shared / "ray_results"),
            "--tracking-uri", f"sqlite:///{shared / 'mlflow.db'}", "--name", name]


def test_a_cache_only_the_head_sees_is_named_with_the_node_and_the_fix(local_cluster):
    started = time.time()
    out = submit(local_cluster, "sweep", "--space", "search_spaces/smoke.yaml", "--name", "head_only", timeout=300)
    log = out.stdout + out.stderr
    assert out.returncode != 0
    assert "error: the cache folder " in log and "/.semiovs/cache is not visible from Ray node 127.0.0." in log
    assert "resources w" in log                                   # it names the worker node that cannot see it
    assert "Fix: put the cache and the storage on a filesystem every node mounts" in log
    assert "Traceback" not in log
    assert time.time() - started < 120                             # seconds, not a failed trial minutes later
    assert not list((local_cluster.root / "h").glob("**/head_only/sweep.json"))   # nothing written: no resume trap


# ---- node loss: a trial continues from its last epoch; labeling finishes every image once -----------

NODE_LOSS_SPACE = """name: {name}
fixed:
  data.num_train: 150
  data.num_val: 40
  data.num_ood: 120
  data.num_source: 120
  teacher.fit_steps: 30
  train.method: semiovs
  train.epochs: 5
  train.iters_per_epoch: 6
  train.batch_size: 4
  train.num_workers: 1
  resources.trial_resource: w1
parameters:
  seed: {{grid: [0]}}
"""


def submit_no_wait(cluster, *run_args: str) -> str:
    out = submit(cluster, *run_args, wait=False, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return next(line.split("'")[1] for line in (out.stdout + out.stderr).splitlines() if "submitted successfully" in line)


def job_logs(cluster, job_id: str) -> str:
    return subprocess.run([RAY, "job", "logs", f"--address={cluster.dashboard}", job_id],
                          capture_output=True, text=True, env=cluster.env()).stdout


def wait_for_job(cluster, job_id: str, timeout: float = 300) -> tuple[str, str]:
    """(final status, logs) of a job."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = job_status(cluster, job_id)
        if status:
            return status, job_logs(cluster, job_id)
        time.sleep(2)
    raise TimeoutError(f"job {job_id} did not end in {timeout:.0f} s; its log ends: {job_logs(cluster, job_id)[-4000:]}")


def job_status(cluster, job_id: str) -> str | None:
    out = subprocess.run([RAY, "job", "status", f"--address={cluster.dashboard}", job_id],
                         capture_output=True, text=True, env=cluster.env())
    said = out.stdout.lower()   # "Job '…' succeeded", "… failed", "… was stopped"; else still running
    return next((s.upper() for s in ("succeeded", "failed", "stopped") if f"' {s}" in said or f"was {s}" in said), None)


def wait_for(cluster, job_id: str, folder: Path, pattern: str, timeout: float = 300) -> Path:
    """The first file matching `pattern` under `folder`, while the job still runs."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
        if job_status(cluster, job_id):
            raise AssertionError(f"job ended before {pattern} appeared: {wait_for_job(cluster, job_id)[1][-3000:]}")
        time.sleep(1)
    raise TimeoutError(f"nothing matched {folder / pattern} in {timeout:.0f} s")


def wait_for_epoch(cluster, job_id: str, name: str, epoch: int, timeout: float = 300) -> None:
    """Until MLflow holds the trial's `epoch`: its report, checkpoint included, has then reached the driver."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            _, steps, _ = trial_history(cluster, name)
        except (AttributeError, ValueError):   # no experiment or trial run yet
            steps = []
        if epoch in steps:
            return
        if job_status(cluster, job_id):
            raise AssertionError(f"job ended before epoch {epoch}: {wait_for_job(cluster, job_id)[1][-3000:]}")
        time.sleep(1)
    raise TimeoutError(f"epoch {epoch} of {name} not in MLflow after {timeout:.0f} s")


def trial_history(cluster, name: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{cluster.shared / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    trial, = client.search_runs([exp.experiment_id], "tags.role = 'trial'")
    steps = [m.step for m in client.get_metric_history(trial.info.run_id, "val_miou")]
    resumed = [m.value for m in client.get_metric_history(trial.info.run_id, "resumed_from_epoch")]
    return trial, steps, resumed


@pytest.mark.parametrize("victim", ["train_rank0", "trial"])
def test_a_trial_survives_the_loss_of_its_node(local_cluster, victim, tmp_path):
    """SIGKILL the raylet of the node that hosts the trial's Train worker (or its Tune function) after the
    second epoch; a replacement node joins, as an autoscaler would bring one. The trial continues from its
    epoch-2 checkpoint in its one MLflow child run, every epoch once, and the sweep exits 0."""
    name = f"loss_{victim}"
    space = local_cluster.shared / f"{name}.yaml"   # the driver runs on the head, which sees the shared folder
    space.write_text(NODE_LOSS_SPACE.format(name=name))
    labels_before = list((local_cluster.shared / "cache").glob("labels/*/manifest.json"))
    job = submit_no_wait(local_cluster, "sweep", "--space", str(space), *shared_paths(local_cluster, name))
    wait_for_epoch(local_cluster, job, name, 2)
    files = local_cluster.shared / "ray_results" / name / "files"
    nodes = json.loads(next(files.glob("*/nodes.json")).read_text())
    doomed = next(n for n in local_cluster.nodes if f"resources {n})" in nodes[victim])
    local_cluster.kill_raylet(doomed)
    replacement = f"{doomed}r{len(local_cluster.nodes)}"
    local_cluster.add_worker(replacement, cpus=2, resource=doomed if victim == "trial" else None)
    status, logs = wait_for_job(local_cluster, job)
    assert status == "SUCCEEDED", logs[-3000:]
    assert "Ray: joined the cluster at 127.0.0.2:" in logs and ": 3 node(s), 3 CPU(s), 0 GPU(s)" in logs
    trial, steps, resumed = trial_history(local_cluster, name)
    assert steps == [1, 2, 3, 4, 5] and trial.info.status == "FINISHED"
    assert max(resumed) >= 2                                      # continued from a checkpoint, not from scratch
    assert_ran_on_workers_and_labeled_once(local_cluster, name, trial, teacher_ran=not labels_before)


def assert_ran_on_workers_and_labeled_once(cluster, name: str, trial, teacher_ran: bool) -> None:
    """The head has no CPUs: the trial's parts and the teacher actors ran on worker nodes; the teacher ran
    once per label key (reused from the shared cache by the second sweep); MLflow holds parent and child."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{cluster.shared / 'mlflow.db'}")
    parent, = client.search_runs([trial.info.experiment_id], "tags.role = 'sweep'")
    assert parent.info.status == "FINISHED" and trial.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert "resources w" in trial.data.tags["node.trial"], trial.data.tags
    assert "resources w" in trial.data.tags["node.train_rank0"], trial.data.tags
    assert parent.data.metrics["labeling.keys"] == 1
    assert parent.data.metrics["labeling.teacher_runs"] == int(teacher_ran)
    key, = [a.path.split("/")[-1] for a in client.list_artifacts(parent.info.run_id, "labeling")]
    nodes = json.loads((cluster.shared / "cache" / "labels" / key / "manifest.json").read_text())["teacher_nodes"]
    assert nodes and all("resources w" in n for n in nodes)


def labeled_so_far(log: str) -> int:
    """Images labeled, from the job's progress lines (`labeling on 1 actor(s): 120/400 image …`)."""
    import re

    counts = [int(n) for n in re.findall(r"labeling on \d+ actor\(s\): (\d+)/\d+ image", log)]
    return max(counts, default=0)


def test_labeling_survives_the_loss_of_the_teacher_actors_node(local_cluster):
    """Kill the node that hosts the only teacher actor mid-run: the actor restarts on another node and
    every OOD image is labeled exactly once, with no torn shard."""
    import pyarrow.parquet as pq

    cache = local_cluster.shared / "cache"
    # 400 OOD images through the teacher at 256 px: slow enough to kill its node mid-run
    args = ["label", "--cache", str(cache), *sets({**TINY_DATA, "data.num_ood": 400, "teacher.resolution": 256,
                                                   "teacher.batch_size": 8})]
    job = submit_no_wait(local_cluster, *args)
    actor_node = None
    deadline = time.time() + 300
    while actor_node is None and time.time() < deadline:
        out = subprocess.run([RAY, "list", "actors", f"--address={local_cluster.address}", "--format=json",
                              "--filter", "state=ALIVE", "--detail"], capture_output=True, text=True,
                             env=local_cluster.env())
        actors = [a for a in json.loads(out.stdout or "[]") if "TeacherActor" in a.get("class_name", "")
                  or "MapBatches(TeacherActor)" in json.dumps(a.get("repr_name", ""))]
        if actors and labeled_so_far(job_logs(local_cluster, job)) > 0:   # labeling is under way
            actor_node = local_cluster.node_named_by(actors[0]["node_id"])
        time.sleep(1)
    assert actor_node not in (None, "head")
    local_cluster.kill_raylet(actor_node)
    local_cluster.add_worker(f"{actor_node}r{len(local_cluster.nodes)}", cpus=2)
    status, logs = wait_for_job(local_cluster, job)
    assert status == "SUCCEEDED", logs[-3000:]
    summary = json.loads([line for line in logs.splitlines() if line.startswith("{")][-1])
    assert (summary["images"], summary["labeled"], summary["reused"]) == (400, 400, False)
    table = pq.read_table(Path(summary["path"]) / "shards", columns=["image_id"])
    ids = table.column("image_id").to_pylist()
    assert len(ids) == len(set(ids)) == 400
