"""Paired statistics and score choice of `run.py report`, on numbers worked out by hand (no Ray, no MLflow)."""
import math

import pytest

from orchestrator.core.errors import UserError
from orchestrator.tracking import paired
from orchestrator.tracking.scoring import Score, last_k_mean, parse_score, score_of


@pytest.mark.parametrize("p, df, expected", [
    (0.975, 1, 12.706205), (0.975, 2, 4.302653), (0.975, 4, 2.776445), (0.975, 9, 2.262157),
    (0.975, 30, 2.042272), (0.995, 5, 4.032143), (0.025, 4, -2.776445), (0.5, 3, 0.0),
])
def test_t_quantile_matches_the_published_table(p, df, expected):
    assert paired.t_quantile(p, df) == pytest.approx(expected, abs=2e-6)


def test_t_quantile_approaches_the_normal_for_many_degrees_of_freedom():
    assert paired.t_quantile(0.975, 1e6) == pytest.approx(1.959966, abs=1e-5)
    with pytest.raises(ValueError):
        paired.t_quantile(1.0, 3)


def test_paired_gain_mean_interval_and_seeds_gained():
    # differences 3, 1, -1: mean 1, sd 2, half-width t(0.975, 2) * 2 / sqrt(3)
    gain = paired.paired_gain([3.0, 1.0, -1.0])
    half = 4.302653 * 2.0 / math.sqrt(3)
    assert gain.mean == pytest.approx(1.0)
    assert (gain.low, gain.high) == (pytest.approx(1.0 - half, abs=1e-5), pytest.approx(1.0 + half, abs=1e-5))
    assert (gain.pairs, gain.gained) == (3, 2)
    assert gain.cell() == "+1.0 [-4.0, +6.0] 2/3"
    one = paired.paired_gain([-0.5])
    assert math.isnan(one.low) and one.cell() == "-0.5 [n=1] 0/1"


def test_pairs_are_made_by_seed_and_duplicate_seeds_are_averaged():
    group = paired.per_seed(["0", "1", "2", "2"], [53.0, 61.0, 54.0, 56.0])
    base = paired.per_seed(["1", "0", "3"], [60.0, 50.0, 40.0])
    assert group == {"0": 53.0, "1": 61.0, "2": 55.0}
    assert paired.differences(group, base) == [3.0, 1.0]          # seeds 0 and 1 only, in seed order


KEYS = ["data.split", "ood.label_source", "train.method"]
GROUPS = [("8", "–", "unimatch"), ("8", "teacher", "semiovs"), ("8", "self", "semiovs"), ("8", "–", "supervised"),
          ("16", "–", "unimatch"), ("16", "teacher", "semiovs")]


def test_the_baseline_matches_on_every_other_key_and_inert_keys_match_anything():
    base = {"train.method": "unimatch"}
    assert paired.match_baseline(GROUPS[1], KEYS, base, GROUPS, "–") == ("8", "–", "unimatch")
    assert paired.match_baseline(GROUPS[5], KEYS, base, GROUPS, "–") == ("16", "–", "unimatch")
    assert paired.match_baseline(GROUPS[3], KEYS, base, GROUPS, "–") == ("8", "–", "unimatch")
    # the baseline is SemiOVS with teacher labels: supervised (inert label source) has no unique match
    teacher = {"train.method": "semiovs", "ood.label_source": "teacher"}
    assert paired.match_baseline(GROUPS[2], KEYS, teacher, GROUPS, "–") == ("8", "teacher", "semiovs")
    assert paired.match_baseline(GROUPS[3], KEYS, {"train.method": "semiovs"}, GROUPS, "–") is None
    assert paired.same_value("0", "0.0") and not paired.same_value("unimatch", "semiovs")


def test_a_baseline_that_is_not_swept_or_has_no_run_is_a_user_error():
    with pytest.raises(UserError, match=r"--baseline seed=0: 'seed' does not vary .* data.split, ood.label_source"):
        paired.check_baseline({"seed": "0"}, KEYS, GROUPS)
    with pytest.raises(UserError, match=r"no run has train.method=fixmatch\. Fix: .*semiovs, supervised, unimatch"):
        paired.check_baseline({"train.method": "fixmatch"}, KEYS, GROUPS)
    with pytest.raises(UserError, match="expected key=value"):
        paired.parse_baseline(["train.method"])
    assert paired.parse_baseline(["train.method=unimatch", " data.split = 8"]) == {"train.method": "unimatch",
                                                                                  "data.split": "8"}


def test_score_choices_best_final_and_last_k():
    metrics = {"best_val_miou": 70.0, "val_miou": 64.0}
    history = [(1, 50.0), (2, 70.0), (3, 66.0), (3, 62.0), (4, 64.0)]    # epoch 3 logged twice: newest counts
    assert score_of(metrics, None, parse_score("best")) == 70.0
    assert score_of(metrics, None, parse_score("final")) == 64.0
    assert score_of(metrics, history, parse_score("last3")) == pytest.approx((70.0 + 62.0 + 64.0) / 3)
    assert last_k_mean(history, 10) == pytest.approx((50 + 70 + 62 + 64) / 4)   # fewer epochs than k: all
    assert score_of({}, [], Score("last", 2)) is None
    assert parse_score("last3").column == "last3_val_miou" and "last 3 epochs" in parse_score("last3").label
    assert score_of({**metrics, "test_miou": 61.5}, None, parse_score("test")) == 61.5
    assert score_of(metrics, None, parse_score("test")) is None        # stopped early, or no test split
    assert "held-out test split" in parse_score("test").label and parse_score("test").class_prefix == "test_iou."
    for bad in ("last0", "worst", "last"):
        with pytest.raises(UserError, match=f"--score {bad}: unknown score. Fix: use one of best | final | lastK"):
            parse_score(bad)
