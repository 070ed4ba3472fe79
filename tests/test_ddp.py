"""Ray Train DDP with 2 gloo workers: completes, checkpoints every epoch, and a second run with the same
name resumes from the last checkpoint (its workers now fed by loader processes) and reports the same
metric keys."""
from __future__ import annotations

import pytest

from orchestrator.core.config import build_config, flatten
from tests.conftest import TINY
from trainables.run_state import check_resumable

pytestmark = pytest.mark.e2e


def fit(cfg_overrides, cache, storage):
    from orchestrator.data.plan import build_plan
    from orchestrator.trial import build_trainer, make_trial_input

    cfg = build_config({**TINY, "train.method": "unimatch", "train.num_workers": 2,
                        "resources.cpus_per_worker": 1.0, **cfg_overrides})
    trial = make_trial_input(cfg, build_plan(cfg, cache), None, storage / "files", mode="train")
    trainer = build_trainer(trial, name="ddp-run", storage=str(storage), callbacks=[])
    return trainer.fit()


def test_two_worker_ddp_completes_checkpoints_and_resumes(ray_session, shared_cache, tmp_path):
    first = fit({"train.epochs": 1}, shared_cache, tmp_path)
    assert first.metrics["epoch"] == 1 and first.metrics["resumed_from_epoch"] == 0
    assert first.checkpoint is not None
    # startup_seconds is reported by the first epoch a run trains, so it is in the resumed run's last report
    keys = {k for k in first.metrics if not k.startswith("val_iou.")} | {"startup_seconds"}
    assert {"val_miou", "best_val_miou", "loss", "loss_x", "loss_u", "mask_ratio", "lr"} <= keys

    # same name + storage: Train resumes, now with a loader process per worker (a resumable change)
    again = fit({"train.epochs": 2, "train.loader_workers": 1}, shared_cache, tmp_path)
    assert again.metrics["resumed_from_epoch"] == 1 and again.metrics["epoch"] == 2
    assert keys == {k for k in again.metrics if not k.startswith("val_iou.")}
    assert again.metrics["step"] == 2 * TINY["train.iters_per_epoch"]
    assert 0 <= again.metrics["input_wait_share"] < 1


def test_resume_refuses_a_checkpoint_from_other_settings():
    saved = flatten(build_config())
    check_resumable(saved, {**saved, "train.epochs": 99, "resources.cpus_per_worker": 2.0})
    with pytest.raises(ValueError, match=r"other settings \(train.lr\)"):
        check_resumable(saved, {**saved, "train.lr": 0.5})
