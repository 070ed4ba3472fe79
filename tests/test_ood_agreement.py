"""OOD pseudo-label agreement with ground truth: the counts, the ground truth's path through augmentation and
the sampler (aligned with the image), its absence from the loss, and the per-epoch metrics."""
import copy

import numpy as np
import pytest
import torch

from orchestrator.core.config import build_config
from orchestrator.data.voc import save_mask
from tests.test_augment import PALETTE, block_sample
from tests.test_recipe import make_batch, run
from trainables.augment import IMAGENET_MEAN, IMAGENET_STD, unlabeled_views
from trainables.distributed import WorkerContext
from trainables.metrics import OOD_GT_COUNTS, label_agreement, label_agreement_counts
from trainables.models import build_student
from trainables.optim import build_optimizer
from trainables.recipe import StepOptions, run_step
from trainables.streams import BrokenSamples, StreamFiles, StreamSampler
from trainables.train_loop import runner_for, train_one_epoch

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def as_uint8(view: torch.Tensor) -> np.ndarray:
    """A normalised [3,H,W] view back to HxWx3 uint8."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((view * std + mean) * 255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()


def assert_truth_matches_image(image: np.ndarray, gt: np.ndarray) -> None:
    """Away from label edges, the image pixel has the palette colour of its ground-truth label."""
    interior = np.ones_like(gt, dtype=bool)
    for dy, dx in [(-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (1, 1), (-1, 1), (1, -1)]:
        interior &= np.roll(gt, (dy, dx), axis=(0, 1)) == gt
    interior[[0, -1]] = False
    interior[:, [0, -1]] = False
    body = interior & (gt < len(PALETTE))
    assert body.sum() > 50
    assert np.abs(image[body].astype(int) - PALETTE[gt[body]].astype(int)).max() <= 3


def test_counts_on_hand_made_tensors():
    label = torch.tensor([[1, 2, 3], [0, 0, 4]])
    used = torch.tensor([[True, True, False], [True, True, False]])
    truth = torch.tensor([[1, 0, 3], [255, 0, 4]])
    # ground truth at 5 pixels; used there: (0,0) (0,1) (1,1); right: (0,0) and (1,1);
    # labeled an object among the used: (0,0) (0,1), of which (0,0) is right (a "distractor" at (0,1))
    assert label_agreement_counts(label, used, truth) == dict(zip(OOD_GT_COUNTS, (2.0, 3.0, 5.0, 1.0, 2.0)))
    assert label_agreement(2.0, 3.0, 5.0, 1.0, 2.0)["ood_label_object_precision"] == pytest.approx(50.0)
    got = label_agreement(2.0, 3.0, 5.0)
    assert got == pytest.approx({"ood_label_agreement": 200 / 3, "ood_label_coverage": 60.0})
    assert label_agreement(0.0, 0.0, 5.0) == {"ood_label_coverage": 0.0}   # nothing used: no agreement
    assert label_agreement(0.0, 0.0, 0.0) == {}                              # no ground truth: nothing


@pytest.mark.parametrize("source", ["teacher", "self"])
def test_run_step_measures_the_ood_labels_it_trains_on(source):
    batch = make_batch(n_ood=3)                      # OOD images are class 3, teacher label 3 everywhere
    batch["ign_o"][0, :2] = 255                      # 8 teacher-ignored pixels in image 0
    batch["gt_o"] = torch.stack([torch.full((4, 4), 3), torch.full((4, 4), 1), torch.full((4, 4), 255)])
    _, _, logs = run(batch, source=source)
    # ground truth on images 0-1 (32 px); used: not ignored (24 px); right: image 0's 8 used pixels;
    # every used pixel is labeled an object (class 3), so object precision counts the same 8 of 24
    assert [logs[k] for k in OOD_GT_COUNTS] == [8.0, 24.0, 32.0, 8.0, 24.0]
    _, _, logs = run(make_batch(n_ood=3), source=source)
    assert not set(OOD_GT_COUNTS) & set(logs)        # no ground truth, no counts


def random_ood_batch(gen: torch.Generator, with_gt: bool, k: int = 3, s: int = 16) -> dict[str, torch.Tensor]:
    img = lambda n: torch.randn(n, 3, s, s, generator=gen)  # noqa: E731
    lab = lambda n: torch.randint(0, k, (n, s, s), generator=gen)  # noqa: E731
    box = lambda n: (torch.rand(n, s, s, generator=gen) > 0.6).to(torch.uint8)  # noqa: E731
    ign = lambda n: torch.where(torch.rand(n, s, s, generator=gen) > 0.8, 255, 0).to(torch.uint8)  # noqa: E731
    batch = dict(x=img(2), y=lab(2), u_w=img(2), u_s1=img(2), u_s2=img(2), ign_u=ign(2), box1=box(2), box2=box(2),
                 m_w=img(2), m_s1=img(2), m_s2=img(2), ign_m=ign(2), o_w=img(3), o_s1=img(3), o_s2=img(3),
                 ign_o=ign(3), y_o=lab(3))
    gt = lab(3)
    if with_gt:
        batch["gt_o"] = gt
    return batch


@pytest.mark.parametrize("source", ["teacher", "self"])
def test_ground_truth_never_changes_the_loss_or_the_gradients(source):
    torch.manual_seed(0)
    student = build_student("unet_small", 3, width=8).train()
    results = []
    for with_gt in (False, True):
        model = copy.deepcopy(student)
        batch = random_ood_batch(torch.Generator().manual_seed(1), with_gt)
        torch.manual_seed(2)                          # the same dropout masks in both runs
        loss, logs = run_step(model, batch, StepOptions("semiovs", tau=0.5, lambda_ood=1.0, ood_label_source=source))
        loss.backward()
        results.append((loss.detach(), logs, [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (loss_a, logs_a, grads_a), (loss_b, logs_b, grads_b) = results
    assert torch.equal(loss_a, loss_b) and len(grads_a) == len(grads_b) > 0
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))
    assert logs_b == {**logs_a, **{k: logs_b[k] for k in OOD_GT_COUNTS}}
    assert logs_b["ood_gt_valid_px"] == 3 * 16 * 16


def test_augmentation_moves_the_ground_truth_with_the_image():
    image, truth = block_sample(40, 56)
    label = np.where(truth == 255, 255, (truth + 1) % 5).astype(np.uint8)   # teacher label != ground truth
    for seed in range(10):
        plain = unlabeled_views(image, label, 48, 255, np.random.default_rng(seed))
        v = unlabeled_views(image, label, 48, 255, np.random.default_rng(seed), gt=truth)
        assert all(torch.equal(plain[k], v[k]) for k in plain)   # the extra channel changes no view
        assert v["gt"].dtype == torch.int64 and v["gt"].shape == (48, 48)
        assert torch.equal(v["gt"] == 255, v["mask"] == 255)   # the 255 tile and the padding, in both
        assert_truth_matches_image(as_uint8(v["u_w"]), v["gt"].numpy())
    small = unlabeled_views(image[:20, :30], label[:20, :30], 64, 255, np.random.default_rng(0), gt=truth[:20, :30])
    assert (small["gt"] == 255).sum() >= 64 * 64 - 40 * 60   # padding (the rescale is at most 2x) is 255


def write_sample(folder, name: str, seed: int) -> tuple[str, str]:
    from PIL import Image

    image, mask = block_sample(40, 56, seed=seed)
    image_path, mask_path = folder / f"{name}.png", folder / f"{name}_gt.png"
    Image.fromarray(image).save(image_path)       # lossless, so colours can be compared exactly
    save_mask(mask_path, mask)
    return str(image_path), str(mask_path)


def test_sampler_ood_batch_carries_aligned_ground_truth(tmp_path):
    files = [write_sample(tmp_path, f"ood_{i}", seed=i) for i in range(3)]
    ood = [(f"ood_{i}", image) for i, (image, _) in enumerate(files)]
    masks = [files[0][1], None, str(tmp_path / "missing.png")]   # one with, one without, one unreadable

    def sampler(ood_masks):
        return StreamSampler(StreamFiles([files[0]], ood=ood, ood_masks=ood_masks), ood_labels=None, crop=32,
                             seed=0, broken=BrokenSamples(), max_broken_share=0.5)

    batch = sampler(masks).ood_batch(12)
    assert batch["gt_o"].shape == (12, 32, 32) and batch["gt_o"].dtype == torch.int64
    with_gt = [i for i in range(12) if (batch["gt_o"][i] != 255).any()]
    assert 0 < len(with_gt) < 12                      # images 1 and 2 have no usable ground truth
    for i in with_gt:
        assert_truth_matches_image(as_uint8(batch["o_w"][i]), batch["gt_o"][i].numpy())
    plain = sampler([]).ood_batch(12)
    assert "gt_o" not in plain and all(torch.equal(plain[k], batch[k]) for k in plain)


def test_epoch_reports_agreement_and_coverage_in_percent(tmp_path):
    files = [write_sample(tmp_path, f"s_{i}", seed=i) for i in range(2)]
    cfg = build_config({"train.method": "semiovs", "ood.label_source": "self", "ood.ratio": 0.5,
                        "train.conf_thresh": 0.0, "train.batch_size": 2, "data.crop_size": 32,
                        "train.epochs": 1})
    streams = StreamFiles(files, [(f, None) for f, _ in files], [(f"s_{i}", f) for i, (f, _) in enumerate(files)],
                          [m for _, m in files])
    sampler = StreamSampler(streams, ood_labels=None, crop=32, seed=0, broken=BrokenSamples(), max_broken_share=0.5)
    torch.manual_seed(0)
    model = build_student("unet_small", 5, width=4)
    optimizer = build_optimizer(model, 0.01, 1.0)
    ctx = WorkerContext("local", 0, 1, torch.device("cpu"))
    runner = runner_for(model, optimizer, sampler, cfg, ctx, first_step=0, iters=2)
    logs = train_one_epoch(runner, 0)
    assert not set(OOD_GT_COUNTS) & set(logs)          # pooled into percentages, not reported as counts
    assert logs["ood_label_coverage"] == 100.0          # tau = 0: every valid pixel is trained on
    assert 0.0 <= logs["ood_label_agreement"] <= 100.0
