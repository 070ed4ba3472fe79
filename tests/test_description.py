"""The sweep's results table as the description of its run and its experiment, in a real sqlite MLflow store: a
table of any length fits MLflow's limits and says where the rest is."""
from __future__ import annotations

from orchestrator.sweep.results import TrialRow, format_markdown
from orchestrator.tracking import client as mlflow_runs


def test_a_long_results_table_is_cut_to_mlflows_limit_and_says_where_the_rest_is(sqlite_uri):
    rows = [TrialRow(f"abcde_{i:05d}", {"seed": i, "train.method": "semiovs"}, 50 + i % 7, 6, "done", 60.0)
            for i in range(600)]
    table = format_markdown(rows, ["seed", "train.method"], "val_miou")
    assert len(table) > 20_000                      # more than MLflow takes for an experiment's tag
    experiment_id = mlflow_runs.ensure_experiment(sqlite_uri, "long")
    run_id = mlflow_runs.create_run(sqlite_uri, experiment_id, "sweep", {"role": mlflow_runs.ROLE_SWEEP})
    mlflow_runs.describe(sqlite_uri, run_id, table, "summary/results.md")
    c = mlflow_runs.client(sqlite_uri)
    shown = c.get_run(run_id).data.tags[mlflow_runs.DESCRIPTION_TAG]
    assert shown == c.get_experiment(experiment_id).tags[mlflow_runs.DESCRIPTION_TAG]
    assert len(shown) <= mlflow_runs.DESCRIPTION_LIMIT
    kept = shown.split("\n\n… ")[0].splitlines()
    assert kept == table.splitlines()[:len(kept)] and len(kept) > 50     # whole lines from the top
    left = len(table.splitlines()) - len(kept)
    assert shown.endswith(f"… {left} more line(s): summary/results.md")


def test_a_short_table_is_the_description_as_it_is(sqlite_uri):
    table = format_markdown([TrialRow("t1", {"ood.ratio": 0.5}, 61.2, 6, "done", 60.0)], ["ood.ratio"], "val_miou")
    experiment_id = mlflow_runs.ensure_experiment(sqlite_uri, "short")
    run_id = mlflow_runs.create_run(sqlite_uri, experiment_id, "sweep", {"role": mlflow_runs.ROLE_SWEEP})
    mlflow_runs.describe(sqlite_uri, run_id, table, "summary/results.md")
    assert mlflow_runs.client(sqlite_uri).get_run(run_id).data.tags[mlflow_runs.DESCRIPTION_TAG] == table
