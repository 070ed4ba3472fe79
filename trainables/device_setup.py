"""GPU-side settings chosen by config: mixed precision, channels-last memory format, cuDNN autotuning.

`choose_precision` is a pure decision (tested without a GPU); `apply_model_settings` applies the rest.
Each is correct on a CPU too: bf16 autocast runs there, channels-last is a layout, cuDNN is simply unused.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Precision:
    enabled: bool                  # autocast on
    dtype: torch.dtype | None      # its dtype
    scaled: bool                   # fp16 on CUDA: gradients need a GradScaler
    note: str = ""                 # why the request was changed, if it was (printed once by the loop)


def choose_precision(amp: bool, amp_dtype: str, device_type: str, bf16_supported: bool) -> Precision:
    """train.amp / train.amp_dtype on this device. bf16 needs no loss scaling; fp16 is a CUDA path."""
    if not amp:
        return Precision(False, None, False)
    if device_type == "cpu":
        if amp_dtype == "fp16":
            return Precision(False, None, False, "train.amp_dtype=fp16 is a CUDA path; this CPU worker runs fp32")
        return Precision(True, torch.bfloat16, False)
    if device_type != "cuda":
        return Precision(False, None, False, f"no autocast on device type {device_type!r}; running fp32")
    if amp_dtype == "fp16":
        return Precision(True, torch.float16, True)
    if bf16_supported:
        return Precision(True, torch.bfloat16, False)
    note = "this GPU has no bf16; using fp16 with loss scaling" if amp_dtype == "bf16" else ""
    return Precision(True, torch.float16, True, note)


def device_precision(amp: bool, amp_dtype: str, device: torch.device) -> Precision:
    bf16 = device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return choose_precision(amp, amp_dtype, device.type, bf16)


def apply_model_settings(model: torch.nn.Module, channels_last: bool, cudnn_benchmark: bool) -> torch.nn.Module:
    """Before the model is wrapped for DDP: its memory format, and cuDNN's algorithm search."""
    torch.backends.cudnn.benchmark = cudnn_benchmark   # a process-wide flag; this process trains one model
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
