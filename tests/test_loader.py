"""The input pipeline (trainables.loader) and the GPU-side settings (trainables.device_setup), on CPU:
loader processes make exactly the batches the training process makes, in step order, also after a resume;
unreadable samples they meet reach the run; channels-last and bf16 autocast train correctly."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from orchestrator.core.config import build_config
from orchestrator.core.errors import UserError
from orchestrator.data.voc import save_mask
from trainables.device_setup import apply_model_settings, choose_precision
from trainables.distributed import WorkerContext
from trainables.loader import BatchStream, LoaderOptions, StepBatches, loader_options, to_device
from trainables.models import build_student
from trainables.optim import build_optimizer
from trainables.streams import BrokenSamples, StreamFiles, StreamSampler
from trainables.train_loop import runner_for, step_plan, train_one_epoch

CFG = {"train.method": "semiovs", "ood.label_source": "self", "ood.ratio": 0.5, "train.batch_size": 2,
       "data.crop_size": 24, "train.epochs": 2, "train.iters_per_epoch": 3}


def write_files(folder, n: int, broken: int = 0) -> list[tuple[str, str]]:
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(n):
        image, mask = folder / f"im{i}.png", folder / f"im{i}_gt.png"
        Image.fromarray(rng.integers(0, 255, (28, 32, 3), dtype=np.uint8)).save(image)
        save_mask(mask, rng.integers(0, 5, (28, 32), dtype=np.uint8))
        pairs.append((str(image), str(mask)))
    for i in range(broken):
        bad = folder / f"bad{i}.png"
        bad.write_bytes(b"not a png")
        pairs.append((str(bad), pairs[0][1]))
    return pairs


def make_sampler(pairs, seed: int = 3, share: float = 0.5) -> StreamSampler:
    files = StreamFiles(pairs[:2], [(p, None) for p, _ in pairs], [(f"o{i}", p) for i, (p, _) in enumerate(pairs)],
                        [m for _, m in pairs])
    return StreamSampler(files, ood_labels=None, crop=24, seed=seed, broken=BrokenSamples(), max_broken_share=share)


def stream(pairs, first: int, last: int, workers: int) -> list[dict[str, torch.Tensor]]:
    cfg = build_config(CFG)
    batches = BatchStream(StepBatches(make_sampler(pairs), step_plan(cfg, 6)), first, last, LoaderOptions(workers))
    try:
        return [batches.next(step) for step in range(first, last)]
    finally:
        batches.close()


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_loader_processes_make_the_same_batches_in_order_and_after_a_resume(tmp_path):
    pairs = write_files(tmp_path, 4)
    in_process = stream(pairs, 0, 6, workers=0)
    assert not same(in_process[0], in_process[1])            # steps differ: the comparison below means something
    assert {k: v.shape[0] for k, v in in_process[0].items()}["o_w"] + in_process[0]["u_w"].shape[0] == 4
    for workers in (1, 2):
        assert all(same(a, b) for a, b in zip(in_process, stream(pairs, 0, 6, workers)))
    # a run resumed at the epoch boundary (step 3) draws what the uninterrupted run drew
    assert all(same(a, b) for a, b in zip(in_process[3:], stream(pairs, 3, 6, workers=1)))


def test_unreadable_samples_met_by_a_loader_process_reach_the_run(tmp_path):
    pairs = write_files(tmp_path, 4, broken=1)
    sampler = make_sampler(pairs)
    batches = BatchStream(StepBatches(sampler, step_plan(build_config(CFG), 6)), 0, 6, LoaderOptions(1))
    for step in range(6):
        batches.next(step)
    batches.close()
    assert list(sampler.broken.paths) == [str(tmp_path / "bad0.png")]   # the training process's own list

    mostly_broken = write_files(tmp_path, 1, broken=3)
    batches = BatchStream(StepBatches(make_sampler(mostly_broken, share=0.1), step_plan(build_config(CFG), 6)),
                          0, 6, LoaderOptions(1))
    with pytest.raises(UserError, match=r"training images are unreadable .* Fix: run `python run.py data check"):
        for step in range(6):
            batches.next(step)
    batches.close()


def test_precision_choice_per_device():
    off = choose_precision(False, "auto", "cuda", True)
    assert not off.enabled and not off.scaled
    assert choose_precision(True, "auto", "cuda", True).dtype == torch.bfloat16      # no loss scaling needed
    old_gpu = choose_precision(True, "auto", "cuda", False)
    assert old_gpu.dtype == torch.float16 and old_gpu.scaled and not old_gpu.note
    asked_bf16 = choose_precision(True, "bf16", "cuda", False)
    assert asked_bf16.dtype == torch.float16 and "no bf16" in asked_bf16.note
    assert choose_precision(True, "fp16", "cuda", True).scaled
    cpu = choose_precision(True, "auto", "cpu", False)
    assert cpu.enabled and cpu.dtype == torch.bfloat16 and not cpu.scaled
    cpu_fp16 = choose_precision(True, "fp16", "cpu", False)
    assert not cpu_fp16.enabled and "CUDA path" in cpu_fp16.note
    assert not loader_options(2, torch.device("cpu")).pin_memory and loader_options(2, torch.device("cuda")).pin_memory


def train_losses(pairs, overrides: dict) -> tuple[list[float], torch.nn.Module]:
    cfg = build_config({**CFG, "train.epochs": 1, **overrides})
    torch.manual_seed(0)
    model = apply_model_settings(build_student("unet_small", 5, width=4), cfg.train.channels_last,
                                 cfg.train.cudnn_benchmark)
    runner = runner_for(model, build_optimizer(model, 0.01, 1.0), make_sampler(pairs), cfg,
                        WorkerContext("local", 0, 1, torch.device("cpu")), first_step=0, iters=3)
    losses = []
    for step in range(3):   # one step at a time, as train_one_epoch runs them, to see each loss
        runner.iters = 1
        losses.append(train_one_epoch(runner, step)["loss"])
    runner.batches.close()
    return losses, model


def test_channels_last_and_bf16_autocast_train_on_cpu(tmp_path, torch_one_thread):
    pairs = write_files(tmp_path, 4)
    plain, _ = train_losses(pairs, {})
    nhwc, model = train_losses(pairs, {"train.channels_last": True, "train.cudnn_benchmark": True})
    assert torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert np.allclose(plain, nhwc, rtol=1e-4, atol=1e-5)       # a layout: the same numbers
    bf16, _ = train_losses(pairs, {"train.amp": True})
    assert all(np.isfinite(bf16)) and np.allclose(plain, bf16, rtol=0.05, atol=0.02)
    assert plain != bf16                                         # autocast really ran in bf16
    x = to_device({"x": torch.zeros(2, 3, 8, 8), "y": torch.zeros(2, 8, 8)}, torch.device("cpu"), True)
    assert x["x"].is_contiguous(memory_format=torch.channels_last) and x["y"].is_contiguous()
