"""Cloud storage: Tune/Train state and checkpoints in an S3 bucket (`--storage s3://…`), `--resume` from it, and
MLflow artifacts in the same store through `mlflow server --artifacts-destination s3://…` (proxied: the sweep
sends artifacts to the tracking server, never to S3). The store is a real S3-compatible server (moto) on loopback.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from orchestrator.tracking.client import server_env
from tests.conftest import TINY, _free_port, crash_after_first_trial, require
from tests.test_resume import assert_finished_trials_not_rerun

ROOT = Path(__file__).parent.parent
BUCKET = "semiovs-test"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _start(cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """A server in its own process group (mlflow server forks uvicorn and job runners: all stop together)."""
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _wait_for(url: str, proc: subprocess.Popen, log: Path, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                _stop(proc)
                raise RuntimeError(f"{what} did not start; see {log}")
            time.sleep(0.3)


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 with one bucket; yields its endpoint URL."""
    try:
        import moto.server  # noqa: F401  (the server's extra, Flask and all, imports)
        missing = None
    except ImportError as err:
        missing = err
    require(missing is None, f"moto[server] is not installed ({missing}): it is a test dependency "
                             f"(pip install -e '.[dev]')")
    import boto3

    folder = tmp_path_factory.mktemp("moto")
    port = _free_port()
    log = folder / "moto.log"
    proc = _start([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], log)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_for(endpoint + "/moto-api/", proc, log, "the moto S3 server")
        boto3.client("s3", endpoint_url=endpoint, **_boto_credentials()).create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        _stop(proc)


def _boto_credentials() -> dict:
    return {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}


def _keys(endpoint: str, prefix: str) -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, **_boto_credentials())
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def _trial_files(endpoint: str, sweep_prefix: str, name: str) -> dict[str, str]:
    """The text of each trial folder's file `name` under `sweep_prefix` in the bucket: trial folder → text
    (tests/test_resume.py's trial_files, for a bucket)."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, **_boto_credentials())
    out = {}
    for key in _keys(endpoint, sweep_prefix):
        folder, _, file = key.removeprefix(sweep_prefix).partition("/")
        if file == name:
            out[folder] = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()
    return dict(sorted(out.items()))


def test_storage_files_go_to_the_uri_with_its_endpoint_in_the_query(s3_endpoint, monkeypatch):
    from orchestrator.core import storage

    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    host = s3_endpoint.removeprefix("http://")
    root = storage.resolve_storage(f"s3://{BUCKET}/unit?endpoint_override={host}&scheme=http", Path("/unused"))
    state = storage.join(root, "sweep-a", "sweep.json")
    assert state == f"s3://{BUCKET}/unit/sweep-a/sweep.json?endpoint_override={host}&scheme=http"
    assert storage.read_text(state) is None
    storage.write_text(state, '{"name": "sweep-a"}')
    assert storage.read_text(state) == '{"name": "sweep-a"}'
    assert _keys(s3_endpoint, "unit/") == ["unit/sweep-a/sweep.json"]
    storage.delete_file(state)
    assert storage.read_text(state) is None


@pytest.mark.parametrize("name", ["..", "a/b", "x?y"])
def test_a_name_cannot_leave_its_storage_uri(name):
    from orchestrator.core import storage
    from orchestrator.core.errors import UserError

    with pytest.raises(UserError, match="cannot be a folder name"):
        storage.join("s3://bucket/prefix", name)


@pytest.mark.parametrize("flag, value, expected", [
    ("--cache", "s3://bucket/cache", "the cache must be a folder, not a URI"),
    ("--storage", "nosuchscheme://bucket/x", "cannot be opened"),
])
def test_storage_uris_the_tool_cannot_use_are_refused_with_the_fix(tmp_path, flag, value, expected):
    out = subprocess.run([sys.executable, str(ROOT / "run.py"), "sweep", "--space", "search_spaces/smoke.yaml",
                          flag, value], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert expected in out.stderr and "Fix:" in out.stderr and "Traceback" not in out.stderr


SPACE = """
name: in_a_bucket
fixed: {train.method: supervised, train.num_workers: 0}
parameters:
  train.lr: {grid: [0.01, 0.02]}
"""


@pytest.fixture
def mlflow_with_s3_artifacts(s3_endpoint, tmp_path):
    """`mlflow server` on loopback whose artifacts go to the bucket (only the server holds S3 credentials)."""
    port = _free_port()
    log = tmp_path / "mlflow.log"
    env = server_env({**os.environ, **CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint})
    proc = _start([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                   "--artifacts-destination", f"s3://{BUCKET}/mlflow", "--host", "127.0.0.1", "--port", str(port),
                   "--workers", "1"], log, env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(url + "/health", proc, log, "mlflow server")
        yield url
    finally:
        _stop(proc)


def _trial_runs(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("in_a_bucket")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.role = 'trial'") if exp else []
    return client, runs


@pytest.mark.e2e
def test_a_sweep_in_a_bucket_resumes_from_it_and_its_artifacts_land_there(
        s3_endpoint, mlflow_with_s3_artifacts, shared_cache, tmp_path):
    uri = mlflow_with_s3_artifacts
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    sets = [f"--set={k}={v}" for k, v in TINY.items()] + ["--set=train.epochs=2"]
    command = [sys.executable, str(ROOT / "run.py"), "sweep", "--space", str(space), "--storage",
               f"s3://{BUCKET}/sweeps", "--cache", str(shared_cache), "--tracking-uri", uri,
               "--max-concurrent", "1", *sets]
    env = {**os.environ, **CREDENTIALS, "AWS_ENDPOINT_URL": s3_endpoint}
    env.pop("RAY_ADDRESS", None)
    crash_after_first_trial(command, tmp_path, lambda: _trial_runs(uri)[1], env)
    assert _keys(s3_endpoint, "sweeps/in_a_bucket/sweep.json")          # the state is in the bucket only
    assert not list(tmp_path.glob("**/sweep.json"))
    finished = {r.data.tags["trial_id"] for r in _trial_runs(uri)[1] if r.info.status == "FINISHED"}
    assert finished                                                      # the first trial's end is stored
    files = lambda name: _trial_files(s3_endpoint, "sweeps/in_a_bucket/", name)   # noqa: E731
    at_crash = files("result.json")

    resumed = subprocess.run([*command, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    assert "resuming sweep 'in_a_bucket' from s3://" in resumed.stdout

    client, runs = _trial_runs(uri)
    assert len(runs) == 2 and len({r.data.tags["trial_id"] for r in runs}) == 2
    assert all(r.info.status == "FINISHED" for r in runs)
    # the finished trial was not run again: its result.json in the bucket is as the crash left it
    assert_finished_trials_not_rerun(files, at_crash, finished)
    for run in runs:   # every epoch once: none lost with the driver, none repeated by the resume
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_miou")] == [1, 2]
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")   # proxied by the server
    checkpoints = [k for k in _keys(s3_endpoint, "sweeps/in_a_bucket/") if k.endswith("/model.pt")]
    assert checkpoints                                                   # Train wrote them to the bucket
    pictures = [k for k in _keys(s3_endpoint, "mlflow/") if k.endswith("_epoch_002.png")]
    assert len(pictures) >= 2                                            # MLflow's artifacts, in the bucket
