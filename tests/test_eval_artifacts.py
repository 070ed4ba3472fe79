"""Per-epoch evaluation pictures: the renderers (PNG bytes that decode to the expected picture), the config
key that turns the overlays off, and what the driver writes into a real MLflow store."""
import io

import numpy as np
import pytest
from PIL import Image

from orchestrator import eval_artifacts as ea
from orchestrator.config import build_config
from orchestrator.data.voc import voc_palette
from orchestrator.errors import ConfigError

SHAPES = ["background", "disk", "square", "triangle", "cross", "ring"]
VOC = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
       "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train", "tv"]


def decode(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def colour(k: int) -> tuple[int, int, int]:
    pal = voc_palette()
    return tuple(pal[3 * k:3 * k + 3])


def test_row_normalised_gives_percent_of_each_ground_truth_row():
    pct = ea.row_normalised([[8, 2, 0], [0, 0, 0], [1, 1, 2]])
    np.testing.assert_allclose(pct[0], [80.0, 20.0, 0.0])
    assert np.isnan(pct[1]).all()                      # a class absent from the ground truth has no row
    np.testing.assert_allclose(pct[2], [25.0, 25.0, 50.0])


@pytest.mark.parametrize("names", [SHAPES, VOC])
def test_confusion_matrix_png_decodes_and_grows_with_the_class_count(names):
    k = len(names)
    counts = np.full((k, k), 3) + np.eye(k, dtype=int) * 500
    counts[1] = 0
    image = decode(ea.confusion_matrix_png(counts, names, "epoch 3"))
    assert image.format == "PNG"
    width, height = image.size
    assert 300 <= width <= 1400 and 300 <= height <= 1400
    if k == len(VOC):   # 21 classes get a larger canvas than 6, so the cells stay legible
        small = decode(ea.confusion_matrix_png(np.eye(6, dtype=int), SHAPES))
        assert width > 1.8 * small.size[0]


def test_confusion_matrix_png_refuses_names_that_do_not_fit():
    with pytest.raises(ValueError, match="does not match 2 class names"):
        ea.confusion_matrix_png(np.eye(3, dtype=int), ["a", "b"])


def test_overlay_grid_rows_are_image_truth_prediction_in_the_voc_palette():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    truths = [np.full((64, 64), k + 1, np.uint8) for k in range(3)]
    preds = [np.full((64, 64), 4, np.uint8) for _ in range(3)]
    truths[0][:8] = 255
    grid = np.asarray(decode(ea.overlay_grid_png(images, truths, preds)).convert("RGB"))
    header = grid.shape[0] - 3 * 64 - 2 * ea.GAP
    assert grid.shape[1] == 3 * 64 + 2 * ea.GAP and header > 0     # small images keep their size
    for row in range(3):
        top = header + row * (64 + ea.GAP)
        np.testing.assert_array_equal(grid[top:top + 64, :64], images[row])
        assert (grid[top + 20, 64 + ea.GAP + 5] == colour(row + 1)).all()
        assert (grid[top + 20, 2 * (64 + ea.GAP) + 5] == colour(4)).all()
    assert (grid[header + 2, 64 + ea.GAP + 5] == colour(255)).all()   # ignore: VOC's boundary colour


def test_overlay_tiles_of_large_images_are_at_most_160_pixels():
    image = np.zeros((375, 500, 3), np.uint8)
    mask = np.zeros((375, 500), np.uint8)
    assert ea.tile_size(375, 500) == (120, 160) and ea.tile_size(500, 375) == (160, 120)
    grid = decode(ea.overlay_grid_png([image, image], [mask, mask], [mask, mask]))
    assert grid.size[0] == 3 * 160 + 2 * ea.GAP and grid.size[1] < 2 * 120 + 30
    with pytest.raises(ValueError, match="need as many images"):
        ea.overlay_grid_png([image], [mask], [])


def test_epoch_files_are_named_by_epoch_and_keep_the_overlay_bytes():
    png = ea.overlay_grid_png([np.zeros((8, 8, 3), np.uint8)], [np.zeros((8, 8), np.uint8)],
                              [np.ones((8, 8), np.uint8)])
    report = {ea.MATRIX_KEY: [[5, 1], [0, 3]], ea.CLASSES_KEY: ["bg", "fg"], ea.OVERLAY_KEY: ea.encode_png(png)}
    files = ea.epoch_files(report, 3)
    assert sorted(files) == ["confusion_matrix_epoch_003.png", "overlays_epoch_003.png"]
    assert files["overlays_epoch_003.png"] == png
    assert decode(files["confusion_matrix_epoch_003.png"]).format == "PNG"
    assert ea.epoch_files({"val_miou": 3.0}, 1) == {}


def test_overlay_images_key_default_and_range():
    assert build_config().train.overlay_images == 4
    assert build_config({"train.overlay_images": 0}).train.overlay_images == 0
    with pytest.raises(ConfigError, match=r"'train.overlay_images': 17 is out of range. Fix: use a value in \[0, 16\]"):
        build_config({"train.overlay_images": 17})
    with pytest.raises(ConfigError, match="'train.overlay_images': -1 is out of range"):
        build_config({"train.overlay_images": -1})
