"""MLflow helpers against a real sqlite store."""
import pytest

from orchestrator.tracking import client as tracking
from orchestrator.core.errors import UserError


def test_tracking_uri_precedence(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_tracking_uri(None) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking.resolve_tracking_uri(None) == "http://127.0.0.1:5999"
    assert tracking.resolve_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"


@pytest.mark.parametrize("uri", ["./mlruns", "file:///tmp/mlruns"])
def test_file_stores_are_refused_with_the_fix(uri):
    with pytest.raises(UserError, match="file store, which MLflow 3 refuses. Fix: use sqlite"):
        tracking.resolve_tracking_uri(uri)


def test_parent_run_is_reused_on_resume(sqlite_uri, tmp_path):
    exp = tracking.ensure_experiment(sqlite_uri, "demo")
    assert tracking.ensure_experiment(sqlite_uri, "demo") == exp
    first = tracking.start_parent_run(sqlite_uri, exp, "demo", {"a.b": 1}, resume=False)
    assert tracking.start_parent_run(sqlite_uri, exp, "demo", {"a.b": 1}, resume=True) == first
    run = tracking.client(sqlite_uri).get_run(first)
    assert run.data.tags["role"] == "sweep" and run.data.params["a.b"] == "1"
    assert run.info.artifact_uri.startswith((tmp_path / "mlartifacts").resolve().as_uri())  # not ./mlruns


def test_measurements_drop_tune_bookkeeping():
    got = tracking.measurements({"val_miou": 30.0, "epoch": 2, "time_total_s": 4.0, "done": False,
                                 "checkpoint_path": "/x", "broken_sample_list": ["a"], "loss": float("nan")})
    assert got == {"val_miou": 30.0}
