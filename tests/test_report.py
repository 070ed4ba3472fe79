"""`run.py report` on a known set of runs: the grouped table values and the plot files."""
import math

import pytest

from orchestrator import tracking
from orchestrator.report import format_markdown, group_rows, grouping_keys, write_report


def trial(split, ratio, seed, miou, mask=0.5, method="semiovs"):
    return {"params": {"data.split": split, "ood.ratio": ratio, "seed": seed, "train.method": method,
                       "train.epochs": "6"}, "metrics": {"best_val_miou": miou, "mask_ratio": mask}}


TRIALS = [trial("16", "0.0", "0", 30.0), trial("16", "0.0", "1", 34.0),
          trial("16", "0.5", "0", 40.0), trial("16", "0.5", "1", 42.0),
          trial("32", "0.0", "0", 50.0), trial("32", "0.5", "0", 51.0)]


def test_groups_by_the_swept_keys_with_mean_and_std_over_seeds():
    keys = grouping_keys(TRIALS)
    assert keys == ["data.split", "ood.ratio"]          # constant params and seeds are not groups
    groups = group_rows(TRIALS, keys)
    assert [(g.key, g.mean) for g in groups] == [(("16", "0.0"), 32.0), (("16", "0.5"), 41.0),
                                                  (("32", "0.0"), 50.0), (("32", "0.5"), 51.0)]
    assert math.isclose(groups[0].std, 2.8284271, rel_tol=1e-6) and groups[2].std == 0.0
    table = format_markdown(groups, keys)
    assert "| 16 | 0.0 | 2 | 32.00 ± 2.83 |" in table


def test_report_from_a_real_store_writes_table_plots_and_logs_them(sqlite_uri, tmp_path):
    exp = tracking.ensure_experiment(sqlite_uri, "rep")
    parent = tracking.start_parent_run(sqlite_uri, exp, "rep", {}, resume=False)
    client = tracking.client(sqlite_uri)
    for i, t in enumerate(TRIALS + [trial("16", "0.0", "0", 99.0)]):   # a re-run of t0 (after a resume): the newest counts
        run = client.create_run(exp, tags={"role": "trial", "trial_id": f"t{i if i < 6 else 0}",
                                           "mlflow.parentRunId": parent})
        tracking.log_params(sqlite_uri, run.info.run_id, t["params"])
        tracking.log_metrics(sqlite_uri, run.info.run_id, t["metrics"], step=1)
    out = write_report(sqlite_uri, "rep", tmp_path / "out")
    assert out["trials"] == 6 and out["groups"] == 4
    assert "| 16 | 0.0 | 2 | 66.50 ± 45.96 |" in out["table"]
    names = sorted(p.rsplit("/", 1)[-1] for p in out["files"])
    assert names == ["miou_vs_labels.png", "miou_vs_ood_ratio.png", "report.csv", "report.md"]
    assert (tmp_path / "out" / "miou_vs_ood_ratio.png").read_bytes()[:4] == b"\x89PNG"
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert "report/report.md" in logged and "report/miou_vs_ood_ratio.png" in logged


def test_unknown_experiment_is_a_user_error(sqlite_uri):
    from orchestrator.errors import UserError

    with pytest.raises(UserError, match="no MLflow experiment 'nope'"):
        write_report(sqlite_uri, "nope", __import__("pathlib").Path("/tmp/unused"))
