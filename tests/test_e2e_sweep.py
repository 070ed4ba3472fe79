"""End to end on a real local Ray cluster and a real MLflow sqlite store: the shipped smoke sweep,
an ASHA sweep of Train-in-Tune trials on 2 CPUs (ray #54305), and a single local-mode run."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import TINY

SPACES = Path(__file__).parent.parent / "search_spaces"
pytestmark = pytest.mark.e2e


def runs_by_role(uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    return client, [r for r in runs if r.data.tags.get("role") == "sweep"], \
        [r for r in runs if r.data.tags.get("role") == "trial"]


def test_smoke_sweep_end_to_end(ray_session, shared_cache, tmp_path, mlflow_server):
    """The shipped smoke sweep against a real `mlflow server`, then its UI in a headless browser."""
    from orchestrator.sweep.driver import SweepRequest, run_sweep

    # another test in this process may have labeled the same corpus with the same teacher already
    labeled_before = {p.parent.name for p in shared_cache.glob("labels/*/manifest.json")}
    out = run_sweep(SweepRequest(space=str(SPACES / "smoke.yaml"), tracking_uri=mlflow_server,
                                 storage=str(tmp_path / "runs"), cache=str(shared_cache),
                                 overrides=dict(TINY), quiet=True))
    assert [r.status for r in out.rows] == ["done", "done"]
    assert sorted(r.swept["ood.ratio"] for r in out.rows) == [0.0, 0.5]
    assert "best val_miou" in out.table

    client, parents, trials = runs_by_role(mlflow_server, "smoke")
    assert len(parents) == 1 and len(trials) == 2
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.params["train.method"] == "semiovs"
    assert parent.data.metrics["labeling.labeled"] == TINY["data.num_ood"]
    entries = [a.path for a in client.list_artifacts(parent.info.run_id, "labeling")]
    assert len(entries) == 1                      # one teacher setting → one labeling run, diagnostics kept
    key = entries[0].rsplit("/", 1)[-1]
    assert parent.data.metrics["labeling.keys"] == 1
    assert parent.data.metrics["labeling.teacher_runs"] == int(key not in labeled_before)
    diagnostics = {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(parent.info.run_id,
                                                                             f"{entries[0]}/diagnostics")}
    assert "diagnostics.json" in diagnostics and any(name.endswith(".png") for name in diagnostics)
    assert 0 <= parent.data.metrics["teacher.miou"] <= 100
    # the trial phase's core accounting (/proc over this process tree; Ray's reservations)
    assert 0 < parent.data.metrics["cost.core_utilization"] <= 1.5
    assert 0 < parent.data.metrics["cost.core_reserved_share"] <= 1.0
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "summary")}
    assert artifacts == {"summary/results.md", "summary/results.csv"}
    for run in trials:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED"
        assert run.data.params["train.epochs"] == "2" and run.data.params["ood.ratio"] in ("0.0", "0.5")
        history = client.get_metric_history(run.info.run_id, "val_miou")
        assert [m.step for m in history] == [1, 2]
        assert all(0.0 <= m.value <= 100.0 for m in history)
        assert run.data.metrics["best_val_miou"] == max(m.value for m in history)
        assert any(k.startswith("val_iou.") for k in run.data.metrics)
        assert "config.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
        # per-epoch evaluation pictures, and the OOD label agreement where OOD images were used
        pictures = {a.path for a in client.list_artifacts(run.info.run_id, "eval")}
        assert pictures == {f"eval/{kind}_epoch_00{e}.png" for kind in ("confusion_matrix", "overlays")
                            for e in (1, 2)}
        uses_ood = run.data.params["ood.ratio"] == "0.5"
        assert ("ood_label_agreement" in run.data.metrics) == uses_ood
        if uses_ood:
            agreement = client.get_metric_history(run.info.run_id, "ood_label_agreement")
            assert [m.step for m in agreement] == [1, 2] and all(0 < m.value <= 100 for m in agreement)
            assert 0 < run.data.metrics["ood_label_coverage"] <= 100
    # Tune's own logs do not keep the pictures' payload (the MLflow callback takes it out of each result)
    stored = list((tmp_path / "runs").rglob("result.json"))
    assert stored and not any("overlay_png_b64" in f.read_text() for f in stored)

    check_ui_shows_runs(mlflow_server, out.experiment_id, parent.info.run_name, trials)
    check_first_screen_compares(mlflow_server, out.experiment_id, parent.info.run_id, trials)
    check_models(mlflow_server, out, parent, trials, tmp_path / "runs" / "smoke", shared_cache)

    # A second sweep with the same teacher and corpus reuses the labels (the teacher does not run again).
    from orchestrator.labels.job import ensure_labels
    from orchestrator.core.config import build_config

    again = ensure_labels(build_config({**TINY, "train.method": "semiovs"}), shared_cache, lambda *a: None)
    assert again.reused and again.labeled == TINY["data.num_ood"]


def check_models(uri: str, out, parent, trials, sweep_dir: Path, cache: Path) -> None:
    """Each trial's best student is an MLflow model linked to its run and ranked by search_logged_models; the
    parent names the best; Tune's own API finds the best checkpoint; `evaluate` gives back the logged score."""
    import json

    from mlflow.tracking import MlflowClient
    from ray.tune import ExperimentAnalysis

    from orchestrator.cli import main
    from trainables.student_file import load_package

    client = MlflowClient(uri)
    models = client.search_logged_models([out.experiment_id], order_by=[{"field_name": "metrics.val_miou",
                                                                         "ascending": False}])
    runs = {r.info.run_id: r for r in trials}
    assert len(models) == 2 and {m.source_run_id for m in models} == set(runs)
    for model in models:
        run = runs[model.source_run_id]
        assert str(model.status) == "READY" and model.name == "best_student"
        assert model.tags["trial_id"] == run.data.tags["trial_id"] and run.data.tags["best_model_id"] == model.model_id
        assert model.model_id in {o.model_id for o in client.get_run(run.info.run_id).outputs.model_outputs}
        epoch = int(model.tags["epoch"])
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_miou")}
        scores = {m.key: m.value for m in model.metrics}
        assert scores["val_miou"] == history[epoch] == max(history.values())   # the best epoch's model
        assert scores["test_miou"] == run.data.metrics["test_miou"]            # scored once on the test split
    best = models[0]
    assert out.best_model[0] == best.model_id == client.get_run(parent.info.run_id).data.tags["best_model_id"]
    check_models_tab(uri, out.experiment_id, models)
    # Tune's own analysis of the sweep's storage returns the best trial's best checkpoint: that same model
    analysis = ExperimentAnalysis(str(sweep_dir), default_metric="val_miou", default_mode="max")
    package = load_package(Path(analysis.best_checkpoint.path) / "model.pt")
    assert analysis.best_trial.trial_id == best.tags["trial_id"] and package["epoch"] == int(best.tags["epoch"])
    # `run.py evaluate` on the same val split gives back the val mIoU the trial logged for that epoch
    scores = {m.key: m.value for m in best.metrics}
    assert main(["evaluate", "--model", f"models:/{best.model_id}", "--tracking-uri", uri, "--cache", str(cache)]) == 0
    evaluation = client.search_runs([out.experiment_id], filter_string="tags.role = 'evaluation'")[0]
    assert abs(evaluation.data.metrics["val_miou"] - scores["val_miou"]) <= 0.1
    assert [i.model_id for i in client.get_run(evaluation.info.run_id).inputs.model_inputs] == [best.model_id]
    confusion = json.loads(Path(client.download_artifacts(evaluation.info.run_id, "confusion_matrix.json")).read_text())
    assert confusion["classes"] == package["class_names"]
    # `run.py predict` with the model's URI: a mask per image (the first val images)
    images = sweep_dir / "predict_in"
    images.mkdir()
    for path in sorted((cache / "data").glob("shapes-*/JPEGImages/val_0000*.jpg"))[:5]:
        (images / path.name).write_bytes(path.read_bytes())
    out_dir = sweep_dir / "predict_out"
    assert main(["predict", "--model", f"models:/{best.model_id}", "--images", str(images), "--out", str(out_dir),
                 "--tracking-uri", uri, "--quiet"]) == 0
    assert sorted(p.name for p in (out_dir / "masks").iterdir()) == [p.with_suffix(".png").name
                                                                     for p in sorted(images.iterdir())]


def check_models_tab(url: str, experiment_id: str, models) -> None:
    """The experiment's Models tab in headless Chromium lists each trial's model."""
    from tests.browser import page_text, screenshot

    page = f"{url}/#/experiments/{experiment_id}/models?workflowType=machine_learning"   # Model training > Models
    text = page_text(page)
    assert "Models" in text and text.count("best_student") >= len(models), text[:3000]
    assert all(m.tags["trial_id"] in text for m in models), text[:3000]   # each with its source run
    assert screenshot(page, Path(__file__).parent.parent / "artifacts" / "ui" / "models.png").stat().st_size > 10_000


def check_ui_shows_runs(url: str, experiment_id: str, parent_name: str, trials) -> None:
    """Open the experiment and the child runs in headless Chromium; keep screenshots in artifacts/ui/."""
    import json
    import urllib.parse

    from tests.browser import page_text, screenshot

    from orchestrator.tracking.client import ui_link

    shots = Path(__file__).parent.parent / "artifacts" / "ui"
    experiment_page = ui_link(url, experiment_id)
    text = page_text(experiment_page)
    assert parent_name in text and "3 matching runs" in text, text[:2000]
    ids = json.dumps([r.info.run_id for r in trials])
    compare = (f"{url}/#/compare-runs?runs={urllib.parse.quote(ids)}"
               f"&experiments={urllib.parse.quote(json.dumps([experiment_id]))}")
    text = page_text(compare)
    assert f"Comparing {len(trials)} Runs" in text, text[:2000]
    for run in trials:
        assert run.info.run_name in text
    # The parallel-coordinates plot of ood.ratio vs val_miou labels its axis with the best value.
    assert "Parameters: ood.ratio" in text and "Metrics: val_miou" in text
    assert f"{max(r.data.metrics['val_miou'] for r in trials):.5f}" in text
    assert screenshot(experiment_page, shots / "experiment.png").stat().st_size > 10_000
    assert screenshot(compare, shots / "compare_trials.png").stat().st_size > 10_000


def check_first_screen_compares(url: str, experiment_id: str, parent_id: str, trials) -> None:
    """The sweep's run page (the link the sweep prints) shows the results table: every trial, its swept value and
    its score, without expanding or selecting anything."""
    from tests.browser import page_text

    from orchestrator.tracking.client import run_link

    text = page_text(run_link(url, experiment_id, parent_id))
    assert "ood.ratio" in text, text[:2000]
    for run in trials:
        assert run.data.tags["trial_id"] in text and f"{run.data.metrics['best_val_miou']:.2f}" in text, text[:3000]


def test_asha_sweep_of_train_in_tune_completes_on_two_cpus(ray_session, shared_cache, tmp_path, sqlite_uri):
    """ASHA stops trials that run a TorchTrainer; their workers must be released (ray #54305)."""
    from orchestrator.sweep.driver import SweepRequest, run_sweep

    space = tmp_path / "asha.yaml"
    space.write_text("""
name: asha_test
max_concurrent_trials: 1   # one at a time (two would fit now that the Tune function holds no CPU)
scheduler: {kind: asha, max_t: 3, grace_period: 1, reduction_factor: 2}
fixed: {train.method: supervised, train.num_workers: 1, train.epochs: 3}
parameters:
  train.lr: {grid: [0.05, 0.00001]}   # one at a time: the weak second one is below the first at rung 1
""")
    started = time.time()
    out = run_sweep(SweepRequest(space=str(space), tracking_uri=sqlite_uri, storage=str(tmp_path / "runs"),
                                 cache=str(shared_cache), overrides={**TINY, "train.epochs": 3}, quiet=True))
    status = {r.swept["train.lr"]: r.status for r in out.rows}
    assert status == {0.05: "done", 0.00001: "stopped early"}, [(r.swept, r.epochs) for r in out.rows]
    # Every CPU comes back once the stopped trials' placement groups are cleaned up.
    deadline = time.time() + 60
    while ray_session.available_resources().get("CPU", 0) < 2 and time.time() < deadline:
        time.sleep(1)
    assert ray_session.available_resources().get("CPU", 0) == 2
    assert time.time() - started < 600


def test_single_local_mode_run_logs_every_epoch(ray_session, shared_cache, tmp_path, sqlite_uri):
    from orchestrator.single_run import TrainRequest, run_single

    out = run_single(TrainRequest(overrides={**TINY, "train.method": "unimatch", "train.num_workers": 0},
                                  experiment="single", tracking_uri=sqlite_uri, storage=str(tmp_path / "runs"),
                                  cache=str(shared_cache), quiet=True))
    from mlflow.tracking import MlflowClient

    client = MlflowClient(sqlite_uri)
    history = client.get_metric_history(out["run_id"], "val_miou")
    assert [m.step for m in history] == [1, 2]
    assert out["epochs"] == 2 and out["best_val_miou"] == max(m.value for m in history)
    run = client.get_run(out["run_id"])
    assert run.data.tags["role"] == "run" and run.data.params["train.method"] == "unimatch"
    assert "mask_ratio" in run.data.metrics and "loss_u" in run.data.metrics


def test_teacher_eval_scores_the_teacher_against_ood_ground_truth(shared_cache):
    from orchestrator.core.config import build_config
    from orchestrator.teachers.eval_task import evaluate_on_ood

    out = evaluate_on_ood(build_config(TINY), shared_cache, num_images=20)
    assert out["images"] == 20 and 0 <= out["miou"] <= 100
    assert list(out["per_class_iou"]) == ["background", "disk", "square", "triangle", "cross", "ring"]
    assert out["per_class_iou"]["background"] > 50     # even a 30-step teacher finds the background
