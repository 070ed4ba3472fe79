"""The tracking server goes away during a sweep: nothing is lost and training does not wait for it.

Two sweeps against a real `mlflow server` on loopback, restarted on the same sqlite store:
  1. killed after the first trial's first epoch and back 15 s later: the sweep exits normally, and MLflow
     holds every epoch of every trial once, one child run per trial, the parent run FINISHED;
  2. killed after the trial's first epoch and kept down until the sweep ends: the sweep still finishes its
     trial and returns one line saying what MLflow lacks and the sync command; `run.py sync` afterwards
     writes every epoch (and a second sync writes nothing).
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from orchestrator.tracking.client import server_env
from tests.conftest import TINY, _free_port

pytestmark = pytest.mark.e2e
OUTAGE_S = 15

SPACE = """
name: outage
fixed: {train.method: supervised, train.num_workers: 0}
parameters:
  train.lr: {grid: [0.01, 0.02]}
"""


class Server:
    """A killable `mlflow server` on 127.0.0.1; restarted on the same port and sqlite store."""

    def __init__(self, folder: Path):
        self.folder, self.port, self.proc = folder, _free_port(), None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.folder / "server.log", "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
             "--default-artifact-root", (self.folder / "artifacts").as_uri(), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"], stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env=server_env())
        deadline = time.time() + 300   # an mlflow server takes 5 s to start here when idle, 2 min under load
        while True:
            try:
                urllib.request.urlopen(self.url + "/health", timeout=2)
                return
            except OSError:
                assert self.proc.poll() is None and time.time() < deadline, (self.folder / "server.log").read_text()
                time.sleep(0.3)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            import signal

            os.killpg(self.proc.pid, signal.SIGKILL)   # the server and its uvicorn worker, as a crash would
            self.proc.wait()


def stored_epochs(sweep_dir: Path) -> list[int]:
    """Epochs per trial folder in Tune's storage, in the order the trials were made."""
    out = []
    for trial in sorted(sweep_dir.glob("run_trial_*")):
        result = trial / "result.json"
        out.append(len(result.read_text().splitlines()) if result.is_file() else 0)
    return out


def outage_after_first_epoch(server: Server, sweep_dir: Path, events: dict, back_after: float | None) -> None:
    """Kill the server once the first trial has an epoch in Tune's storage; restart it `back_after` s later."""
    while stored_epochs(sweep_dir)[:1] < [1]:
        time.sleep(0.2)
    server.kill()
    events["killed"] = time.time()
    if back_after is not None:
        time.sleep(back_after)
        server.start()
        events["back"] = time.time()


def sweep_with_outage(name: str, trials: int, epochs: int, server: Server, tmp_path: Path, shared_cache: Path,
                      back_after: float | None):
    from orchestrator.sweep.driver import SweepRequest, run_sweep

    space = tmp_path / f"{name}.yaml"
    space.write_text(SPACE.replace("outage", name) if trials == 2 else SPACE.replace("outage", name).replace(
        "[0.01, 0.02]", "[0.01]"))
    events: dict = {}
    killer = threading.Thread(target=outage_after_first_epoch, daemon=True,
                              args=(server, tmp_path / "runs" / name, events, back_after))
    killer.start()
    began = time.time()
    out = run_sweep(SweepRequest(space=str(space), name=name, storage=str(tmp_path / "runs"), cache=str(shared_cache),
                                 tracking_uri=server.url, max_concurrent=1, quiet=True,
                                 overrides={**TINY, "train.epochs": epochs}))
    events["seconds"] = time.time() - began
    killer.join(timeout=OUTAGE_S + 120)
    assert "killed" in events and [r.status for r in out.rows] == ["done"] * trials
    return out, events


def runs_of(server: Server, name: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(server.url)
    exp = client.get_experiment_by_name(name).experiment_id
    trials = client.search_runs([exp], filter_string="tags.role = 'trial'")
    steps = {r.data.tags["trial_id"]: [m.step for m in client.get_metric_history(r.info.run_id, "val_miou")]
             for r in trials}
    parents = client.search_runs([exp], filter_string="tags.role = 'sweep'")
    return client, trials, steps, parents


def assert_one_model_per_trial(server: Server, trials, parent) -> None:
    """Each trial's best model is in MLflow once, READY, and the parent run names the best of them."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(server.url)
    models = client.search_logged_models([parent.info.experiment_id])
    assert sorted(m.source_run_id for m in models) == sorted(r.info.run_id for r in trials)
    assert all(str(m.status) == "READY" for m in models)
    assert client.get_run(parent.info.run_id).data.tags["best_model_id"] in {m.model_id for m in models}


def test_sweeps_survive_tracking_outages_and_sync_fills_the_rest(ray_session, shared_cache, tmp_path, monkeypatch,
                                                                 capsys):
    from orchestrator.cli import main

    # the sweep's own MLflow HTTP settings, set here so that they are undone after the test
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    server = Server(tmp_path)
    server.start()
    try:
        # 1. back after 15 s (a slow server start here can take long: the sweep's end waits for it)
        monkeypatch.setenv("SEMIOVS_MLFLOW_GRACE_S", "180")
        out, events = sweep_with_outage("restart", 2, 2, server, tmp_path, shared_cache, back_after=OUTAGE_S)
        print(f"sweep with a {OUTAGE_S} s outage: {events['seconds']:.0f} s; server back "
              f"{events['back'] - events['killed']:.0f} s after the kill", file=sys.stderr)
        assert out.unlogged is None
        _, trials, steps, parents = runs_of(server, "restart")
        assert len(trials) == 2 and len(steps) == 2                       # one child run per trial
        assert all(s == [1, 2] for s in steps.values()), steps            # every epoch, exactly once
        assert all(r.info.status == "FINISHED" for r in trials)
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        assert_one_model_per_trial(server, trials, parents[0])

        # 2. down until the sweep has ended
        monkeypatch.setenv("SEMIOVS_MLFLOW_GRACE_S", "2")
        out, _ = sweep_with_outage("down", 1, 3, server, tmp_path, shared_cache, back_after=None)
        assert out.unlogged is not None and "\n" not in out.unlogged, out.unlogged
        assert "epoch(s) of 1 trial(s) and the sweep summary" in out.unlogged
        command = out.unlogged.split("Write them when the server is back: ")[1]
        assert command.startswith("python run.py sync --name down ")
        server.start()
        _, _, steps, _ = runs_of(server, "down")
        # the epochs logged before the kill: a strict prefix (under load the trial can finish epoch 2 between
        # Tune storing epoch 1 and the kill)
        assert len(steps) == 1 and list(steps.values())[0] in ([], [1], [1, 2]), steps
        assert main(command.split()[2:]) == 0                             # python run.py sync ...
        assert "1 trial(s), 3 epoch(s) in Tune's storage" in capsys.readouterr().out
        client, trials, steps, parents = runs_of(server, "down")
        assert list(steps.values()) == [[1, 2, 3]] and trials[0].info.status == "FINISHED"
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        assert {a.path for a in client.list_artifacts(parents[0].info.run_id, "summary")} == \
            {"summary/results.md", "summary/results.csv"}
        assert_one_model_per_trial(server, trials, parents[0])            # the sync logged the trial's model
        assert main(command.split()[2:]) == 0                             # again: nothing left to write
        assert "wrote 0 epoch(s)" in capsys.readouterr().out
        assert_one_model_per_trial(server, trials, parents[0])
    finally:
        server.kill()
