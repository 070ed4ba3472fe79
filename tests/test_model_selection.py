"""Which epoch is a run's best and which trials get a model: pure decisions, tested without Ray or MLflow."""
from __future__ import annotations

import pytest

from orchestrator.core.selection import ModelPolicy, Selection
from orchestrator.tracking.models import best_source, score_of
from orchestrator.tracking.stored import KeptCheckpoint, epochs_from_lines


def row(epoch: int, miou: float, **extra) -> dict:
    return {"epoch": epoch, "val_miou": miou, "val_iou.disk": miou / 2, "loss": 1.0 / epoch,
            "reported_at": 1000.0 + epoch, "checkpoint_path": f"/s/train-x/checkpoint_{epoch}", **extra}


def test_ties_go_to_the_later_epoch_as_in_ray_trains_checkpoint_retention():
    """Ray Train keeps the later of two checkpoints with equal scores; every choice here must name the same."""
    rows = [row(1, 50.0), row(2, 60.0), row(3, 60.0), row(4, 55.0)]
    assert Selection().best(rows)["epoch"] == 3
    assert Selection("loss", "min").best(rows)["epoch"] == 4
    assert Selection("missing").best(rows) is None
    assert Selection().best([row(1, float("nan")), row(2, 1.0)])["epoch"] == 2   # NaN never wins
    with pytest.raises(ValueError, match="use one of max, min"):
        Selection(mode="largest")


def kept(epoch: int, miou: float, **extra) -> KeptCheckpoint:
    return KeptCheckpoint(f"/s/train-x/checkpoint_{epoch}", row(epoch, miou, **extra))


def test_the_model_is_the_best_of_the_checkpoints_ray_kept_with_the_points_its_run_logged():
    source = best_source([kept(3, 58.0), kept(2, 61.0)], row(3, 58.0), Selection())
    assert source.folder == "/s/train-x/checkpoint_2" and source.epoch == 2
    assert source.metrics == {"val_miou": 61.0, "val_iou.disk": 30.5}
    assert {(p.step, p.at) for p in source.points} == {(2, 1002.0)}   # the very points the run logged
    assert best_source([], row(3, 58.0), Selection()) is None         # nothing kept: no model


def test_test_scores_join_the_model_only_when_they_scored_that_model():
    last = row(3, 58.0, test_miou=57.0, test_epoch=2, **{"test_iou.disk": 28.0})
    source = best_source([kept(2, 61.0), kept(3, 58.0)], last, Selection())
    assert source.metrics["test_miou"] == 57.0 and source.metrics["test_iou.disk"] == 28.0
    test_point = next(p for p in source.points if p.key == "test_miou")
    assert (test_point.step, test_point.at) == (3, 1003.0)   # logged with the last epoch's report
    other = row(3, 58.0, test_miou=57.0, test_epoch=3)
    assert "test_miou" not in best_source([kept(2, 61.0), kept(3, 58.0)], other, Selection()).metrics


def test_ties_between_kept_checkpoints_go_to_the_later_one():
    assert best_source([kept(4, 60.0), kept(2, 60.0)], None, Selection()).epoch == 4
    tune_copy = KeptCheckpoint("/s/run_trial/checkpoint_000000", {**row(2, 61.0), "best_model": 1})
    assert best_source([kept(2, 61.0), kept(5, 50.0), tune_copy], None, Selection()).metrics["val_miou"] == 61.0


def test_the_report_that_hands_tune_the_best_model_is_not_an_epoch():
    import json

    lines = [json.dumps(row(1, 50.0)), json.dumps(row(2, 61.0)), json.dumps({**row(2, 61.0), "best_model": 1})]
    epochs = epochs_from_lines(lines)
    assert sorted(epochs) == [1, 2] and "best_model" not in epochs[2]
    assert score_of(epochs, Selection()) == 61.0


def test_model_policy_all_none_and_top_k():
    scores = {"a": 50.0, "b": 70.0, "c": None, "d": 60.0}
    assert ModelPolicy.parse("all").chosen(scores, Selection()) == ["b", "d", "a"]   # a trial with no epoch: none
    assert ModelPolicy.parse("none").chosen(scores, Selection()) == []
    assert ModelPolicy.parse("TOP2").chosen(scores, Selection()) == ["b", "d"]
    assert ModelPolicy.parse("top2").chosen(scores, Selection("loss", "min")) == ["a", "d"]
    assert ModelPolicy.parse("all").at_trial_end and not ModelPolicy.parse("top3").at_trial_end
    for bad in ("top0", "best", "top-1", ""):
        with pytest.raises(ValueError, match=r"all \| none \| topK"):
            ModelPolicy.parse(bad)


def test_space_file_names_the_policy_and_refuses_a_bad_one(tmp_path):
    from orchestrator.core.errors import SpaceError
    from orchestrator.sweep.space import load_space

    space = tmp_path / "s.yaml"
    space.write_text("log_models: top3\nmetric: loss\nmode: min\n")
    loaded = load_space(space)
    assert loaded.log_models == ModelPolicy("top", 3) and loaded.selection == Selection("loss", "min")
    space.write_text("log_models: best\n")
    with pytest.raises(SpaceError, match=r"'log_models': 'best' is not a model policy. Fix: use all \| none \| topK"):
        load_space(space)
