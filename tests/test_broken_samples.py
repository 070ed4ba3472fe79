"""A broken image never kills a run: it is skipped, counted and listed with the run; too many stop it."""
from __future__ import annotations

import pytest

from tests.conftest import TINY

pytestmark = pytest.mark.e2e


def make_dataset(tmp_path, broken: int, val_kinds: tuple[str, ...] = ()):
    """The smoke benchmark with `broken` unlabeled JPEGs truncated, and one val file per kind broken (an image
    for image kinds, the mask for `out_of_range`). Returns the root and the broken paths."""
    from orchestrator.data.shapes import ShapesSpec, generate_shapes
    from orchestrator.data.voc import SegDataset
    from tests.broken_files import write_broken_image, write_broken_mask

    root = tmp_path / "data"
    generate_shapes(ShapesSpec.smoke(), root)
    data = SegDataset.resolve(root, "8")
    for image, _ in data.unlabeled[:broken]:
        with open(image, "r+b") as f:   # truncate the JPEG: a typical half-copied file
            f.truncate(200)
    val = [str(write_broken_mask(mask, kind) if kind == "out_of_range" else write_broken_image(image, kind))
           for (image, mask), kind in zip(data.val, val_kinds)]
    return root, [image for image, _ in data.unlabeled[:broken]] + val


def run(tmp_path, root, cache, uri):
    from orchestrator.single_run import TrainRequest, run_single

    overrides = {**TINY, "data.root": str(root), "data.split": "8", "train.method": "unimatch",
                 "train.num_workers": 0, "train.iters_per_epoch": 12}  # ~190 draws of 32 images
    return run_single(TrainRequest(overrides=overrides, experiment="broken", tracking_uri=uri,
                                   storage=str(tmp_path / "runs"), cache=str(cache), quiet=True))


def test_broken_unlabeled_images_are_skipped_counted_and_listed(ray_session, tmp_path, sqlite_uri):
    from mlflow.tracking import MlflowClient

    root, broken = make_dataset(tmp_path, broken=1, val_kinds=("empty", "bomb", "symlink_loop", "out_of_range"))
    out = run(tmp_path, root, tmp_path / "cache", sqlite_uri)
    assert out["epochs"] == 2
    client = MlflowClient(sqlite_uri)
    run_data = client.get_run(out["run_id"]).data
    assert run_data.metrics["broken_samples"] == 5   # the unlabeled one and every broken val file
    listed = client.download_artifacts(out["run_id"], "broken_samples.txt", str(tmp_path))
    assert open(listed).read().split() == sorted(broken)


def test_a_mostly_broken_corpus_stops_with_a_clear_message(ray_session, tmp_path, sqlite_uri):
    from orchestrator.core.errors import UserError

    root, _ = make_dataset(tmp_path, broken=20)
    with pytest.raises(UserError, match=r"training images are unreadable .* Fix: run `python run.py data check"):
        run(tmp_path, root, tmp_path / "cache", sqlite_uri)
