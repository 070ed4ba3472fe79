"""Augmentation: masks exact under rescale/pad/crop/flip, image-mask alignment, determinism, views, boxes."""

import random

import numpy as np
import pytest
import torch

from trainables.augment import (
    Compose,
    PadTo,
    RandomCrop,
    RandomHFlip,
    RandomRescale,
    cutmix_box,
    geometric,
    strong_view,
    to_tensor_normalized,
    unlabeled_views,
    weak_pair,
)

PALETTE = np.array([[0, 0, 0], [250, 0, 0], [0, 250, 0], [0, 0, 250], [250, 250, 0]], dtype=np.uint8)


def block_sample(h=40, w=56, block=8, seed=0):
    """Mask of labels 0..4 in block x block tiles (with a 255 boundary tile), image = palette colour of the label."""
    rng = np.random.default_rng(seed)
    tiles = rng.integers(0, 5, size=(-(-h // block), -(-w // block)))
    mask = np.kron(tiles, np.ones((block, block), dtype=np.int64))[:h, :w].astype(np.uint8)
    image = PALETTE[mask]
    mask[:block, :block] = 255
    return image, mask


def test_rescale_keeps_aspect_range_and_mask_values():
    image, mask = block_sample()
    for seed in range(20):
        img, m = RandomRescale(0.5, 2.0)(image, mask, np.random.default_rng(seed))
        assert img.shape[:2] == m.shape and img.dtype == np.uint8
        assert 28 <= max(m.shape) <= 112 and abs(m.shape[0] / m.shape[1] - 40 / 56) < 0.05
        assert set(np.unique(m)) <= set(np.unique(mask))


def test_pad_fills_image_with_zero_and_mask_with_fill():
    image, mask = block_sample(10, 12)
    img, m = PadTo(16, 254)(image, mask, np.random.default_rng(0))
    assert img.shape == (16, 16, 3) and m.shape == (16, 16)
    assert (m[10:] == 254).all() and (m[:, 12:] == 254).all() and (img[10:] == 0).all()
    np.testing.assert_array_equal(m[:10, :12], mask)


def test_flip_and_crop_move_image_and_mask_together():
    image, mask = block_sample()
    img, m = RandomHFlip(p=1.0)(image, mask, np.random.default_rng(0))
    np.testing.assert_array_equal(m, mask[:, ::-1])
    np.testing.assert_array_equal(img, image[:, ::-1])
    img, m = RandomCrop(32)(image, mask, np.random.default_rng(3))
    hits = [(t, l) for t in range(9) for l in range(25) if np.array_equal(mask[t:t + 32, l:l + 32], m)]
    assert any(np.array_equal(image[t:t + 32, l:l + 32], img) for t, l in hits)
    with pytest.raises(ValueError, match="put PadTo"):
        RandomCrop(64)(image, mask, np.random.default_rng(0))


@pytest.mark.parametrize("fill", [255, 254])
def test_geometric_masks_stay_exact_and_aligned_with_the_image(fill):
    image, mask = block_sample()
    for seed in range(30):
        img, m = geometric(image, mask, 48, fill, np.random.default_rng(seed))
        assert m.shape == (48, 48) and img.shape == (48, 48, 3)
        assert set(np.unique(m)) <= set(np.unique(mask)) | {fill}
        # Away from label edges the bilinear image still shows the colour of the label at that pixel.
        interior = np.ones_like(m, dtype=bool)
        for dy, dx in [(-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (1, 1), (-1, 1), (1, -1)]:
            interior &= np.roll(m, (dy, dx), axis=(0, 1)) == m
        interior[[0, -1]] = False
        interior[:, [0, -1]] = False
        body = interior & (m < 5)
        assert body.sum() > 100
        diff = np.abs(img[body].astype(int) - PALETTE[m[body]].astype(int)).max()
        assert diff <= 2, f"seed {seed}: image and mask misaligned (max colour error {diff})"
        if fill == 254:  # (255 also marks the GT boundary tile, which keeps its colour)
            assert (img[interior & (m == fill)] == 0).all()


def test_views_are_deterministic_by_seed_and_ignore_global_rng():
    image, mask = block_sample()
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    a = unlabeled_views(image, mask, 48, 254, np.random.default_rng(7))
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    b = unlabeled_views(image, mask, 48, 254, np.random.default_rng(7))
    c = unlabeled_views(image, mask, 48, 254, np.random.default_rng(8))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["u_s1"], c["u_s1"])


def test_strong_view_changes_colours_not_geometry():
    image, _ = block_sample()
    outs = [strong_view(image, np.random.default_rng(s)) for s in range(100)]
    assert all(o.shape == image.shape and o.dtype == np.uint8 for o in outs)
    unchanged = sum(np.array_equal(o, image) for o in outs)
    assert 2 <= unchanged <= 16  # identity only when no op fires: 0.2 * 0.8 * 0.5 = 8%
    gray = sum(bool((o[..., 0] == o[..., 1]).all() and (o[..., 1] == o[..., 2]).all()) for o in outs)
    assert 10 <= gray <= 32  # grayscale p = 0.2
    assert not np.array_equal(outs[0], outs[1])


def test_cutmix_box_is_one_rectangle_of_the_paper_size():
    assert not cutmix_box(32, np.random.default_rng(0), p=0.0).any()
    for seed in range(50):
        box = cutmix_box(64, np.random.default_rng(seed), p=1.0)
        ys, xs = np.nonzero(box)
        assert box.dtype == np.uint8 and box.shape == (64, 64)
        if len(ys) == 0:
            continue
        assert box[ys.min():ys.max() + 1, xs.min():xs.max() + 1].all()  # one filled rectangle
        assert box.sum() <= 0.4 * 64 * 64
    areas = [cutmix_box(64, np.random.default_rng(s), p=1.0).sum() for s in range(200)]
    assert np.mean(areas) == pytest.approx(0.21 * 64 * 64, rel=0.2)
    hits = [cutmix_box(16, np.random.default_rng(s), p=0.5).any() for s in range(400)]
    assert 0.4 < np.mean(hits) < 0.6


def test_unlabeled_views_mark_id_padding_only():
    image, mask = block_sample(20, 30)  # long side <= 60 < 64: every crop has padding
    v = unlabeled_views(image, mask, 64, 254, np.random.default_rng(0))
    assert v["u_w"].shape == v["u_s1"].shape == v["u_s2"].shape == (3, 64, 64)
    assert v["ign"].dtype == torch.uint8 and v["box1"].shape == v["box2"].shape == (64, 64)
    assert torch.equal(v["ign"] == 255, v["mask"] == 254)
    assert (v["mask"] == 255).any()  # GT boundary pixels of ID images are not ignored (paper)
    assert (v["u_w"][:, v["ign"] == 255] == to_tensor_normalized(np.zeros((1, 1, 3), np.uint8))[:, 0]).all()


def test_unlabeled_views_ood_ignore_moves_with_the_label():
    image, mask = block_sample(40, 56)
    for seed in range(5):
        v = unlabeled_views(image, mask, 48, 255, np.random.default_rng(seed))
        assert torch.equal(v["ign"] == 255, v["mask"] == 255)  # OOD: teacher-ignored + padding
        assert "conf" not in v


def test_weak_pair_tensors_and_normalisation():
    image, mask = block_sample()
    x, y = weak_pair(image, mask, 32, 255, np.random.default_rng(0))
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    t = to_tensor_normalized(np.full((2, 2, 3), 255, np.uint8))
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(t[:, 0, 0], (1 - mean) / std)


def test_compose_applies_ops_in_order():
    image, mask = block_sample(10, 10)
    ops = Compose([PadTo(12, 254), RandomHFlip(p=1.0)])
    _, m = ops(image, mask, np.random.default_rng(0))
    assert (m[:, :2] == 254).all() and (m[10:] == 254).all()
