"""The background MLflow writer, its retry policy and the reconcile from Tune's storage (no Ray, no server)."""
from __future__ import annotations

import json
import threading
import time

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE

from orchestrator.tracking import retry
from orchestrator.tracking.reconcile import SweepLedger, missing_epochs, sync_command, unlogged, unlogged_line
from orchestrator.tracking.stored import StoredTrial, epochs_from_lines
from orchestrator.tracking.writer import TrackingWriter


def test_backoff_doubles_up_to_its_cap():
    assert [retry.backoff_s(a, base=0.5, cap=4.0) for a in range(0, 7)] == [0.0, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


@pytest.mark.parametrize("exc, transient", [
    (ConnectionRefusedError("refused"), True),
    (MlflowException("API request to http://127.0.0.1:1/api failed with exception ...", INTERNAL_ERROR), True),
    (MlflowException("server restarting", TEMPORARILY_UNAVAILABLE), True),
    (MlflowException("bad metric name", INVALID_PARAMETER_VALUE), False),
    (ValueError("a bug"), False),
])
def test_only_failures_that_waiting_can_fix_are_retried(exc, transient):
    assert retry.is_transient(exc) is transient


def test_a_real_unreachable_server_is_a_transient_failure(monkeypatch):
    """What MLflow raises when nothing listens on the port (quickly, with our HTTP settings)."""
    from mlflow.tracking import MlflowClient

    from tests.conftest import _free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    began = time.monotonic()
    with pytest.raises(Exception) as info:
        MlflowClient(f"http://127.0.0.1:{_free_port()}").get_experiment_by_name("x")
    assert retry.is_transient(info.value) and time.monotonic() - began < 10


class Flaky:
    """A write that fails `failures` times with `exc`, then records its attempts."""

    def __init__(self, failures: int, exc: Exception):
        self.failures, self.exc, self.attempts = failures, exc, []

    def __call__(self, attempt: int) -> None:
        self.attempts.append(attempt)
        if len(self.attempts) <= self.failures:
            raise self.exc


def test_writer_retries_in_order_without_blocking_the_caller():
    writer = TrackingWriter(backoff=lambda attempt: 0.01)
    order, gate = [], threading.Event()
    writer.submit("slow", lambda attempt: (gate.wait(5), order.append("slow")))
    began = time.monotonic()
    first = Flaky(3, ConnectionRefusedError("down"))
    writer.submit("flaky", lambda attempt: (first(attempt), order.append("flaky")))
    writer.submit("after", lambda attempt: order.append("after"))
    assert time.monotonic() - began < 0.1          # submit returns at once, whatever the writer is doing
    gate.set()
    assert writer.flush(5)
    assert order == ["slow", "flaky", "after"]     # a retried write holds back the ones after it
    assert first.attempts == [0, 1, 2, 3] and writer.retries == 3
    assert writer.close(0) == [] and writer.dropped == []


def test_writer_drops_a_write_that_cannot_succeed_and_goes_on():
    writer = TrackingWriter(backoff=lambda attempt: 0.01)
    done = []
    writer.submit("bad", Flaky(1, MlflowException("bad value", INVALID_PARAMETER_VALUE)))
    writer.submit("good", lambda attempt: done.append(attempt))
    assert writer.flush(5) and done == [0]
    assert [label for label, _ in writer.dropped] == ["bad"]


def test_close_gives_up_after_the_grace_period_and_says_what_is_left():
    writer = TrackingWriter(backoff=lambda attempt: 0.05)
    down = Flaky(10 ** 6, ConnectionRefusedError("Connection refused"))
    writer.submit("epoch 1 of trial a", down)
    writer.submit("the sweep summary", lambda attempt: None)
    began = time.monotonic()
    assert writer.close(0.3) == ["epoch 1 of trial a", "the sweep summary"]
    assert 0.3 <= time.monotonic() - began < 2
    assert "Connection refused" in writer.last_error


def test_stored_results_keep_each_epochs_first_report_and_skip_a_torn_line():
    lines = [json.dumps({"epoch": 1, "val_miou": 1.0}), json.dumps({"epoch": 2, "val_miou": 2.0}),
             json.dumps({"epoch": 2, "val_miou": 9.0}),          # re-reported after a restart from epoch 1
             json.dumps({"training_iteration": 3, "val_miou": 3.0}), '{"epoch": 4, "val_mi']
    epochs = epochs_from_lines(lines)
    assert sorted(epochs) == [1, 2, 3] and epochs[2]["val_miou"] == 2.0


def test_unlogged_epochs_and_the_one_line_about_them():
    trials = [StoredTrial("a", {}, "TERMINATED", {1: {}, 2: {}, 3: {}}), StoredTrial("b", {}, "ERROR", {1: {}})]
    assert missing_epochs({1: {}, 2: {}, 3: {}}, {1, 3}) == [2]
    gaps = unlogged(trials, {"a": {1}, "b": {1}})
    assert gaps == {"a": [2, 3]}
    line = unlogged_line(gaps, ["the sweep summary"], "http://127.0.0.1:5000", "ConnectionError: refused",
                         sync_command("my sweep", "/runs", "http://127.0.0.1:5000"))
    assert line == ("warning: MLflow at http://127.0.0.1:5000 is missing 2 epoch(s) of 1 trial(s) and the sweep "
                    "summary (ConnectionError: refused); Tune's storage holds them. Write them when the server is "
                    "back: python run.py sync --name 'my sweep' --storage /runs --tracking-uri http://127.0.0.1:5000")
    assert unlogged_line({}, [], "u", "", "cmd") is None


def test_reconcile_writes_only_the_epochs_mlflow_lacks(sqlite_uri, tmp_path):
    """Epoch 1 went in live; the reconcile adds 2 and 3 once, closes the run, and a second pass adds nothing."""
    from orchestrator.tracking import client as tracking

    exp = tracking.ensure_experiment(sqlite_uri, "rec")
    parent = tracking.start_parent_run(sqlite_uri, exp, "rec", {}, resume=False)
    ledger = SweepLedger(sqlite_uri, exp, parent, "rec", {"train.epochs": 3}, tmp_path)
    result = lambda e: {"epoch": e, "val_miou": float(e), "loss": 1.0 / e}
    assert ledger.epoch("t1", {"train.lr": 0.1}, result(1), attempt=0)
    stored = StoredTrial("t1", {"train.lr": 0.1}, "TERMINATED", {e: result(e) for e in (1, 2, 3)})
    restarted = SweepLedger(sqlite_uri, exp, parent, "rec", {"train.epochs": 3}, tmp_path)  # e.g. `run.py sync`
    assert restarted.sync(stored, attempt=0) == 2
    assert restarted.sync(stored, attempt=1) == 0
    run = tracking.find_runs(sqlite_uri, exp, role="trial", trial_id="t1")
    assert len(run) == 1 and run[0].info.status == "FINISHED" and run[0].data.params["train.lr"] == "0.1"
    history = tracking.client(sqlite_uri).get_metric_history(run[0].info.run_id, "loss")
    assert [m.step for m in history] == [1, 2, 3]
