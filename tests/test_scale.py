"""The sweep driver with many trials, killed half-way and resumed: one child run per trial in MLflow, every epoch
and its picture once, every run closed, and `report` sees every trial.

The real driver (`run_sweep`: Ray Tune, the tracking writer and its callback) against a real `mlflow server`, each
driver its own process with its own private Ray, as `run.py sweep` is; only the trainable is a stand-in that
trains nothing (benchmarks/driver_scale.py, set through `driver.TRIAL_FUNCTION`). The figures (driver memory, CPU,
the writer's lag) are recorded, not asserted: speed goals live in benchmarks/driver_scale.py, at 2,000 trials.

Size: each trial costs its own Ray actor process (~2.5 CPU-seconds to start: Python, Ray, Ray Tune), so a trial
takes ~1.5 s on two idle cores and 5-10 s on two busy ones (measured here, load 5-30). More than one MLflow page
(1,000 trials) would take 25 minutes at best, so this runs TRIALS trials; paging is tested on a store of 1,100
runs in tests/test_paging.py.
"""
from __future__ import annotations

import json

import pytest

from benchmarks.driver_scale import killed_and_resumed, mlflow_check, prepare_cache, timed_report

pytestmark = pytest.mark.e2e
TRIALS, EPOCHS, CONCURRENT = 24, 3, 4


def test_a_killed_sweep_of_many_trials_resumes_with_every_epoch_once(mlflow_server, shared_cache, tmp_path,
                                                                       record_property):
    prepare_cache(shared_cache)
    outcome = killed_and_resumed(tmp_path, mlflow_server, shared_cache, TRIALS, EPOCHS, CONCURRENT, "scale")
    assert TRIALS // 2 <= outcome["killed_at_started_trials"] < TRIALS   # killed half-way, not after the end
    resumed = outcome["resumed"]
    assert resumed["trials"] == resumed["done"] == TRIALS and resumed["unlogged"] is None
    held = mlflow_check(mlflow_server, "scale", TRIALS, EPOCHS)
    assert held == {"trials": TRIALS, "runs": TRIALS, "duplicate_runs": 0, "runs_with_every_epoch_once": TRIALS,
                    "runs_checked_for_pictures": TRIALS, "runs_with_one_picture_an_epoch": TRIALS,
                    "finished_runs": TRIALS, "parents": 1, "parents_finished": 1}
    report = timed_report(mlflow_server, "scale", tmp_path / "report")
    assert report["report_trials"] == TRIALS
    figures = json.dumps({**outcome, **report})   # recorded (junit XML, and -s), not asserted
    record_property("figures", figures)
    print(figures)
