"""An interrupted sweep resumes: the driver is killed after its first trial finished, `--resume` completes
it, finished trials are not re-run, and MLflow holds exactly one child run per trial."""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import TINY, crash_after_first_trial

ROOT = Path(__file__).parent.parent
pytestmark = pytest.mark.e2e

SPACE = """
name: resumable
fixed: {train.method: supervised, train.num_workers: 0}
parameters:
  train.lr: {grid: [0.01, 0.02, 0.03]}
"""


def trial_runs(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("resumable")
    if exp is None:
        return client, []
    return client, client.search_runs([exp.experiment_id], filter_string="tags.role = 'trial'")


def trial_files(sweep_dir: Path, name: str) -> dict[str, str]:
    """The text of each trial folder's file `name` in the sweep's storage folder: trial folder → text."""
    return {path.parent.name: path.read_text() for path in sorted(sweep_dir.glob(f"*/{name}"))}


def trial_id_of(result_text: str) -> str | None:
    lines = result_text.splitlines()
    return json.loads(lines[0])["trial_id"] if lines else None   # only a killed driver's last line can be torn


def assert_finished_trials_not_rerun(files, at_crash: dict[str, str], finished_ids: set[str]) -> None:
    """Finished trials were not run again, by Tune's own files in the sweep's storage (`files(name)`: trial
    folder → text, as trial_files), not by MLflow, whose epoch ledger drops an epoch it already holds (a
    re-run trial still shows epochs [1, 2] there). A trial that runs again in its folder changes its
    `result.json`: Tune restores it from storage and appends a line per epoch it reports, or, run from
    scratch, writes new lines (new times, new pid). One re-run as a new trial gets a folder of its own, with
    the same `params.json`. `at_crash`: files("result.json") right after the crash."""
    finished = {folder: text for folder, text in at_crash.items() if trial_id_of(text) in finished_ids}
    assert len(finished) == len(finished_ids), (sorted(at_crash), finished_ids)
    after = files("result.json")
    for folder, text in finished.items():
        assert [json.loads(line)["epoch"] for line in text.splitlines()] == [1, 2], (folder, text)
        assert after[folder] == text, f"{folder} was run again by the resume: its result.json changed"
    configs = Counter(json.dumps(json.loads(text), sort_keys=True) for text in files("params.json").values())
    assert set(configs.values()) == {1}, configs           # no config run as two trials


def test_killed_sweep_resumes_without_duplicates(ray_session, shared_cache, tmp_path, sqlite_uri):
    space = tmp_path / "resumable.yaml"
    space.write_text(SPACE)
    sets = [f"--set={k}={v}" for k, v in TINY.items()] + ["--set=train.epochs=2"]
    common = ["--space", str(space), "--storage", str(tmp_path / "runs"), "--cache", str(shared_cache),
              "--tracking-uri", sqlite_uri, "--max-concurrent", "1", *sets]
    crash_after_first_trial([sys.executable, str(ROOT / "run.py"), "sweep", *common], tmp_path,
                            lambda: trial_runs(sqlite_uri)[1], pause_s=2)
    client, before = trial_runs(sqlite_uri)
    finished = [r for r in before if r.info.status == "FINISHED"]
    assert 1 <= len(finished) < 3          # killed part-way: some trials done, not all
    sweep_dir = tmp_path / "runs" / "resumable"
    at_crash = trial_files(sweep_dir, "result.json")

    from orchestrator.sweep.driver import SweepRequest, run_sweep

    overrides = {**TINY, "train.epochs": 2}
    out = run_sweep(SweepRequest(space=str(space), storage=str(tmp_path / "runs"), cache=str(shared_cache),
                                 tracking_uri=sqlite_uri, resume=True, overrides=overrides, quiet=True))
    assert len(out.rows) == 3 and all(r.status == "done" for r in out.rows)
    assert sorted(r.swept["train.lr"] for r in out.rows) == [0.01, 0.02, 0.03]

    client, after = trial_runs(sqlite_uri)
    ids = [r.data.tags["trial_id"] for r in after]
    assert len(after) == 3 and len(set(ids)) == 3                       # no duplicates, none missing
    assert all(r.info.status == "FINISHED" for r in after)
    # finished before the kill: not re-run (Tune's own result files; MLflow's history alone cannot tell)
    assert_finished_trials_not_rerun(lambda name: trial_files(sweep_dir, name), at_crash,
                                     {r.data.tags["trial_id"] for r in finished})
    assert len(trial_files(sweep_dir, "result.json")) == 3
    for run in finished:  # and its MLflow history untouched
        history = client.get_metric_history(run.info.run_id, "val_miou")
        assert [m.step for m in history] == [1, 2]
    for run in after:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_miou")]
        assert sorted(set(steps)) == [1, 2]
    parents = client.search_runs([after[0].info.experiment_id], filter_string="tags.role = 'sweep'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
