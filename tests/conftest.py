"""Shared fixtures: one real local Ray instance for the whole test run (it costs ~10 s to start)."""
from __future__ import annotations

import os

import pytest

# Tiny `shapes` settings for end-to-end runs: the real pipeline, sized to finish in seconds.
TINY = {
    "data.num_train": 150, "data.num_val": 40, "data.num_test": 40, "data.num_ood": 120, "data.num_source": 120,
    "teacher.fit_steps": 30, "train.epochs": 2, "train.iters_per_epoch": 4, "train.batch_size": 4,
}


# The files that take minutes, longest first (as measured here). pytest-xdist hands out whole files in
# collection order (pyproject: --dist loadfile --no-loadscope-reorder), so these start first, side by side,
# and the many quick files fill in around them.
LONG_FILES = ("test_cluster.py", "test_e2e_sweep.py", "test_tracking_outage.py", "test_slurm.py", "test_s3_storage.py",
              "test_resume.py", "test_labeling.py", "test_integrity.py", "test_disk_full.py", "test_ddp.py")


def under_ci() -> bool:
    """CI=true (as `.ci/run` and most CI services set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require(condition, reason: str) -> None:
    """A test's prerequisite (root, `mount`, `unshare -m`, Slurm, moto, Chromium): nothing when `condition`
    holds; otherwise the test is skipped with `reason`, and under CI=true it FAILS with it instead, so that
    CI is never green with the cluster, disk-full, Slurm, S3 or browser tests skipped. Every skip in the suite
    goes through here."""
    if condition:
        return
    if under_ci():
        pytest.fail(f"prerequisite missing under CI=true (a skip would hide this test): {reason}", pytrace=False)
    pytest.skip(reason)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))   # stable: the rest keep their order


@pytest.fixture(scope="module")
def torch_one_thread():
    """Intra-op threads stall badly when the 2 cores are shared with other processes; 1 thread is fastest."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray cluster with 2 CPUs and the dashboard on (Train's placement-group cleaner needs it)."""
    import ray

    from orchestrator.runtime import init_ray

    os.environ.pop("RAY_ADDRESS", None)
    init_ray(num_cpus=2, quiet=True)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_cluster():
    """A head with 0 CPUs and two worker nodes (w1: 1 CPU, w2: 2 CPUs), each worker in its own mount
    namespace: only the cluster's `shared` folder is common to all (tests/cluster.py)."""
    import shutil
    from pathlib import Path

    from tests.cluster import make_cluster, unshare_available

    reason = unshare_available()
    require(reason is None, f"no multi-node cluster here: {reason}")
    cluster = make_cluster(Path(__file__).resolve().parent.parent)
    try:
        cluster.start_head()
        cluster.add_worker("w1", cpus=1)
        cluster.add_worker("w2", cpus=2)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """One cache for the session, so the tiny benchmark, teacher and labels are made once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def sqlite_uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def crash_after_first_trial(command: list[str], cwd, trial_runs, env: dict | None = None,
                            pause_s: float = 1.0) -> None:
    """Start a sweep driver, and SIGKILL it and the Ray it started (its process group), as a crash would, once
    its first trial has finished and the next one has started. `trial_runs()` lists the sweep's MLflow
    trial runs."""
    import signal
    import subprocess
    import time
    from pathlib import Path

    log_path = Path(cwd) / "driver.log"
    with open(log_path, "w") as log:
        driver = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        deadline = time.time() + 300
        while True:
            runs = trial_runs()
            if sum(r.info.status == "FINISHED" for r in runs) >= 1 and len(runs) >= 2:
                break
            assert driver.poll() is None, log_path.read_text()[-3000:]
            assert time.time() < deadline, "the first trial did not finish in time"
            time.sleep(0.5)
        time.sleep(pause_s)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on loopback (sqlite backend), as a user would run for the UI."""
    import subprocess
    import sys
    import time
    import urllib.request

    from orchestrator.tracking.client import server_env

    folder = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    log = open(folder / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--default-artifact-root", (folder / "artifacts").as_uri(), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=log, stderr=subprocess.STDOUT, env=server_env())
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError(f"mlflow server did not start; see {folder / 'server.log'}")
            time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=30)
