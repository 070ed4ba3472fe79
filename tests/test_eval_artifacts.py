"""Per-epoch evaluation pictures: the renderers (PNG bytes that decode to the expected picture), the config
key that turns the overlays off, and what the driver writes into a real MLflow store."""
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainables import pictures as ea
from orchestrator.core.config import build_config
from orchestrator.core.masks import voc_palette
from orchestrator.core.errors import ConfigError

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


def test_epoch_pictures_are_files_named_by_epoch(tmp_path):
    samples = [(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8), np.ones((8, 8), np.uint8))]
    written = ea.write_epoch_pictures(tmp_path, 3, [[5, 1], [0, 3]], ["bg", "fg"], samples)
    assert sorted(p.name for p in written) == ["confusion_matrix_epoch_003.png", "overlays_epoch_003.png"]
    assert decode((tmp_path / "overlays_epoch_003.png").read_bytes()).size[0] == 3 * 8 + 2 * ea.GAP
    assert decode((tmp_path / "confusion_matrix_epoch_003.png").read_bytes()).format == "PNG"
    assert [p.name for p in ea.write_epoch_pictures(tmp_path / "off", 1, [[1]], ["bg"], [])] == \
        ["confusion_matrix_epoch_001.png"]                        # overlays off
    assert not list(tmp_path.glob(".*"))                          # no temporary left behind


def test_overlay_images_key_default_and_range():
    assert build_config().train.overlay_images == 4
    assert build_config({"train.overlay_images": 0}).train.overlay_images == 0
    with pytest.raises(ConfigError, match=r"'train.overlay_images': 17 is out of range. Fix: use a value in \[0, 16\]"):
        build_config({"train.overlay_images": 17})
    with pytest.raises(ConfigError, match="'train.overlay_images': -1 is out of range"):
        build_config({"train.overlay_images": -1})


# ---- the worker side: evaluation keeps what the pictures need -------------------------------------

def write_val(folder, n: int) -> list[tuple[str, str]]:
    from orchestrator.data.voc import save_mask
    from tests.test_augment import block_sample

    pairs = []
    for i in range(n):
        image, mask = block_sample(40, 56, seed=i)
        pairs.append((str(folder / f"v{i}.png"), str(folder / f"v{i}_gt.png")))
        Image.fromarray(image).save(pairs[-1][0])
        save_mask(pairs[-1][1], mask)
    return pairs


def test_evaluate_keeps_the_first_images_with_their_predictions(tmp_path, torch_one_thread):
    import torch

    from orchestrator.core.images import load_image, load_mask
    from trainables.distributed import WorkerContext
    from trainables.models import build_student
    from trainables.evaluation import evaluate

    val = write_val(tmp_path, 3)
    torch.manual_seed(0)
    model, ctx = build_student("unet_small", 6, width=4), WorkerContext("local", 0, 1, torch.device("cpu"))
    ev = evaluate(model, val, 6, ctx, keep=2)
    assert len(ev.samples) == 2
    for (image, truth, pred), (image_path, mask_path) in zip(ev.samples, val):
        np.testing.assert_array_equal(image, load_image(image_path))
        np.testing.assert_array_equal(truth, load_mask(mask_path))
        assert pred.shape == truth.shape and pred.dtype == np.uint8 and pred.max() < 6
    valid = sum(int((load_mask(m) != 255).sum()) for _, m in val)
    assert np.asarray(ev.confusion).sum() == valid and np.asarray(ev.confusion).shape == (6, 6)
    assert evaluate(model, val, 6, ctx).samples == []            # keep=0: overlays off

    grid = decode(ea.overlay_grid_png(*zip(*ev.samples)))
    assert grid.size[0] == 3 * 56 + 2 * ea.GAP


# ---- the driver side: pictures into a real MLflow store --------------------------------------------

def report_for(epoch: int, files_dir: Path, overlays: bool = True) -> dict:
    """What a rank-0 worker leaves for one epoch: the pictures as files, the numbers as the report."""
    samples = [(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8), np.ones((8, 8), np.uint8))]
    ea.write_epoch_pictures(files_dir, epoch, [[5, 1], [0, 3]], ["bg", "fg"], samples if overlays else [])
    return {"epoch": epoch, "val_miou": 10.0 * epoch}


def eval_files(client, run_id: str) -> list[str]:
    return sorted(a.path for a in client.list_artifacts(run_id, "eval"))


def test_single_run_logger_logs_pictures_once_per_epoch(sqlite_uri, tmp_path):
    from orchestrator.tracking import client as tracking

    exp = tracking.ensure_experiment(sqlite_uri, "pictures")
    run_id = tracking.create_run(sqlite_uri, exp, "run", {})
    logger = tracking.EpochLogger(sqlite_uri, run_id, tmp_path)
    assert logger.log(report_for(1, tmp_path))
    assert not logger.log(report_for(1, tmp_path))   # a restarted worker group reports its checkpoint's epoch again
    assert logger.log(report_for(2, tmp_path, overlays=False))
    client = tracking.client(sqlite_uri)
    assert eval_files(client, run_id) == ["eval/confusion_matrix_epoch_001.png", "eval/confusion_matrix_epoch_002.png",
                                          "eval/overlays_epoch_001.png"]
    assert [m.step for m in client.get_metric_history(run_id, "val_miou")] == [1, 2]
    local = client.download_artifacts(run_id, "eval/overlays_epoch_001.png")
    assert decode(open(local, "rb").read()).size[0] == 3 * 8 + 2 * ea.GAP


def test_sweep_callback_logs_pictures_once_also_after_a_driver_restart(sqlite_uri, tmp_path):
    """Tune's side of the same rule; a stand-in for Tune's Trial carries only what the callback reads."""
    from types import SimpleNamespace

    from orchestrator.core.paths import run_files_dir, train_run_name
    from orchestrator.tracking import client as tracking
    from orchestrator.tracking.callback import make_trial_callback, register
    from orchestrator.tracking.reconcile import SweepLedger
    from orchestrator.tracking.writer import TrackingWriter

    def callback_of_a_new_driver(progress=None):
        writer = TrackingWriter()   # the callback only queues; this thread writes
        register("sweep_pictures", SweepLedger(sqlite_uri, exp, parent, "sweep_pictures", {}, tmp_path), writer)
        return make_trial_callback("sweep_pictures", progress), writer

    exp = tracking.ensure_experiment(sqlite_uri, "sweep_pictures")
    parent = tracking.start_parent_run(sqlite_uri, exp, "sweep_pictures", {}, resume=False)
    trial = SimpleNamespace(trial_id="t0001", config={"ood.ratio": 0.5})
    files = run_files_dir(tmp_path, train_run_name("t0001"))
    printed = []
    callback, writer = callback_of_a_new_driver(lambda tid, cfg, result: printed.append(dict(result)))
    for epoch in (1, 2):
        callback.on_trial_result(0, [], trial, report_for(epoch, files))
    assert writer.flush(30)
    assert [r["epoch"] for r in printed] == [1, 2]

    client = tracking.client(sqlite_uri)
    run_id = tracking.find_runs(sqlite_uri, exp, role="trial", trial_id="t0001")[0].info.run_id

    def matrix_2() -> bytes:
        return Path(client.download_artifacts(run_id, "eval/confusion_matrix_epoch_002.png")).read_bytes()

    before = matrix_2()
    ea.write_epoch_pictures(files, 2, [[1, 1], [1, 1]], ["changed", "names"], [])   # a re-run epoch 2 redraws
    restarted, writer = callback_of_a_new_driver()
    restarted.on_trial_result(0, [], trial, {"epoch": 2, "val_miou": 20.0})
    restarted.on_trial_result(0, [], trial, report_for(3, files))
    assert writer.flush(30)
    assert matrix_2() == before                           # epoch 2 was in MLflow already: not logged again
    assert eval_files(client, run_id) == [f"eval/{kind}_epoch_00{e}.png" for kind in ("confusion_matrix", "overlays")
                                          for e in (1, 2, 3)]
    assert [m.step for m in client.get_metric_history(run_id, "val_miou")] == [1, 2, 3]
