"""Loss terms on hand-made tensors: thresholding, ignore handling, the all-valid divisor, λ normalisation."""

import math

import pytest
import torch

from trainables.losses import (
    LossTerms,
    LossWeights,
    Targets,
    ViewLogits,
    combine_losses,
    conf_weighted_ce,
    id_stream_loss,
    mix_by_box,
    mix_targets,
    ood_label_targets,
    ood_stream_loss,
    supervised_ce,
    three_view_loss,
)

LN2 = math.log(2.0)


def ce(z0: float, z1: float, target: int) -> float:
    """Cross-entropy of a 2-class logit pair, written out."""
    return math.log(math.exp(z0) + math.exp(z1)) - (z0, z1)[target]


def logits_2class(pairs):
    """[(z0, z1), ...] for the pixels of one 1xN image -> [1, 2, 1, N]."""
    return torch.tensor(pairs, dtype=torch.float).T.reshape(1, 2, 1, len(pairs))


def row(values, dtype=torch.float):
    return torch.tensor([[values]], dtype=dtype)


def test_cwl_thresholds_conf_and_divides_by_all_valid_pixels():
    logits = torch.zeros(1, 2, 1, 4)  # CE = ln 2 at every pixel
    target = row([0, 1, 0, 1], torch.long)
    conf = row([0.9, 0.96, 0.99, 0.95])
    ignore = row([0, 0, 255, 0], torch.uint8)
    # confident and valid: pixel 1 (0.96) and pixel 3 (0.95, tau is inclusive); pixel 2 is ignored
    assert conf_weighted_ce(logits, target, conf, ignore, 0.95).item() == pytest.approx(2 * LN2 / 3)


def test_cwl_uses_the_per_pixel_ce():
    logits = logits_2class([(2.0, 0.0), (0.0, 3.0)])
    loss = conf_weighted_ce(logits, row([1, 1], torch.long), row([1.0, 1.0]), row([0, 0]), 0.5)
    assert loss.item() == pytest.approx((ce(2, 0, 1) + ce(0, 3, 1)) / 2)


def test_cwl_all_ignored_is_zero_and_label_255_is_harmless():
    logits = torch.zeros(1, 2, 1, 2)
    assert conf_weighted_ce(logits, row([0, 1], torch.long), 1.0, row([255, 255]), 0.95).item() == 0.0
    loss = conf_weighted_ce(logits, row([255, 1], torch.long), 1.0, row([0, 0]), 0.95)
    assert loss.item() == pytest.approx(LN2 / 2)


def test_supervised_ce_ignores_255_and_never_nan():
    logits = logits_2class([(1.0, 0.0), (0.0, 0.0)])
    assert supervised_ce(logits, row([0, 255], torch.long)).item() == pytest.approx(ce(1, 0, 0))
    assert supervised_ce(logits, row([255, 255], torch.long)).item() == 0.0


def test_mix_by_box_images_labels_and_scalars():
    box = torch.tensor([[[0, 1], [1, 0]]], dtype=torch.uint8)
    a, b = torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2)
    mixed = mix_by_box(a, b, box)
    assert mixed[:, 0].tolist() == [[[0, 1], [1, 0]]] and torch.equal(mixed[:, 0], mixed[:, 2])
    assert mix_by_box(torch.full((1, 2, 2), 7), torch.full((1, 2, 2), 9), box.bool()).tolist() == [[[7, 9], [9, 7]]]
    assert mix_by_box(1.0, torch.full((1, 2, 2), 0.3), box).flatten().tolist() == pytest.approx([1.0, 0.3, 0.3, 1.0])


def targets(label, conf, ignore=(0, 0)):
    return Targets(row(label, torch.long), row(conf), row(ignore, torch.long))


def test_unimatch_loss_weights_and_partner_labels_inside_box():
    weak = targets([0, 0], [1.0, 1.0])
    partner = targets([1, 1], [1.0, 0.5])
    box1, box2 = row([0, 1], torch.bool), row([0, 0], torch.bool)
    p1 = logits_2class([(2.0, 0.0), (2.0, 0.0)])
    p2 = logits_2class([(0.0, 1.0), (0.0, 1.0)])
    pfp = logits_2class([(0.0, 4.0), (0.5, 0.0)])
    loss = id_stream_loss(ViewLogits(p1, p2, pfp), weak, partner, (box1, box2), tau=0.95)
    l1 = (ce(2, 0, 0) + 0.0) / 2  # pixel 1 is the partner's (label 1) but its conf 0.5 < tau
    l2 = (ce(0, 1, 0) + ce(0, 1, 0)) / 2  # box2 empty: weak labels everywhere
    lfp = (ce(0, 4, 0) + ce(0.5, 0, 0)) / 2
    assert loss.item() == pytest.approx(0.25 * l1 + 0.25 * l2 + 0.5 * lfp)
    box1_all = row([1, 1], torch.bool)
    loss_all = id_stream_loss(ViewLogits(p1, p2, pfp), weak, partner, (box1_all, box2), tau=0.95)
    assert loss_all.item() == pytest.approx(0.25 * ce(2, 0, 1) / 2 + 0.25 * l2 + 0.5 * lfp)


def test_ood_loss_trusts_ood_labels_but_thresholds_pasted_id_labels():
    ood = ood_label_targets(row([1, 1], torch.long), row([0, 0], torch.uint8))
    id_weak = targets([0, 0], [0.5, 0.5])  # unconfident ID pseudo-labels
    box = row([0, 1], torch.bool)
    p = logits_2class([(0.0, 2.0), (3.0, 0.0)])
    loss = ood_stream_loss(ViewLogits(p, p, p), ood, id_weak, (box, box), tau=0.95)
    strong = ce(0, 2, 1) / 2  # outside: OOD label with conf 1; inside: ID label dropped, still divides by 2
    fp = (ce(0, 2, 1) + ce(3, 0, 1)) / 2  # FP view: OOD labels everywhere, never thresholded
    assert loss.item() == pytest.approx(0.5 * strong + 0.5 * fp)


def test_ood_targets_with_confidence_and_teacher_ignore():
    t = ood_label_targets(row([1, 255, 2], torch.long), row([0, 255, 0], torch.uint8), c_o=row([0.99, 0.2, 0.4]))
    assert t.label.tolist() == [[[1, 0, 2]]]  # ignored label mapped to a valid class, masked by ignore
    logits = torch.zeros(1, 3, 1, 3)
    loss = conf_weighted_ce(logits, t.label, t.conf, t.ignore, 0.95)
    assert loss.item() == pytest.approx(math.log(3) / 2)  # one confident pixel of two valid ones


def test_mix_targets_takes_every_field_from_the_same_side():
    out = mix_targets(targets([1, 1], [0.1, 0.2], [255, 0]), targets([2, 2], [0.8, 0.9], [0, 255]),
                      row([0, 1], torch.bool))
    assert out.label.tolist() == [[[1, 2]]]
    assert out.conf.flatten().tolist() == pytest.approx([0.1, 0.9])
    assert out.ignore.tolist() == [[[255, 255]]]


def test_three_view_loss_is_the_weighted_sum():
    t = targets([0, 1], [1.0, 1.0])
    a, b, c = (logits_2class([(s, 0.0), (0.0, s)]) for s in (0.0, 1.0, 5.0))
    la, lb, lc = LN2, ce(1, 0, 0), ce(5, 0, 0)
    assert three_view_loss(ViewLogits(a, b, c), t, t, t, 0.9).item() == pytest.approx(0.25 * la + 0.25 * lb + 0.5 * lc)


@pytest.mark.parametrize(
    "method,lam,has_id,has_ood,expected",
    [
        ("supervised", 1.0, True, True, 1.0),
        ("unimatch", 1.0, True, True, (1 + 2) / 2),
        ("semiovs", 1.0, True, True, (1 + 2 + 3) / 3),
        ("semiovs", 0.5, True, True, (1 + 2 + 1.5) / 2.5),
        ("semiovs", 2.0, True, True, (1 + 2 + 6) / 4),
        ("semiovs", 1.0, True, False, (1 + 2) / 2),  # empty OOD batch = unimatch
        ("semiovs", 1.0, False, True, (1 + 3) / 2),  # OOD-only unlabeled batch
    ],
)
def test_combine_losses_normalisation(method, lam, has_id, has_ood, expected):
    lx, lu, lo = torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0)
    terms = LossTerms(lx, u=lu if has_id else None, ood=lo if has_ood else None)
    got = combine_losses(method, terms, LossWeights(lam))
    assert got.item() == pytest.approx(expected)


def test_combine_losses_errors_name_the_fix():
    one = torch.tensor(1.0)
    with pytest.raises(ValueError, match="unknown method 'fixmatch'; valid methods: supervised, unimatch, semiovs"):
        combine_losses("fixmatch", LossTerms(one, one, one), LossWeights(1.0))
    with pytest.raises(ValueError, match="lambda_ood must be >= 0"):
        combine_losses("semiovs", LossTerms(one, one, one), LossWeights(-1.0))
