"""The OOD mixing plan realises `ood.ratio` as closely as whole images allow, deterministically."""
from __future__ import annotations

import numpy as np
import pytest

from orchestrator.data.mixing import subsample_corpus
from trainables.mixing import plan_ood_counts


@pytest.mark.parametrize("batch_size,ratio,steps", [(8, 0.3, 100), (8, 0.5, 7), (4, 0.1, 33), (16, 0.77, 250),
                                                     (1, 0.5, 9), (8, 1.0, 10), (8, 0.0, 10), (3, 1 / 3, 5)])
def test_realised_ratio_is_as_close_as_integers_allow(batch_size, ratio, steps):
    counts = plan_ood_counts(batch_size, ratio, steps, seed=0)
    assert counts.shape == (steps,) and counts.dtype.kind == "i"
    exact = ratio * batch_size * steps
    assert abs(counts.sum() - exact) <= 0.5 + 1e-9  # the total is the nearest integer
    assert set(counts.tolist()) <= {int(np.floor(ratio * batch_size)), int(np.ceil(ratio * batch_size))}
    prefix_error = np.abs(np.cumsum(counts) - ratio * batch_size * np.arange(1, steps + 1))
    assert prefix_error.max() < 1.5  # right over any stretch of training, e.g. a trial stopped early


def test_batch_8_ratio_03_mixes_twos_and_threes():
    counts = plan_ood_counts(8, 0.3, 1000, seed=5)
    assert set(counts.tolist()) == {2, 3} and counts.mean() == pytest.approx(2.4)
    assert (8 - int(counts[0]), int(counts[0])) in [(6, 2), (5, 3)]
    assert plan_ood_counts(8, 0.5, 10, seed=0).tolist() == [4] * 10  # the paper's 1:1


def test_plan_is_deterministic_in_seed():
    a, b = plan_ood_counts(8, 0.3, 50, seed=1), plan_ood_counts(8, 0.3, 50, seed=1)
    assert np.array_equal(a, b)
    assert any(not np.array_equal(a, plan_ood_counts(8, 0.3, 50, seed=s)) for s in range(2, 6))


def test_bad_ratio_names_the_key():
    with pytest.raises(ValueError, match=r"ood.ratio must be in \[0, 1\]"):
        plan_ood_counts(8, 1.2, 10, seed=0)
    assert plan_ood_counts(8, 0.3, 0, seed=0).size == 0


def test_subsample_is_seeded_nested_and_keeps_order():
    items = [f"img{i}" for i in range(100)]
    assert subsample_corpus(items, 0, seed=0) == items
    small, big = subsample_corpus(items, 10, seed=3), subsample_corpus(items, 40, seed=3)
    assert len(small) == 10 and set(small) <= set(big) and small == sorted(small, key=items.index)
    assert small == subsample_corpus(items, 10, seed=3) != subsample_corpus(items, 10, seed=4)
    with pytest.raises(ValueError, match=r"ood.num_images = 101 but the OOD corpus has only 100"):
        subsample_corpus(items, 101, seed=0)
