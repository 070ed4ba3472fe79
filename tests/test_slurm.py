"""The Slurm launcher (slurm/): its pure decisions, its process clean-up, and the smoke sweep on a real one-node
Slurm (tests/slurm.py), submitted as docs/deploy.md's "Run on Slurm" tells users, plus a job cancelled mid-sweep."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slurm import plan, procs
from tests.conftest import TINY, require

ROOT = Path(__file__).resolve().parent.parent


# ---- pure decisions -------------------------------------------------------------------------------------

def test_node_resources_come_from_slurm_not_from_the_hardware():
    res = plan.node_resources({"SLURM_CPUS_PER_TASK": "6", "SLURM_CPUS_ON_NODE": "12", "SLURM_GPUS_ON_NODE": "2",
                               "SLURM_MEM_PER_NODE": "2048"})
    assert (res.cpus, res.gpus, res.memory_bytes) == (6, 2, 2048 * 1024 * 1024)
    res = plan.node_resources({"SLURM_CPUS_ON_NODE": "4", "CUDA_VISIBLE_DEVICES": "0,3", "SLURM_MEM_PER_CPU": "100"})
    assert (res.cpus, res.gpus, res.memory_bytes) == (4, 2, 400 * 1024 * 1024)
    assert plan.node_resources({"SLURM_JOB_CPUS_PER_NODE": "8(x2)"}) == plan.NodeResources(1, 0, None)


def test_every_port_ray_fixes_by_default_is_given_and_ray_stays_in_the_foreground():
    res = plan.NodeResources(cpus=4, gpus=1, memory_bytes=None)
    head = plan.head_command("ray", Path("/tmp/semiovs-ray-7"), "10.0.0.5", [1001, 1002, 1003, 1004, 1005], res)
    for flag in ("--block", "--port=1001", "--dashboard-port=1002", "--ray-client-server-port=1003",
                 "--dashboard-agent-listen-port=1004", "--metrics-export-port=1005", "--include-dashboard=true",
                 "--temp-dir=/tmp/semiovs-ray-7", "--num-cpus=4", "--num-gpus=1", "--node-ip-address=10.0.0.5"):
        assert flag in head
    worker = plan.worker_command("ray", Path("/tmp/t"), "10.0.0.5:1001", [2001, 2002], res)
    assert "--block" in worker and "--address=10.0.0.5:1001" in worker and "--dashboard-agent-listen-port=2001" in worker


def test_the_worker_step_covers_every_other_node_once():
    assert plan.worker_step("py", "n1", 1, {}, "a:1", "http://a:2") is None
    step = plan.worker_step("py", "n1", 3, {"SLURM_CPUS_PER_TASK": "8", "SLURM_GPUS_PER_NODE": "2"}, "a:1",
                            "http://a:2")
    assert step[:5] == ["srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--exclude=n1"]
    assert "--cpus-per-task=8" in step and "--gpus-per-node=2" in step
    assert step[-8:] == ["py", "-m", "slurm.launch", "worker", "--address", "a:1", "--dashboard", "http://a:2"]
    assert not any(a.startswith("--gpus") for a in plan.worker_step("py", "n1", 2, {}, "a:1", "http://a:2"))


def test_the_sweep_gets_the_users_flags_and_this_jobs_ray():
    cmd = plan.sweep_command("py", ["--space", "s.yaml", "--resume", "--set", "train.epochs=3"], "10.0.0.5:1001")
    assert cmd == ["py", "run.py", "sweep", "--space", "s.yaml", "--resume", "--set", "train.epochs=3",
                   "--ray-address", "10.0.0.5:1001"]
    with pytest.raises(plan.LaunchError, match="leave --ray-address out"):
        plan.check_sweep_args(["--space", "s.yaml", "--ray-address=x:1"])
    with pytest.raises(plan.LaunchError, match="no --space given"):
        plan.check_sweep_args(["--resume"])


def test_token_auth_stays_on_and_the_marker_names_the_jobs_temp_folder(tmp_path):
    env = plan.ray_env({"HOME": str(tmp_path), "RAY_ADDRESS": "elsewhere:1"}, Path("/tmp/semiovs-ray-9"), "http://h:2")
    assert env["RAY_AUTH_MODE"] == "token" and len(env["RAY_AUTH_TOKEN"]) == 64   # a per-job token
    assert "RAY_ADDRESS" not in env and env["RAY_API_SERVER_ADDRESS"] == "http://h:2"
    assert env[plan.MARKER] == "/tmp/semiovs-ray-9"
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("x" * 32)
    assert "RAY_AUTH_TOKEN" not in plan.ray_env({"HOME": str(tmp_path)}, Path("/t"), "u")   # the user's own token
    with pytest.raises(plan.LaunchError, match="inside a Slurm job"):
        plan.job_temp_dir({})
    assert plan.job_temp_dir({"SLURM_JOB_ID": "12", "SEMIOVS_RAY_TMP": "/scratch"}) == Path("/scratch/semiovs-ray-12")


def test_a_call_without_space_is_one_error_line_and_exit_2():
    out = subprocess.run([sys.executable, "-m", "slurm.launch", "head", "--resume"], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "SLURM_JOB_ID": "5"})
    assert out.returncode == 2 and out.stderr.startswith("error: no --space given") and "Traceback" not in out.stderr


def test_clean_up_stops_exactly_the_processes_carrying_this_jobs_marker():
    sleep = ["sleep", "60"]
    ours = subprocess.Popen(sleep, env={**os.environ, plan.MARKER: "/tmp/semiovs-ray-test-a"})
    other_job = subprocess.Popen(sleep, env={**os.environ, plan.MARKER: "/tmp/semiovs-ray-test-ab"})
    try:
        assert procs.marked_pids(plan.MARKER, "/tmp/semiovs-ray-test-a") == [ours.pid]
        procs.stop_marked(plan.MARKER, "/tmp/semiovs-ray-test-a", grace_s=5)
        assert ours.wait(timeout=5) is not None and other_job.poll() is None
    finally:
        for p in (ours, other_job):
            p.kill()
            p.wait()


# ---- a worker node, as the head's srun step starts it on every other node ------------------------------------

@pytest.mark.e2e
@pytest.mark.slurm
def test_a_worker_node_joins_the_head_and_leaves_nothing_when_its_step_is_stopped():
    """The worker role, outside Slurm (a one-node Slurm has no second node): it joins a head made from the same
    plan, and SIGTERM (what srun forwards when the head ends the step) leaves none of its processes behind."""
    import signal
    import tempfile

    import ray.util

    from slurm.launch import RAY, alive_nodes

    root = Path(tempfile.mkdtemp(prefix="sw", dir="/tmp"))
    ip, ports = ray.util.get_node_ip_address(), procs.free_ports(5)
    address, dashboard = f"{ip}:{ports[0]}", f"http://{ip}:{ports[1]}"
    head_env = plan.ray_env({**os.environ, "PYTHONUNBUFFERED": "1"}, root / "head", dashboard)
    head = subprocess.Popen(plan.head_command(RAY, root / "head", ip, ports, plan.NodeResources(1, 0, None)),
                            env=head_env, stdout=(root / "head.log").open("w"), stderr=subprocess.STDOUT)
    worker_env = {**{k: v for k, v in head_env.items() if k != plan.MARKER}, "PYTHONPATH": str(ROOT),
                  "SLURM_JOB_ID": f"t{os.getpid()}", "SLURM_CPUS_ON_NODE": "1", "SEMIOVS_RAY_TMP": str(root)}
    worker_dir = root / f"semiovs-ray-t{os.getpid()}"
    worker = None
    try:
        until(lambda: "Ray runtime started." in (root / "head.log").read_text(), 180, "the head to start")
        worker = subprocess.Popen([sys.executable, "-m", "slurm.launch", "worker", "--address", address,
                                   "--dashboard", dashboard], cwd=ROOT, env=worker_env)
        until(lambda: alive_nodes(address, head_env) == 2, 240, "the worker node to join", every_s=4)
        assert procs.marked_pids(plan.MARKER, str(worker_dir))       # its Ray carries the worker's own marker
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
        assert not procs.marked_pids(plan.MARKER, str(worker_dir)) and not worker_dir.exists()
        until(lambda: alive_nodes(address, head_env) == 1, 120, "the head to see the worker node leave", every_s=4)
        assert head.poll() is None                                   # the head is untouched
    finally:
        procs.stop_child(worker, 30)
        procs.stop_child(head, 30)
        procs.stop_marked(plan.MARKER, str(root / "head"), grace_s=5)
        shutil.rmtree(root, ignore_errors=True)


def until(ready, timeout_s: float, what: str, every_s: float = 1.0) -> None:
    """`every_s`: a `ray list` call (alive_nodes) costs ~2 CPU-seconds, so those are asked less often."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert time.monotonic() < deadline, f"waited {timeout_s:.0f} s for {what}"
        time.sleep(every_s)


# ---- a real one-node Slurm --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def local_slurm():
    from tests.slurm import make_slurm, slurm_unavailable

    reason = slurm_unavailable()
    require(reason is None, f"no local Slurm: {reason}")
    slurm = make_slurm()
    try:
        failure = None
        try:
            slurm.start()
        except RuntimeError as err:
            failure = err
        require(failure is None, f"no local Slurm: its daemons did not start here: {failure}")
        yield slurm
    finally:
        slurm.stop()
        shutil.rmtree(slurm.root, ignore_errors=True)


def sets(values: dict) -> list[str]:
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


def wait_for(slurm, job: int, output: Path, text: str, timeout_s: float = 400) -> None:
    """Until the job's output holds `text`; fails at once when the job ended without it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if output.exists() and text in output.read_text(errors="replace"):
            return
        if str(job) not in slurm.queued():
            break
        time.sleep(1)
    log = output.read_text(errors="replace")[-4000:] if output.exists() else "(no output)"
    pytest.fail(f"job {job} never printed {text!r}:\n{log}")


def wait_gone(slurm, job: int, timeout_s: float) -> float:
    """Seconds until the job left the queue (Slurm lists it while its processes are being stopped)."""
    started = time.monotonic()
    while str(job) in slurm.queued():
        assert time.monotonic() - started < timeout_s, f"job {job} still queued after {timeout_s:.0f} s"
        time.sleep(0.5)
    return time.monotonic() - started


def assert_nothing_left(slurm, job: int, temp_dir: Path) -> None:
    """No process of the job (by its SLURM_JOB_ID and this Slurm's SLURM_CONF in the environment, or by its
    Ray temp folder on the command line) and no temp folder outlive it."""
    from tests.slurm import job_pids, pids_referencing

    assert not job_pids(job, slurm.conf), f"processes of job {job} outlived it"
    assert not pids_referencing(str(temp_dir)) and not temp_dir.exists()


def assert_smoke_sweep_in_mlflow(uri: str, name: str) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    parent, = client.search_runs([exp.experiment_id], "tags.role = 'sweep'")
    trials = client.search_runs([exp.experiment_id], "tags.role = 'trial'")
    assert parent.info.status == "FINISHED" and len(trials) == 2
    assert sorted(t.data.params["ood.ratio"] for t in trials) == ["0.0", "0.5"]
    for trial in trials:
        assert trial.data.tags["mlflow.parentRunId"] == parent.info.run_id and trial.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(trial.info.run_id, "val_miou")] == [1, 2]


@pytest.mark.e2e
@pytest.mark.slurm
def test_smoke_sweep_on_slurm_and_a_cancelled_job_leaves_nothing(local_slurm, shared_cache):
    from tests.slurm import pids_referencing

    shared = local_slurm.root / "shared"
    shared.mkdir()
    env = local_slurm.env(PYTHONPATH=str(ROOT), SEMIOVS_RAY_TMP=str(local_slurm.root))

    def submit(name: str, extra: dict) -> int:
        return local_slurm.sbatch(
            ["--cpus-per-task=2", f"--output={shared}/%j.out", "slurm/sweep.sbatch",
             "--space", "search_spaces/smoke.yaml", "--name", name, "--cache", str(shared_cache),
             "--storage", str(shared / "ray_results"), "--tracking-uri", f"sqlite:///{shared / name}.db",
             *sets({**TINY, **extra})], cwd=ROOT, env=env)

    def output(job: int) -> Path:
        return shared / f"{job}.out"

    def temp_dir(job: int) -> Path:
        return local_slurm.root / f"semiovs-ray-{job}"

    a = submit("slurm_smoke", {})
    wait_for(local_slurm, a, output(a), "OOD labels:")           # the labels are in the cache: B reuses them
    b = submit("slurm_cancel", {"train.epochs": 20})              # beside A on the same node: its own ports
    wait_for(local_slurm, b, output(b), "epoch 1: val_miou")           # its trials are training
    subprocess.run(["scancel", str(b)], env=env, check=True)
    seconds = wait_gone(local_slurm, b, timeout_s=90)
    assert local_slurm.job_field(b, "JobState") == "CANCELLED"
    # the launcher, not Slurm's SIGKILL (KillWait=60 in tests/slurm.py), stopped it: it got to say so
    assert seconds < 60, f"job {b} took {seconds:.0f} s to stop"
    assert "SIGTERM received (scancel or the time limit)" in output(b).read_text()
    assert "Ray stopped on this node" in output(b).read_text()
    assert_nothing_left(local_slurm, b, temp_dir(b))
    # B's clean-up stopped B's Ray only. A's Ray is either still up, or gone because A's own sweep had ended
    # (its launcher says so before it stops Ray; a job still listed by squeue may be just finishing).
    a_was_running = bool(pids_referencing(str(temp_dir(a))))
    if not a_was_running:
        assert "the sweep exited with code" in output(a).read_text(), "job A's Ray died with job B's clean-up"

    wait_gone(local_slurm, a, timeout_s=600)
    log = output(a).read_text(errors="replace")
    assert local_slurm.job_field(a, "JobState") == "COMPLETED", log[-4000:]
    assert local_slurm.job_field(a, "ExitCode") == "0:0"
    assert "all 1 node(s) joined" in log and "GCS" in log and ": 1 node(s), 2 CPU(s), 0 GPU(s)" in log
    assert_nothing_left(local_slurm, a, temp_dir(a))
    assert_smoke_sweep_in_mlflow(f"sqlite:///{shared / 'slurm_smoke'}.db", "slurm_smoke")
    print(f"job A was {'still' if a_was_running else 'no longer'} running when job B was cancelled; "
          f"B stopped {seconds:.1f} s after scancel")
