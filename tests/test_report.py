"""`run.py report` on a known set of runs: the grouped table values and the plot files."""
import math

import pytest

from orchestrator.core.errors import UserError

from orchestrator.tracking import client as tracking
from orchestrator.tracking.report import format_markdown, group_rows, grouping_keys, write_report


def trial(split, ratio, seed, miou, mask=0.5, method="semiovs"):
    return {"params": {"data.split": split, "ood.ratio": ratio, "seed": seed, "train.method": method,
                       "train.epochs": "6"}, "metrics": {"best_val_miou": miou, "mask_ratio": mask}}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow sqlite store for this module's tests (each uses its own experiment names): creating a store
    runs MLflow's schema migrations, the slowest part of these tests."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


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


def test_report_from_a_real_store_writes_table_plots_and_logs_them(store, tmp_path):
    exp = tracking.ensure_experiment(store, "rep")
    parent = tracking.start_parent_run(store, exp, "rep", {}, resume=False)
    client = tracking.client(store)
    for i, t in enumerate(TRIALS + [trial("16", "0.0", "0", 99.0)]):   # a re-run of t0 (after a resume): the newest counts
        run = client.create_run(exp, tags={"role": "trial", "trial_id": f"t{i if i < 6 else 0}",
                                           "mlflow.parentRunId": parent})
        tracking.log_params(store, run.info.run_id, t["params"])
        tracking.log_metrics(store, run.info.run_id, t["metrics"], step=1)
    out = write_report(store, "rep", tmp_path / "out")
    assert out["trials"] == 6 and out["groups"] == 4
    assert "| 16 | 0.0 | 2 | 66.50 ± 45.96 |" in out["table"]
    names = sorted(p.rsplit("/", 1)[-1] for p in out["files"])
    assert names == ["miou_vs_labels.png", "miou_vs_ood_ratio.png", "report.csv", "report.md"]
    assert (tmp_path / "out" / "miou_vs_ood_ratio.png").read_bytes()[:4] == b"\x89PNG"
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert "report/report.md" in logged and "report/miou_vs_ood_ratio.png" in logged


def test_unknown_experiment_is_a_user_error(store):
    from orchestrator.core.errors import UserError

    with pytest.raises(UserError, match="no MLflow experiment 'nope'"):
        write_report(store, "nope", __import__("pathlib").Path("/tmp/unused"))


def run_of(method, split, seed, miou, source="teacher", ring=None):
    metrics = {"best_val_miou": miou}
    if ring is not None:
        metrics.update({"val_iou.background": 99.0, "val_iou.ring": ring})
    return {"params": {"train.method": method, "data.split": split, "seed": seed, "ood.label_source": source},
            "metrics": metrics}


# Two sweeps merged: `methods` (label_source fixed at teacher) and `naive_ood` (semiovs with self labels).
MERGED = [run_of("supervised", "8", "0", 50.0, ring=10.0), run_of("supervised", "8", "1", 54.0, ring=20.0),
          run_of("supervised", "16", "0", 60.0), run_of("semiovs", "8", "0", 58.0), run_of("semiovs", "16", "0", 66.0),
          run_of("semiovs", "8", "0", 40.0, source="self"), run_of("supervised", "16", "1", 62.0, source="self")]


def test_ood_keys_are_inert_for_methods_without_an_ood_stream():
    keys = grouping_keys(MERGED)
    assert keys == ["data.split", "ood.label_source", "train.method"]
    # one sweep alone: label_source is teacher wherever it matters, so it is no axis of its table
    assert grouping_keys(MERGED[:5]) == ["data.split", "train.method"]
    # a key only newer runs record (a config key added since) is no axis either
    newer = [{**t, "params": {**t["params"], "train.prevmatch": "False"}} for t in MERGED[5:]]
    assert grouping_keys(MERGED[:5] + newer) == keys
    groups = group_rows(MERGED, keys)
    # both supervised runs at 16 labels group together although one sweep said self and the other teacher
    sup16 = [g for g in groups if g.key == ("16", "–", "supervised")]
    assert len(sup16) == 1 and sup16[0].values == [60.0, 62.0]


def test_paper_layout_has_methods_as_rows_and_splits_as_columns():
    from orchestrator.tracking.report import format_by_split

    keys = grouping_keys(MERGED)
    table = format_by_split(group_rows(MERGED, keys), keys)
    lines = table.splitlines()
    assert lines[0] == "| ood.label_source | train.method | 8 labels | 16 labels |"
    assert "| – | supervised | 52.0 ± 2.8 | 61.0 ± 1.4 |" in lines
    assert "| self | semiovs | 40.0 ± 0.0 |  |" in lines            # a split the group never ran stays empty
    assert "| teacher | semiovs | 58.0 ± 0.0 | 66.0 ± 0.0 |" in lines


def test_per_class_table_averages_the_last_epoch_iou_over_seeds():
    from orchestrator.tracking.report import format_per_class

    keys = grouping_keys(MERGED)
    table = format_per_class(group_rows(MERGED, keys), keys)
    assert table.splitlines()[0] == "| data.split | ood.label_source | train.method | background | ring |"
    assert "| 8 | – | supervised | 99.0 ± 0.0 | 15.0 ± 7.1 |" in table


def test_report_merges_experiments_and_logs_to_each_parent(store, tmp_path):
    client = tracking.client(store)
    parents = {}
    for name, runs in (("m", MERGED[:5]), ("naive", MERGED[5:])):
        exp = tracking.ensure_experiment(store, name)
        parents[name] = tracking.start_parent_run(store, exp, name, {}, resume=False)
        for i, t in enumerate(runs):
            run = client.create_run(exp, tags={"role": "trial", "trial_id": f"t{i}", "mlflow.parentRunId": parents[name]})
            tracking.log_params(store, run.info.run_id, t["params"])
            tracking.log_metrics(store, run.info.run_id, t["metrics"], step=6)
    out = write_report(store, ["m", "naive"], tmp_path / "both")
    assert out["trials"] == 7 and out["experiment"] == "m + naive"
    assert "| self | semiovs | 40.0 ± 0.0 |  |" in out["table"]
    for parent in parents.values():
        assert "report/report.md" in {a.path for a in client.list_artifacts(parent, "report")}


# UniMatch, SemiOVS and supervised on the same three seeds: the seed spread (±5) dwarfs SemiOVS's +2, but the
# paired differences (2, 2.5, 2) are steady, so the interval excludes zero.
PAIRED = [run_of(m, "8", str(s), v) for m, vals in (("unimatch", (50.0, 60.0, 55.0)), ("semiovs", (52.0, 62.5, 57.0)),
                                                     ("supervised", (51.0, 58.0, 50.0)))
          for s, v in enumerate(vals)] + [run_of("unimatch", "16", "0", 70.0), run_of("semiovs", "16", "0", 69.0)]


def test_paired_gain_over_a_baseline_in_every_table():
    from orchestrator.tracking.report import Comparison, format_csv, paired_gains, report_markdown
    from orchestrator.tracking.scoring import parse_score

    keys = grouping_keys(PAIRED)
    groups = group_rows(PAIRED, keys)
    baseline = {"train.method": "unimatch"}
    cmp = Comparison(parse_score("best"), baseline, paired_gains(groups, keys, baseline))
    text = report_markdown("t", groups, keys, cmp)
    assert "| 8 | semiovs | 3 | 57.17 ± 5.25 | +2.2 [+1.4, +2.9] 3/3 |" in text      # mean ± std stays
    assert "| 8 | supervised | 3 | 53.00 ± 4.36 | -2.0 [-9.5, +5.5] 1/3 |" in text
    assert "| 8 | unimatch | 3 | 55.00 ± 5.00 | baseline |" in text
    assert "Score: best-epoch val mIoU" in text
    # the paper's layout, as gains: one pair at 16 labels has no interval
    assert "| semiovs | +2.2 [+1.4, +2.9] 3/3 | -1.0 [n=1] 0/1 |" in text
    csv_rows = format_csv(groups, keys, cmp).splitlines()
    assert csv_rows[0] == ("data.split,train.method,runs,best_val_miou_mean,best_val_miou_std,baseline,gain_mean,"
                           "gain_ci_low,gain_ci_high,gain_pairs,gain_seeds_gained")
    assert csv_rows[1] == "8,semiovs,3,57.1667,5.252,,2.1667,1.4496,2.8838,3,3"
    assert csv_rows[3] == "8,unimatch,3,55.0,5.0,train.method=unimatch,,,,,"


def test_report_with_baseline_and_last_k_score_from_a_real_store(store, tmp_path):
    """Per-epoch val_miou in MLflow → last-2 score → paired gains in the table, on the parent run, as a plot."""
    exp = tracking.ensure_experiment(store, "pairs")
    parent = tracking.start_parent_run(store, exp, "pairs", {}, resume=False)
    client = tracking.client(store)
    curves = {("unimatch", "0"): [40.0, 50.0, 52.0], ("unimatch", "1"): [30.0, 60.0, 58.0],
              ("semiovs", "0"): [45.0, 54.0, 53.0], ("semiovs", "1"): [35.0, 62.0, 61.0]}
    for i, ((method, seed), curve) in enumerate(curves.items()):
        run_id = client.create_run(exp, tags={"role": "trial", "trial_id": f"t{i}"}).info.run_id
        tracking.log_params(store, run_id, {"train.method": method, "seed": seed, "data.split": "8"})
        for epoch, value in enumerate(curve, start=1):
            tracking.log_metrics(store, run_id, {"val_miou": value, "best_val_miou": max(curve[:epoch])}, epoch)
    out = write_report(store, "pairs", tmp_path / "r", baseline=["train.method=unimatch"], score="last2")
    # last-2 means: unimatch 51, 59; semiovs 53.5, 61.5 → differences 2.5, 2.5
    assert "| semiovs | 2 | 57.50 ± 5.66 | +2.5 [+2.5, +2.5] 2/2 |" in out["table"]
    assert "Score: val mIoU (%) averaged over the last 2 epochs;" in out["table"]
    assert out["score"] == "last-2-epoch mean"
    assert "gain_vs_labels.png" not in " ".join(out["files"])         # data.split is not swept here
    logged = client.get_run(parent).data.metrics
    name = "paired_gain/last2_val_miou/vs_train.method_unimatch/train.method_semiovs"
    assert logged[f"{name}/mean"] == pytest.approx(2.5) and logged[f"{name}/gained"] == 2.0
    with pytest.raises(UserError, match="no run has train.method=supervised"):
        write_report(store, "pairs", tmp_path / "r", baseline=["train.method=supervised"])


def test_gain_plots_have_the_interval_as_error_bars(tmp_path):
    from orchestrator.tracking.report import INERT, paired_gains
    from orchestrator.tracking.report_plots import PlotContext, _series, _gain_point, plot_files

    keys = grouping_keys(PAIRED)
    groups = group_rows(PAIRED, keys)
    gains = paired_gains(groups, keys, {"train.method": "unimatch"})
    ctx = PlotContext(groups, keys, INERT, "best-epoch val mIoU (%)", gains, "train.method=unimatch")
    series = _series(ctx, "data.split", _gain_point)
    lo, hi = series["train.method=semiovs"][0][2:]
    assert series["train.method=semiovs"][0][:2] == (8.0, pytest.approx(2.1667, abs=1e-4))
    assert (lo, hi) == (pytest.approx(0.7171, abs=1e-4), pytest.approx(0.7171, abs=1e-4))
    assert series["train.method=semiovs"][1][2:] == (0.0, 0.0)            # one pair: no bar
    names = sorted(p.name for p in plot_files(ctx, tmp_path))
    assert names == ["gain_vs_labels.png", "miou_vs_labels.png"]


def test_teacher_quality_rows_pair_with_unimatch_and_plot_against_the_teachers_precision(tmp_path):
    from orchestrator.tracking.report import INERT, paired_gains
    from orchestrator.tracking.report_plots import PlotContext, _quality_series, plot_files

    def run(method, seed, miou, noise=None, precision=None):
        params = {"train.method": method, "seed": seed, "data.split": "8"}
        if noise is not None:                      # runs of the `methods` sweep predate the key
            params["teacher.label_noise"] = noise
        metrics = {"best_val_miou": miou, **({"teacher_ood_precision": precision} if precision else {})}
        return {"params": params, "metrics": metrics}

    runs = [run("unimatch", "0", 50.0), run("unimatch", "1", 60.0),
            run("semiovs", "0", 54.0, precision=68.0), run("semiovs", "1", 62.0, precision=68.0),
            run("semiovs", "0", 54.0, "0.0", 68.0), run("semiovs", "1", 62.0, "0.0", 68.0),
            run("semiovs", "0", 49.0, "0.5", 35.0), run("semiovs", "1", 59.0, "0.5", 35.0),
            run("unimatch", "0", 50.0, "0.5")]        # label noise is inert for UniMatch: same group as above
    keys = grouping_keys(runs)
    assert keys == ["teacher.label_noise", "train.method"]
    groups = group_rows(runs, keys)
    assert [(g.key, len(g.values)) for g in groups] == [(("0.0", "semiovs"), 4), (("0.5", "semiovs"), 2),
                                                       ((INERT, "unimatch"), 3)]
    gains = paired_gains(groups, keys, {"train.method": "unimatch"})
    assert gains[("0.0", "semiovs")].mean == pytest.approx(3.0) and gains[("0.5", "semiovs")].mean == -1.0
    ctx = PlotContext(groups, keys, INERT, "best-epoch val mIoU (%)", gains, "train.method=unimatch")
    assert _quality_series(ctx) == {"train.method=semiovs": [(35.0, -1.0, 0.0, 0.0, "label_noise=0.5"),
                                                             (68.0, 3.0, pytest.approx(12.7062, abs=1e-3),
                                                              pytest.approx(12.7062, abs=1e-3), "label_noise=0.0")]}
    assert "gain_vs_teacher_quality.png" in [p.name for p in plot_files(ctx, tmp_path)]


def test_a_run_logged_by_two_merged_sweeps_counts_once_in_mean_and_std():
    """`methods` and `teacher_quality` both run SemiOVS at noise 0 on seeds 0 and 1: merged, each seed is one
    sample (the std over [58, 54] is 2.83; over the duplicated [58, 54, 58, 54] it would shrink to 2.31)."""
    from orchestrator.tracking.report import format_by_split

    runs = [run_of("semiovs", "8", seed, miou) for seed, miou in (("0", 58.0), ("1", 54.0))] * 2
    (group,) = group_rows(runs, ["data.split", "train.method"])
    assert len(group.values) == 4 and group.seed_values == [58.0, 54.0]
    assert group.mean == 56.0 and abs(group.std - 2.828) < 1e-3
    assert "| semiovs | 56.0 ± 2.8 |" in format_by_split([group], ["data.split", "train.method"])


def test_test_score_of_each_best_on_val_model_with_its_per_class_table(store, tmp_path):
    """--score test: the held-out test mIoU the best-on-val model got; the tables say so."""
    exp = tracking.ensure_experiment(store, "held_out")
    tracking.start_parent_run(store, exp, "held_out", {}, resume=False)
    client = tracking.client(store)
    for i, (method, seed, test) in enumerate([("unimatch", "0", 50.0), ("unimatch", "1", 54.0),
                                              ("semiovs", "0", 56.0), ("semiovs", "1", None)]):
        run_id = client.create_run(exp, tags={"role": "trial", "trial_id": f"t{i}"}).info.run_id
        tracking.log_params(store, run_id, {"train.method": method, "seed": seed})
        scores = {"best_val_miou": 70.0, "val_iou.disk": 1.0}
        if test is not None:   # a trial stopped early has no test score: left out, not counted as 0
            scores.update({"test_miou": test, "test_iou.disk": test / 2})
        tracking.log_metrics(store, run_id, scores, step=6)
    out = write_report(store, "held_out", tmp_path / "t", score="test")
    assert "Score: test mIoU (%) of each run's best-on-val model" in out["table"]
    assert "| semiovs | 1 | 56.00 ± 0.00 |" in out["table"] and "| unimatch | 2 | 52.00 ± 2.83 |" in out["table"]
    assert "Per-class test IoU (%) of the best-on-val model" in out["table"] and "| unimatch | 26.0 ± 1.4 |" in out["table"]
