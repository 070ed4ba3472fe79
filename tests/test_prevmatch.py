"""PrevMatch guidance (docs/method.md §5): schedule, loss, ensemble draws, snapshot list, checkpoint, config, space."""
import copy
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from torch import nn

from orchestrator.core.config import build_config
from orchestrator.core.errors import ConfigError
from orchestrator.sweep.space import load_space, resolve_base
from tests.test_ood_agreement import write_sample
from trainables.distributed import WorkerContext
from trainables.losses import LossTerms, LossWeights, combine_losses
from trainables.models import build_student
from trainables.prevmatch import (PrevGuidance, ensemble_logits, make_generator, prev_loss, restore_snapshots,
                                  sample_ensemble, snapshot_states, triangle_weight, update_snapshots)
from trainables.recipe import StepOptions, run_step
from trainables.inputs import TrialInput
from trainables.run_state import STATE_FILE
from trainables.train_loop import run_training

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SPACE = Path(__file__).parent.parent / "search_spaces" / "prevmatch.yaml"


# ---- schedule and combination ---------------------------------------------------------------------

@pytest.mark.parametrize("epochs", [80, 6])
def test_triangle_schedule_rises_to_one_at_half_then_falls(epochs):
    assert triangle_weight(0, epochs) == 0.0
    assert triangle_weight(epochs // 2, epochs) == 1.0
    assert triangle_weight(epochs - 1, epochs) == pytest.approx(2 / epochs)   # 1 - (E/2 - 1) / (E/2)
    assert triangle_weight(epochs // 4, epochs) == pytest.approx((epochs // 4) / (epochs / 2))
    assert all(0.0 <= triangle_weight(e, epochs) <= 1.0 for e in range(epochs))


@pytest.mark.parametrize("method,lam_prev,loss_prev,expected", [
    ("unimatch", 0.5, 4.0, (1 + 2 + 0.5 * 4) / 2.5),
    ("semiovs", 0.5, 4.0, (1 + 2 + 0.5 * 4 + 3) / 3.5),
    ("semiovs", 1.0, 4.0, (1 + 2 + 4 + 3) / 4),
    ("semiovs", 0.0, 4.0, (1 + 2 + 3) / 3),           # λ_prev = 0 (epoch 0): the plain SemiOVS total
    ("semiovs", 0.5, None, (1 + 2 + 3) / 3),          # no past model yet: λ_prev leaves the denominator too
])
def test_combine_losses_with_prev_term(method, lam_prev, loss_prev, expected):
    lx, lu, lo = torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0)
    lp = None if loss_prev is None else torch.tensor(loss_prev)
    got = combine_losses(method, LossTerms(lx, lu, lo, prev=lp), LossWeights(1.0, lambda_prev=lam_prev))
    assert got.item() == pytest.approx(expected)


def test_combine_losses_refuses_negative_lambda_prev():
    one = torch.tensor(1.0)
    with pytest.raises(ValueError, match="lambda_prev must be >= 0, got -1"):
        combine_losses("unimatch", LossTerms(one, one, one, prev=one), LossWeights(1.0, lambda_prev=-1.0))


# ---- run_step with the real student --------------------------------------------------------------

def random_batch(method: str, b: int = 2, side: int = 16, classes: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    img = lambda n: torch.randn(n, 3, side, side, generator=g)  # noqa: E731
    ign = torch.zeros(b, side, side, dtype=torch.uint8)
    ign[:, -2:] = 255                                           # some padding
    batch = dict(x=img(b), y=torch.randint(0, classes, (b, side, side), generator=g),
                 u_w=img(b), u_s1=img(b), u_s2=img(b), ign_u=ign, m_w=img(b), m_s1=img(b), m_s2=img(b),
                 ign_m=ign.clone(), box1=torch.rand(b, side, side, generator=g) > 0.6,
                 box2=torch.rand(b, side, side, generator=g) > 0.6)
    if method == "semiovs":
        batch.update(o_w=img(b), o_s1=img(b), o_s2=img(b), ign_o=torch.zeros(b, side, side, dtype=torch.uint8),
                     y_o=torch.randint(0, classes, (b, side, side), generator=g))
    return batch


def step(model, method, batch, prev=None):
    torch.manual_seed(0)   # the FP dropout draws
    loss, logs = run_step(model, batch, StepOptions(method, tau=0.5, lambda_ood=1.0, ood_label_source="teacher",
                                                 prev=prev))
    loss.backward()
    return loss, logs, [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("method", ["unimatch", "semiovs"])
def test_empty_snapshot_list_gives_plain_method_bit_for_bit(method):
    torch.manual_seed(0)
    model = build_student("unet_small", 5, width=4)
    batch = random_batch(method)
    plain = step(copy.deepcopy(model), method, batch)
    guided = step(copy.deepcopy(model), method, batch, PrevGuidance([], make_generator(0), weight=0.7))
    assert torch.equal(plain[0], guided[0]) and all(torch.equal(a, b) for a, b in zip(plain[2], guided[2]))
    assert guided[1]["loss_prev"] == 0.0 and "loss_prev" not in plain[1]


class Recorder(nn.Module):
    """Wraps a snapshot and records what it was fed, in which mode."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, []

    def forward(self, x):
        self.calls.append(dict(x=x.clone(), training=self.inner.training, grad=torch.is_grad_enabled()))
        return self.inner(x)


@pytest.mark.parametrize("method,id_weight", [("unimatch", 2.0), ("semiovs", 3.0)])
def test_guidance_enters_the_total_with_lambda_prev(method, id_weight):
    torch.manual_seed(0)
    model = build_student("unet_small", 5, width=4)
    batch = random_batch(method)
    past = Recorder(update_snapshots([], model, True, 8)[0])
    plain, _, _ = step(copy.deepcopy(model), method, batch)
    guide = PrevGuidance([past], make_generator(0), 0.5, thresh=0.0)   # untrained: keep every pixel
    guided, logs, _ = step(copy.deepcopy(model), method, batch, guide)
    assert logs["loss_prev"] > 0
    assert guided.item() == pytest.approx((plain.item() * id_weight + 0.5 * logs["loss_prev"]) / (id_weight + 0.5))
    (call,) = past.calls                        # one eval-mode, no-grad pass over [u_w; m_w]; never the OOD images
    assert torch.equal(call["x"], torch.cat([batch["u_w"], batch["m_w"]]))
    assert not call["training"] and not call["grad"]


# ---- the loss on hand-made logits --------------------------------------------------------------------

class FixedLogits(nn.Module):
    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, x):
        assert x.shape[0] == self.logits.shape[0]
        return self.logits


def pixels(*pairs):
    """[1, 2, 1, W] logits from (class-0 logit, class-1 logit) per pixel of a 1×W image."""
    return torch.tensor(pairs, dtype=torch.float).T.reshape(1, 2, 1, len(pairs))


def test_prev_loss_uses_confident_pixels_and_divides_by_all_valid_ones():
    u = pixels((5, 0), (0, 1), (0, 4), (3, 0))    # labels 0, 1, 1, 0; conf .993, .731, .982, .953
    m = pixels((0, 6), (0, 6), (0, 6), (0, 6))    # label 1 everywhere, conf .998
    zeros = torch.zeros(1, 1, 4, dtype=torch.uint8)
    ign_u = zeros.clone()
    ign_u[0, 0, 3] = 255                          # the last pixel is padding
    box1 = torch.tensor([[[False, True, False, False]]])   # pixel 1 of strong view 1 comes from m
    batch = dict(u_w=torch.zeros(1, 3, 1, 4), m_w=torch.zeros(1, 3, 1, 4), ign_u=ign_u, ign_m=zeros,
                 box1=box1, box2=torch.zeros_like(box1))
    student = pixels(*[(2, 0)] * 4)               # CE: a for label 0, b for label 1
    a, b = math.log1p(math.exp(-2)), math.log1p(math.exp(2))

    def loss(thresh):
        guide = PrevGuidance([FixedLogits(torch.cat([u, m]))], make_generator(0), 1.0, max_k=3, thresh=thresh)
        return prev_loss(guide, batch, student, student, student).item()

    # 3 valid pixels in every view; pixel 1 (conf .731) drops out below 0.9 except where m was pasted
    assert loss(0.9) == pytest.approx(0.25 * (a + 2 * b) / 3 + 0.25 * (a + b) / 3 + 0.5 * (a + b) / 3)
    assert loss(0.7) == pytest.approx((a + 2 * b) / 3)        # every valid pixel passes
    assert loss(0.999) == 0.0


def test_ensemble_is_the_weighted_sum_of_the_chosen_models():
    one, two = pixels((1, 2)), pixels((4, -2))
    got = ensemble_logits([FixedLogits(one), FixedLogits(two)], [0.25, 0.75], torch.zeros(1, 3, 1, 1))
    assert torch.allclose(got, 0.25 * one + 0.75 * two)


def test_ensemble_draws_stay_within_the_list_and_the_cap():
    g = make_generator(0)
    for n in range(1, 9):
        for max_k in (1, 2, 3, 5):
            sizes = set()
            for _ in range(60):
                chosen, weights = sample_ensemble(n, max_k, g)
                assert 1 <= len(chosen) <= min(n, max_k)
                assert len(set(chosen)) == len(chosen) and all(0 <= i < n for i in chosen)
                assert len(weights) == len(chosen) and min(weights) > 0
                assert sum(weights) == pytest.approx(1.0, abs=1e-12)
                sizes.add(len(chosen))
            assert sizes == set(range(1, min(n, max_k) + 1))      # K ~ U{1..min(max_k, n)}


def test_ensemble_draws_are_reproducible_from_the_seed():
    draw = lambda seed: [sample_ensemble(8, 3, g) for g in [make_generator(seed)] for _ in range(5)]  # noqa: E731
    assert draw(3) == draw(3) and draw(3) != draw(4)


# ---- snapshot list and checkpoint --------------------------------------------------------------------

def first_weight(model: nn.Module) -> torch.Tensor:
    return next(model.parameters())


def snapshots_of(model, values, max_models=8):
    snaps = []
    for v in values:
        with torch.no_grad():
            first_weight(model).fill_(v)
        snaps = update_snapshots(snaps, model, True, max_models)
    return snaps


def test_snapshot_only_after_a_new_best_and_capped_oldest_first():
    model = build_student("unet_small", 3, width=4)
    assert update_snapshots([], model, False, 8) == []
    snaps = snapshots_of(model, range(10))
    assert [int(first_weight(s).flatten()[0]) for s in snaps] == list(range(2, 10))   # 0 and 1 dropped
    assert update_snapshots(snaps, model, False, 8) == snaps
    assert all(not s.training and not any(p.requires_grad for p in s.parameters()) for s in snaps)
    assert model.training and all(p.requires_grad for p in model.parameters())   # the student is untouched


def test_checkpoint_round_trip_restores_the_snapshots(tmp_path):
    model = build_student("unet_small", 3, width=4)
    snaps = snapshots_of(model, [1.0, 2.0, 3.0])
    for s in snaps:   # distinct BN statistics too
        s.train()(torch.randn(2, 3, 16, 16))
        s.eval()
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": model.state_dict(), "prev_models": snapshot_states(snaps), "prev_new_best": True}, path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    restored = restore_snapshots(state["prev_models"], build_student("unet_small", 3, width=4))
    x = torch.randn(1, 3, 16, 16)
    assert len(restored) == 3 and state["prev_new_best"] is True
    for old, new in zip(snaps, restored):
        assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), new.state_dict().values()))
        assert not new.training and not any(p.requires_grad for p in new.parameters())
        with torch.no_grad():
            assert torch.equal(old(x), new(x))


@dataclass
class RecordingContext(WorkerContext):
    """Local context whose checkpoints go through torch.save / torch.load(weights_only=True) like Ray's."""

    resume: bytes | None = None
    reports: list = field(default_factory=list)

    def latest_checkpoint(self):
        return None if self.resume is None else torch.load(io.BytesIO(self.resume), weights_only=True)

    def report(self, metrics, state):
        buffer = io.BytesIO()
        torch.save(state, buffer)
        self.reports.append((metrics, buffer.getvalue()))


def test_run_training_keeps_logs_and_resumes_the_past_models(tmp_path):
    files = [write_sample(tmp_path, f"s_{i}", seed=i) for i in range(3)]
    cfg = build_config({"train.method": "unimatch", "train.prevmatch": True, "train.epochs": 3,
                        "train.iters_per_epoch": 2, "train.batch_size": 2, "train.overlay_images": 0,
                        "train.prev_thresh": 0.0,
                        "data.crop_size": 32, "model.width": 4})
    trial = TrialInput(cfg, labeled=tuple(files), unlabeled=tuple((f, None) for f, _ in files), val=tuple(files),
                       ood=(), ood_masks=(), class_names=("c0", "c1", "c2", "c3", "c4"), label_store=None,
                       files_dir=str(tmp_path / "files"), mode="local")
    ctx = RecordingContext("local", 0, 1, torch.device("cpu"))
    run_training(trial, ctx)
    metrics = [m for m, _ in ctx.reports]
    assert [m["lambda_prev"] for m in metrics] == pytest.approx([0.0, 2 / 3, 2 / 3])
    assert metrics[0]["val_miou"] > 0 and metrics[0]["prev_models"] == 0 and metrics[0]["loss_prev"] == 0.0
    bests = [m["val_miou"] > max([0.0] + [p["val_miou"] for p in metrics[:i]]) for i, m in enumerate(metrics)]
    assert [m["prev_models"] for m in metrics] == [0, sum(bests[:1]), sum(bests[:2])]
    assert metrics[1]["loss_prev"] > 0
    state = torch.load(io.BytesIO(ctx.reports[1][1]), weights_only=True)[STATE_FILE]
    assert len(state["prev_models"]) == 1 and state["prev_new_best"] == bests[1]
    assert all(isinstance(v, (int, float)) for m in metrics for v in m.values())   # reports carry numbers only
    assert sorted(p.name for p in (tmp_path / "files").glob("*.png")) == [f"confusion_matrix_epoch_00{e}.png"
                                                                     for e in (1, 2, 3)]

    resumed = RecordingContext("local", 0, 1, torch.device("cpu"), resume=ctx.reports[1][1])
    run_training(trial, resumed)
    (replayed, no_state), (last, _) = resumed.reports
    # the checkpoint's own epoch is reported again first (its report may have been lost with a node), unchanged
    assert replayed == metrics[1] and torch.load(io.BytesIO(no_state), weights_only=True) is None
    assert last["epoch"] == 3 and last["prev_models"] == metrics[2]["prev_models"]


# ---- config and search space ---------------------------------------------------------------------

def test_config_defaults_and_refusal_with_supervised():
    train = build_config().train
    assert (train.prevmatch, train.prev_max_models, train.prev_max_k, train.prev_thresh) == (False, 8, 3, 0.9)
    assert build_config({"train.method": "unimatch", "train.prevmatch": True}).train.prevmatch
    with pytest.raises(ConfigError, match=r"--set: config key 'train.prevmatch': applies only to train.method "
                                          r"unimatch or semiovs, not supervised. Fix: set train.method to "
                                          r"unimatch or semiovs, or train.prevmatch to false."):
        build_config({"train.method": "supervised", "train.prevmatch": True}, "--set")
    with pytest.raises(ConfigError, match=r"'train.prev_max_k': must be >= 1. Fix: use e.g. 3"):
        build_config({"train.prev_max_k": 0})
    with pytest.raises(ConfigError, match=r"'train.prev_thresh': 1.5 is out of range"):
        build_config({"train.prev_thresh": 1.5})


def test_prevmatch_space_parses_and_every_trial_config_is_valid():
    space = load_space(SPACE)
    assert space.name == "prevmatch" and space.num_trials() == 12
    assert space.parameters["train.prevmatch"].args == (False, True)
    assert space.parameters["train.method"].args == ("unimatch", "semiovs")
    base = resolve_base(space, {})
    assert base["data.split"] == "16" and base["train.num_workers"] == 0 and base["resources.trial_cpus"] == 1
    for method in ("unimatch", "semiovs"):
        for on in (False, True):
            cfg = build_config({**base, "train.method": method, "train.prevmatch": on}, str(SPACE))
            assert cfg.train.prevmatch is on and cfg.train.method == method
