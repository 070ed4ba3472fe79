"""More runs than one MLflow page (1,000): `report`, the lookup a resume makes (the sweep's ledger) and `sync`
(the same ledger) see every run, and two runs of one trial are said, not picked silently.

One real sqlite store of 1,100 trial runs, made once for the module with MlflowClient.create_run + log_batch. It
lives in a RAM folder when there is one: measured here, 1,100 runs take ~12 s there and ~60-95 s on the disk
(sqlite syncs every commit). The first runs made are the oldest, so with MLflow's newest-first order they are on
the second page; trial t00000 has two runs, both there.
"""
from __future__ import annotations

import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from orchestrator.core.console import CONTINUATION
from orchestrator.core.selection import ModelPolicy
from orchestrator.tracking import client as tracking
from orchestrator.tracking.reconcile import SweepLedger, runs_by_trial
from orchestrator.tracking.report import write_report
from orchestrator.tracking.stored import StoredTrial

TRIALS = 1100
SWEEP = "big"
LRS = (0.01, 0.02, 0.05, 0.1)
BASE = {"train.epochs": 3}   # the sweep's base config (a real one has ~70 keys)


def config_of(i: int) -> dict:
    return {"train.lr": LRS[i % len(LRS)], "seed": i // len(LRS)}


def trial_id(i: int) -> str:
    return f"t{i:05d}"


def unfolded(printed: str) -> list[str]:
    """The messages in console output: without the time in front, folded lines joined (core.console)."""
    out: list[str] = []
    for line in printed.splitlines():
        line = re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", "", line)
        if line.startswith(CONTINUATION) and out:
            out[-1] += " " + line.strip()
        else:
            out.append(line)
    return out


class BigStore:
    def __init__(self, uri: str, experiment_id: str, parent: str, runs: dict[str, list[str]], seconds: float):
        self.uri, self.experiment_id, self.parent, self.runs, self.seconds = uri, experiment_id, parent, runs, seconds

    def ledger(self, folder: Path, said: list[str]) -> SweepLedger:
        return SweepLedger(self.uri, self.experiment_id, self.parent, SWEEP, BASE, folder,
                           policy=ModelPolicy("none"), warn=said.append)

    def trial_run_count(self) -> int:
        return len(tracking.find_runs(self.uri, self.experiment_id, role=tracking.ROLE_TRIAL))


def add_trial_run(client, experiment_id: str, parent: str, i: int, started_ms: int) -> str:
    """A trial's child run as the sweep makes it (tags, params), holding epochs 1 and 2."""
    from mlflow.entities import Metric, Param, RunTag

    run_id = client.create_run(experiment_id, run_name=trial_id(i), start_time=started_ms).info.run_id
    tags = {"role": tracking.ROLE_TRIAL, "trial_id": trial_id(i), "sweep_name": SWEEP, "mlflow.parentRunId": parent}
    metrics = [Metric("val_miou", 20.0 + epoch + i % 7, 1000 * epoch, epoch) for epoch in (1, 2)] + \
        [Metric("best_val_miou", 22.0 + i % 7, 2000, 2)]
    params = {**BASE, **config_of(i)}
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()], metrics=metrics,
                     tags=[RunTag(k, v) for k, v in tags.items()])   # one batch: half the time of tags at creation
    return run_id


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    ram = Path("/dev/shm")
    folder = Path(tempfile.mkdtemp(prefix="semiovs-paging-", dir=ram)) if ram.is_dir() and \
        shutil.disk_usage(ram).free > 2 ** 30 else tmp_path_factory.mktemp("paging")
    try:
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        experiment_id = tracking.ensure_experiment(uri, SWEEP)
        parent = tracking.start_parent_run(uri, experiment_id, SWEEP, BASE, resume=False)
        client = tracking.client(uri)
        began, first_ms = time.monotonic(), int(time.time() * 1000) - 10 ** 7
        # start times a second apart, in order (made this fast, several runs would share a millisecond)
        runs = {trial_id(i): [add_trial_run(client, experiment_id, parent, i, first_ms + 1000 * i)]
                for i in range(TRIALS)}
        runs[trial_id(0)].insert(0, add_trial_run(client, experiment_id, parent, 0, first_ms + 500))   # page 2 too
        seconds = time.monotonic() - began
        print(f"{TRIALS + 1} runs made in {seconds:.1f} s in {folder}")
        yield BigStore(uri, experiment_id, parent, runs, seconds)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_one_page_would_miss_runs_and_find_runs_reads_them_all(big, record_property):
    record_property("seconds_to_make_1101_runs", round(big.seconds, 1))
    first_page = tracking.client(big.uri).search_runs([big.experiment_id], "tags.role = 'trial'")
    assert len(first_page) == 1000 and first_page.token   # what the lookups read before
    found = tracking.find_runs(big.uri, big.experiment_id, role=tracking.ROLE_TRIAL, sweep_name=SWEEP)
    assert len(found) == TRIALS + 1 and len({r.info.run_id for r in found}) == TRIALS + 1
    assert [r.info.run_id for r in found[-2:]] == big.runs[trial_id(0)]   # the oldest, newest first


def test_report_tabulates_every_trial_and_names_the_duplicate(big, tmp_path, capsys):
    summary = write_report(big.uri, SWEEP, tmp_path / "report")
    assert summary["trials"] == TRIALS and summary["groups"] == len(LRS)
    warning, = [line for line in unfolded(capsys.readouterr().err) if line.startswith("warning:")]
    newer, older = big.runs[trial_id(0)]
    assert f"trial t00000: {newer}, {older}" in warning and "the report reads the newest" in warning
    assert f"mlflow runs delete --run-id {older}" in warning


def test_a_resume_finds_each_trials_run_on_any_page_and_says_which_trial_has_two(big, tmp_path):
    said: list[str] = []
    ledger, before = big.ledger(tmp_path, said), big.trial_run_count()
    for i in (1, 99, 100, TRIALS - 1):   # the second page (the oldest runs), and both ends of the first
        logger = ledger.start(trial_id(i), config_of(i))
        assert logger.run_id == big.runs[trial_id(i)][0] and logger.logged == {1, 2}
    newer, older = big.runs[trial_id(0)]
    assert ledger.start(trial_id(0), config_of(0)).run_id == newer     # the run `report` reads
    assert len(said) == 1 and f"trial t00000: {newer}, {older}" in said[0]
    assert "the sweep writes into the newest" in said[0] and f"mlflow runs delete --run-id {older}" in said[0]
    assert big.trial_run_count() == before   # nothing made: no duplicate from the lookup


def test_sync_writes_only_the_missing_epoch_into_runs_on_the_second_page(big, tmp_path):
    ledger, before = big.ledger(tmp_path, []), big.trial_run_count()
    epochs = {e: {"epoch": e, "val_miou": 30.0 + e, "best_val_miou": 30.0 + e} for e in (1, 2, 3)}
    for i in (2, 3):
        stored = StoredTrial(trial_id(i), config_of(i), "TERMINATED", epochs)
        assert ledger.sync(stored, attempt=0) == 1      # epoch 3; 1 and 2 are in MLflow already
        assert ledger.sync(stored, attempt=1) == 0
        run = tracking.client(big.uri).get_run(big.runs[trial_id(i)][0])
        assert run.info.status == "FINISHED"
        assert sorted(m.step for m in tracking.client(big.uri).get_metric_history(run.info.run_id, "val_miou")) == \
            [1, 2, 3]
    assert ledger.written == 2 and big.trial_run_count() == before


def test_a_try_that_failed_after_making_the_run_is_not_made_twice(big, tmp_path):
    """MLflow refuses the params (a name it does not allow) after the run was made: the next try finds that run by
    its tags instead of making a second one."""
    from mlflow.exceptions import MlflowException

    ledger = big.ledger(tmp_path, [])
    for _ in range(2):   # the second try finds the run and completes it, and MLflow refuses again
        with pytest.raises(MlflowException, match="bad"):
            ledger.logger("fresh", {"bad*name": 1})
    made = tracking.find_runs(big.uri, big.experiment_id, role=tracking.ROLE_TRIAL, trial_id="fresh")
    assert len(made) == 1 and "fresh" not in ledger.loggers


def test_a_run_a_killed_driver_left_without_params_gets_them_when_found(big, tmp_path):
    c = tracking.client(big.uri)
    made = tracking.create_run(big.uri, big.experiment_id, "half", {"role": tracking.ROLE_TRIAL, "trial_id": "half",
                                                                    "sweep_name": SWEEP})
    logger = big.ledger(tmp_path, []).logger("half", {"train.lr": 0.02})
    assert logger.run_id == made and c.get_run(made).data.params == {"train.epochs": "3", "train.lr": "0.02"}
    assert "config.json" in {a.path for a in c.list_artifacts(made)}


def test_two_parent_runs_the_newest_is_resumed_with_one_warning(sqlite_uri):
    exp = tracking.ensure_experiment(sqlite_uri, "twice")
    older = tracking.start_parent_run(sqlite_uri, exp, "twice", {}, resume=False)
    time.sleep(0.01)
    newer = tracking.start_parent_run(sqlite_uri, exp, "twice", {}, resume=False)
    said: list[str] = []
    assert tracking.start_parent_run(sqlite_uri, exp, "twice", {}, resume=True, warn=said.append) == newer
    assert len(said) == 1 and f"the parent run: {newer}, {older}" in said[0]
    assert said[0].endswith(f"Fix: delete them: MLFLOW_TRACKING_URI={sqlite_uri} mlflow runs delete --run-id {older}")


def test_the_duplicate_line_stays_one_line_for_many_trials():
    runs = runs_by_trial([("a", "r1", "RUNNING", 3), ("a", "r0", "FINISHED", 3), ("b", "r2", "FINISHED", 3)])
    assert runs == {"a": [("r1", "RUNNING", 3), ("r0", "FINISHED", 3)], "b": [("r2", "FINISHED", 3)]}
    assert tracking.duplicate_runs_text("u", "s", {"trial a": ["r1"]}, "x") is None
    text = tracking.duplicate_runs_text("u", "s", {f"trial {k}": [f"{k}2", f"{k}1", f"{k}0"] for k in "abcde"},
                                        "the sweep writes into the newest of each")
    assert "\n" not in text and "5 key(s) of sweep 's'" in text and "trial a: a2, a1, a0; trial b:" in text
    assert "; 2 more; newest first)" in text and "the other 10 run(s) are ignored" in text
    assert text.endswith("mlflow runs delete --run-id a1 && mlflow runs delete --run-id a0 && "
                         "mlflow runs delete --run-id b1 (and the 7 others)")
