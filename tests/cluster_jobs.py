"""Jobs on the local multi-node cluster (tests/cluster.py), submitted as docs/deploy.md tells cluster users
(`ray job submit --working-dir . -- python run.py …`), and what the node-loss tests assert of them.

Used by tests/test_cluster.py.
"""
from __future__ import annotations

import json
import time


# The tiny benchmark of the other end-to-end tests (tests/conftest.py's TINY): the cluster path, in seconds.
TINY_DATA = {"data.num_train": 150, "data.num_val": 40, "data.num_ood": 120, "data.num_source": 120,
             "teacher.fit_steps": 30}


def sets(values: dict) -> list[str]:
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


def shared_paths(cluster, name: str) -> list[str]:
    shared = cluster.shared
    return ["--cache", str(shared / "cache"), "--storage", str(shared / "ray_results"),
            "--tracking-uri", f"sqlite:///{shared / 'mlflow.db'}", "--name", name]


def submit_no_wait(cluster, *run_args: str) -> str:
    out = cluster.submit(*run_args, wait=False, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return next(line.split("'")[1] for line in (out.stdout + out.stderr).splitlines() if "submitted successfully" in line)


def wait_for_job(cluster, job_id: str, timeout: float = 300) -> tuple[str, str]:
    """(final status, logs) of a job."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = job_status(cluster, job_id)
        if status:
            return status, cluster.api.job_logs(job_id)
        time.sleep(2)
    raise TimeoutError(f"job {job_id} did not end in {timeout:.0f} s; its log ends: {cluster.api.job_logs(job_id)[-4000:]}")


def job_status(cluster, job_id: str) -> str | None:
    """The job's final status, or None while it is pending or running."""
    status = cluster.api.job_status(job_id)
    return status if status in ("SUCCEEDED", "FAILED", "STOPPED") else None


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


# ---- node loss: a trial continues from its last epoch, every epoch once in MLflow --------------------

# The trial's Tune function (its Train controller) runs on w1, its one Train worker on w2.
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
  resources.worker_resource: w2
parameters:
  seed: {{grid: [0]}}
"""


def a_trial_survives_the_loss_of_its_nodes(cluster, name: str = "node_loss") -> None:
    """One trial loses both of its nodes in turn; each time a replacement node with the same resource joins,
    as an autoscaler would bring one. After epoch 2 the node of its Train worker dies (Ray Train restarts
    the worker), after epoch 3 the node of its Tune function (Tune retries the trial). Each time it goes on
    from its last checkpoint in its one MLflow child run; every epoch is logged once; the sweep exits 0."""
    space = cluster.shared / f"{name}.yaml"   # the driver runs on the head, which sees the shared folder
    space.write_text(NODE_LOSS_SPACE.format(name=name))
    labels_before = list((cluster.shared / "cache").glob("labels/*/manifest.json"))
    job = submit_no_wait(cluster, "sweep", "--space", str(space), *shared_paths(cluster, name))
    files = cluster.shared / "ray_results" / name / "files"
    for epoch, part, resource, cpus in ((2, "train_rank0", "w2", 2), (3, "trial", "w1", 1)):
        wait_for_epoch(cluster, job, name, epoch)
        nodes = json.loads(next(files.glob("*/nodes.json")).read_text())
        doomed = next(n for n in cluster.nodes if cluster.nodes[n].resource == resource)
        assert f"resources {resource})" in nodes[part], nodes      # it is where the space pins it
        cluster.kill_raylet(doomed)
        cluster.add_worker(f"{resource}r{len(cluster.killed)}", cpus=cpus, resource=resource)
    status, logs = wait_for_job(cluster, job)
    assert status == "SUCCEEDED", logs[-3000:]
    assert f"Ray: joined the cluster at {cluster.address}" in logs and ": 3 node(s), 3 CPU(s), 0 GPU(s)" in logs
    trial, steps, resumed = trial_history(cluster, name)
    assert steps == [1, 2, 3, 4, 5] and trial.info.status == "FINISHED"
    # It went on from a checkpoint, not from scratch. (Which restart shows in `resumed_from_epoch` varies:
    # a worker whose node's raylet died can run on for a few seconds, and a run that restarts at its last
    # epoch only reports that epoch again, which MLflow already holds.)
    assert max(resumed) >= 2, resumed
    # Tune retried it after its driver's node died: its own record of the trial, in the sweep's storage (Tune's
    # console line saying so is off unless --verbose)
    from ray.tune import ExperimentAnalysis

    tune_trial, = ExperimentAnalysis(str(cluster.shared / "ray_results" / name)).trials
    assert tune_trial.num_failures >= 1 and tune_trial.status == "TERMINATED", (tune_trial.num_failures,
                                                                                 tune_trial.status)
    assert_ran_on_workers_and_labeled_once(cluster, name, trial, teacher_ran=not labels_before)


def assert_ran_on_workers_and_labeled_once(cluster, name: str, trial, teacher_ran: bool) -> None:
    """The head has no CPUs: the trial's parts and the teacher actors ran on worker nodes; the teacher ran
    once per label key (reused from the shared cache by the second sweep); MLflow holds parent and child."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{cluster.shared / 'mlflow.db'}")
    parent, = client.search_runs([trial.info.experiment_id], "tags.role = 'sweep'")
    assert parent.info.status == "FINISHED" and trial.data.tags["mlflow.parentRunId"] == parent.info.run_id, \
        (parent.info.status, parent.data.tags, trial.data.tags.get("mlflow.parentRunId"), parent.info.run_id)
    # its best model is logged, from a checkpoint Ray kept through the lost nodes and the retried trial
    model, = client.search_logged_models([trial.info.experiment_id])
    assert str(model.status) == "READY" and model.source_run_id == trial.info.run_id
    assert parent.data.tags["best_model_id"] == model.model_id
    assert {m.key: m.value for m in model.metrics}["val_miou"] == trial.data.metrics["best_val_miou"]
    assert "resources w" in trial.data.tags["node.trial"], trial.data.tags
    assert "resources w" in trial.data.tags["node.train_rank0"], trial.data.tags
    assert parent.data.metrics["labeling.keys"] == 1
    assert parent.data.metrics["labeling.teacher_runs"] == int(teacher_ran)
    key, = [a.path.split("/")[-1] for a in client.list_artifacts(parent.info.run_id, "labeling")]
    nodes = json.loads((cluster.shared / "cache" / "labels" / key / "manifest.json").read_text())["teacher_nodes"]
    assert nodes and all("resources w" in n for n in nodes)
