"""run_step: CutMix order, box sharing between ID and OOD, forward-pass plan, logs; optim; a short run."""

import pytest
import torch
from torch import nn

from trainables.models import build_student
from trainables.optim import apply_poly_lr, build_optimizer, poly_lr
from trainables.recipe import StepOptions, run_step


pytestmark = pytest.mark.usefixtures("torch_one_thread")

S = 4  # image side
K = 4  # classes = input channels of the spy model


class SpyModel(nn.Module):
    """logits = 30 * input: a one-hot image of class c is predicted as c with confidence ~1.

    Records every forward call so tests can check what the recipe fed the model, in which mode.
    """

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(30.0))
        self.calls: list[dict] = []

    def forward(self, x, need_fp=False):
        self.calls.append(dict(x=x.detach().clone(), need_fp=need_fp, training=self.training,
                               grad=torch.is_grad_enabled()))
        out = self.scale * x
        return (out, out) if need_fp else out


def one_hot_images(classes):
    """One image per class index, every pixel one-hot in that class: [N, K, S, S]."""
    if not classes:
        return torch.zeros(0, K, S, S)
    return torch.stack([torch.nn.functional.one_hot(torch.full((S, S), c), K).permute(2, 0, 1).float()
                        for c in classes])


def make_batch(n_ood=3):
    """ID images 0/1 are classes 0/1, the mix partner is class 2, OOD images are class 3 with OOD label 3.

    Every image agrees with its label, so all losses are ~0 exactly when images and labels are mixed with
    the same boxes, from the same (paired) images, in the right order.
    """
    box1 = torch.zeros(2, S, S, dtype=torch.bool)
    box1[0, :, :2] = True  # ID image 0: left half
    box1[1, :2, :] = True  # ID image 1: top half
    box2 = torch.zeros(2, S, S, dtype=torch.bool)
    box2[0, 2:, 2:] = True
    zeros = lambda n: torch.zeros(n, S, S, dtype=torch.uint8)  # noqa: E731
    return dict(
        x=one_hot_images([0, 1]), y=torch.tensor([0, 1]).view(2, 1, 1).expand(2, S, S).clone(),
        u_w=one_hot_images([0, 1]), u_s1=one_hot_images([0, 1]), u_s2=one_hot_images([0, 1]),
        ign_u=zeros(2), box1=box1, box2=box2,
        m_w=one_hot_images([2, 2]), m_s1=one_hot_images([2, 2]), m_s2=one_hot_images([2, 2]), ign_m=zeros(2),
        o_w=one_hot_images([3] * n_ood), o_s1=one_hot_images([3] * n_ood), o_s2=one_hot_images([3] * n_ood),
        ign_o=zeros(n_ood), y_o=torch.full((n_ood, S, S), 3),
    )


def run(batch, method="semiovs", source="teacher", model=None):
    model = model or SpyModel()
    loss, logs = run_step(model, batch, StepOptions(method, tau=0.95, lambda_ood=1.0, ood_label_source=source))
    return model, loss, logs


def test_semiovs_forward_plan_matches_the_paper():
    batch = make_batch(n_ood=3)
    model, loss, logs = run(batch)
    calls = model.calls
    assert len(calls) == 4
    assert not calls[0]["training"] and not calls[0]["grad"] and torch.equal(calls[0]["x"], batch["m_w"])
    assert calls[1]["training"] and calls[1]["need_fp"]
    assert torch.equal(calls[1]["x"], torch.cat([batch["x"], batch["u_w"], batch["o_w"]]))  # BN sees all three
    assert calls[2]["x"].shape[0] == 4 and calls[3]["x"].shape[0] == 6
    assert model.training
    assert loss.item() < 1e-6 and logs["loss_ood"] < 1e-6 and logs["loss_u"] < 1e-6
    assert logs["mask_ratio"] == 1.0


def test_ood_strong_views_get_the_unmixed_id_patch_of_the_paired_image():
    batch = make_batch(n_ood=3)
    model, _, _ = run(batch)
    o_s1 = model.calls[3]["x"][:3].argmax(1)  # class map of each mixed OOD strong view 1
    u_s1 = model.calls[2]["x"][:2].argmax(1)
    for i, id_img in enumerate([0, 1, 0]):  # OOD image i pairs with ID image i mod 2
        box = batch["box1"][id_img]
        assert (o_s1[i][box] == id_img).all(), f"OOD {i} must carry ID {id_img}'s patch, not the partner's"
        assert (o_s1[i][~box] == 3).all()
    assert (u_s1[0][batch["box1"][0]] == 2).all() and (u_s1[0][~batch["box1"][0]] == 0).all()
    o_s2 = model.calls[3]["x"][3:].argmax(1)
    assert (o_s2[0][batch["box2"][0]] == 0).all() and (o_s2[1] == 3).all()  # ID image 1 has an empty box2


def test_caller_batch_is_not_modified():
    batch = make_batch()
    before = {k: v.clone() for k, v in batch.items()}
    run(batch)
    assert all(torch.equal(before[k], batch[k]) for k in batch)


def test_teacher_labels_vs_self_labels_on_ood():
    batch = make_batch()
    batch["y_o"] = torch.full_like(batch["y_o"], 1)  # teacher disagrees with what the student sees (class 3)
    _, _, teacher = run(batch, source="teacher")
    _, _, self_ = run(batch, source="self")
    assert teacher["loss_ood"] > 10  # outside the boxes: CE ~ 30 on every OOD pixel
    assert self_["loss_ood"] < 1e-6  # the student's own confident labels agree with its strong views
    assert self_["ood_conf_ratio"] == 1.0


def test_teacher_confidence_below_tau_drops_ood_pixels():
    batch = make_batch()
    batch["y_o"] = torch.full_like(batch["y_o"], 1)
    batch["c_o"] = torch.full(batch["y_o"].shape, 0.5)
    _, _, logs = run(batch)
    assert logs["loss_ood"] < 1e-6 and logs["ood_conf_ratio"] == 0.0


def test_empty_ood_batch_equals_unimatch():
    empty = make_batch(n_ood=0)
    model, loss, logs = run(empty, method="semiovs")
    assert len(model.calls) == 3 and model.calls[1]["x"].shape[0] == 4
    batch = make_batch()
    batch["u_s1"] = one_hot_images([1, 0])  # make L_u non-zero so the normalisation matters
    empty["u_s1"] = batch["u_s1"]
    _, semi, _ = run(empty, method="semiovs")
    _, uni, _ = run(batch, method="unimatch")
    assert semi.item() == pytest.approx(uni.item()) and uni.item() > 1


def test_ood_only_unlabeled_batch():
    batch = make_batch(n_ood=3)
    for k in ("u_w", "u_s1", "u_s2", "ign_u", "box1", "box2", "m_w", "m_s1", "m_s2", "ign_m"):
        batch[k] = batch[k][:0]
    batch["y_o"] = torch.full_like(batch["y_o"], 1)  # wrong labels: L_o ~ 30
    model, loss, logs = run(batch)
    assert len(model.calls) == 2 and model.calls[1]["x"].shape[0] == 6  # no partner pass, no ID strong pass
    assert (model.calls[1]["x"][:3].argmax(1) == 3).all()  # OOD strong views stay unmixed
    assert logs["loss_u"] == 0.0 and logs["mask_ratio"] == 0.0
    assert loss.item() == pytest.approx((logs["loss_x"] + logs["loss_ood"]) / 2)  # (L_x + λ L_o) / (1 + λ)


def test_unimatch_and_supervised_forward_counts():
    model, _, logs = run(make_batch(), method="unimatch")
    assert len(model.calls) == 3 and model.calls[1]["x"].shape[0] == 4 and logs["loss_ood"] == 0.0
    model, loss, logs = run({"x": one_hot_images([0]), "y": torch.zeros(1, S, S, dtype=torch.long)},
                            method="supervised")
    assert len(model.calls) == 1 and logs["loss"] == logs["loss_x"] == pytest.approx(loss.item())


def test_mask_ratio_counts_confident_valid_id_pixels():
    batch = make_batch()
    batch["u_w"][1] = 0.0  # uniform logits: confidence 1/K < tau
    batch["ign_u"][0, :2] = 255  # half of image 0 is padding
    _, _, logs = run(batch)
    assert logs["mask_ratio"] == pytest.approx(8 / 24)


def test_batch_errors_name_the_fix():
    batch = make_batch()
    del batch["box2"]
    with pytest.raises(KeyError, match="lacks keys \\['box2'\\]"):
        run(batch)
    batch = make_batch()
    batch["m_w"] = batch["m_w"][:1]
    with pytest.raises(ValueError, match="same batch size as U"):
        run(batch)
    with pytest.raises(ValueError, match="valid: teacher, self"):
        run(make_batch(), source="ovs")
    with pytest.raises(ValueError, match="valid methods: supervised, unimatch, semiovs"):
        run(make_batch(), method="fixmatch")


def test_poly_schedule_values_and_head_multiplier():
    assert poly_lr(1e-3, 0, 100) == 1e-3
    assert poly_lr(1e-3, 50, 100) == pytest.approx(1e-3 * 0.5 ** 0.9)
    assert poly_lr(1e-3, 100, 100) == 0.0 and poly_lr(1e-3, 150, 100) == 0.0
    assert poly_lr(1.0, 25, 100, power=1.0) == pytest.approx(0.75)
    opt = build_optimizer(build_student("unet_small", 2, width=8), 1e-3, 10.0)
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["weight_decay"] == 1e-4
    apply_poly_lr(opt, 1e-3, 90, 100)
    base = 1e-3 * 0.1 ** 0.9
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([base, 10 * base])


def squares_batch(gen, n=8, side=16):
    """Bright squares (class 1) at random places on a dark noisy background (class 0)."""
    x = torch.rand(n, 3, side, side, generator=gen) * 0.3
    y = torch.zeros(n, side, side, dtype=torch.long)
    for i in range(n):
        top, left = torch.randint(0, side - 6, (2,), generator=gen).tolist()
        x[i, :, top:top + 6, left:left + 6] += 0.7
        y[i, top:top + 6, left:left + 6] = 1
    return x, y


def test_supervised_loss_falls_on_a_tiny_problem():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = build_student("unet_small", 2, width=8).train()
    opt = build_optimizer(model, 0.02, 1.0)
    losses = []
    supervised = StepOptions("supervised", tau=0.95, lambda_ood=1.0, ood_label_source="teacher")
    for it in range(40):
        apply_poly_lr(opt, 0.02, it, 40)
        x, y = squares_batch(gen)
        loss, logs = run_step(model, {"x": x, "y": y}, supervised)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(logs["loss"])
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.5 * first, f"loss did not fall: {first:.3f} -> {last:.3f}"


def test_semiovs_step_backpropagates_through_a_real_student():
    torch.manual_seed(0)
    model = build_student("unet_small", 3, width=8).train()
    n, side = 2, 17  # odd size on purpose
    img = lambda b: torch.randn(b, 3, side, side)  # noqa: E731
    mask = lambda b: torch.zeros(b, side, side, dtype=torch.uint8)  # noqa: E731
    box = torch.zeros(n, side, side, dtype=torch.bool)
    box[:, 3:9, 2:12] = True
    batch = dict(x=img(n), y=torch.randint(0, 3, (n, side, side)), u_w=img(n), u_s1=img(n), u_s2=img(n),
                 ign_u=mask(n), box1=box, box2=box.flip(-1), m_w=img(n), m_s1=img(n), m_s2=img(n), ign_m=mask(n),
                 o_w=img(3), o_s1=img(3), o_s2=img(3), ign_o=mask(3), y_o=torch.randint(0, 3, (3, side, side)))
    loss, logs = run_step(model, batch, StepOptions("semiovs", tau=0.0, lambda_ood=1.0, ood_label_source="teacher"))
    loss.backward()
    assert torch.isfinite(loss) and logs["loss_u"] > 0 and logs["loss_ood"] > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
