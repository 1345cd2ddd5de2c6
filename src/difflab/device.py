"""Where and how a network runs: picking the device, the convolutions' memory layout, and the
autocast precision of training and sampling.

Inference and training both use these, so they live outside :mod:`difflab.training` (sampling
never imports the trainer). Each switch is the plain path computed another way;
tests/test_fast_paths.py and tests/test_sampling_precision.py check them against it.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext

import torch
from torch import nn


def pick_device(preference: str = "auto") -> torch.device:
    """``auto`` (a GPU when one is visible, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {preference!r} was asked for but no GPU is visible; use cpu or auto")
    try:
        device = torch.device(preference)
    except RuntimeError:
        raise ValueError(f"unknown device {preference!r}; use auto, cpu, cuda or cuda:N") from None
    backend = getattr(torch.backends, device.type, None) or getattr(torch, device.type, None)
    available = getattr(backend, "is_available", lambda: False)
    if device.type != "cpu" and not available():
        raise ValueError(f"device {preference!r} is not available in this PyTorch build or machine; use cpu or auto")
    return device


def memory_format(model: nn.Module, channels_last: bool) -> nn.Module:
    """Convolution weights in channels-last (NHWC) layout, which cuDNN's tensor-core and
    oneDNN's CPU kernels prefer; inputs follow through the first convolution.

    Measured on 2 CPU cores (docs/benchmarks.md, issue 8): sampling the demo U-Net ~20% faster;
    training it ~10% faster (7–31% over seven A/B runs: the faster convolutions outweigh torch's
    slower channels-last GroupNorm at 8×8); training the Fashion-MNIST 16 U-Net, the latent text
    U-Net, the DiT and the CPU autoencoder the same within the box's noise. The trainer
    (``train.channels_last``, default on) and ``DiffusionModel.load`` use it on every device.
    On CUDA it is unproven: PyTorch's CUDA GroupNorm runs in NCHW only, and on one H200 our eager
    sampling ran 0.86–0.89× diffusers' NCHW network (docs/benchmarks.md); the NCHW A/B is the first
    item of docs/gpu-runbook.md."""
    return model.to(memory_format=torch.channels_last) if channels_last else model


def bf16_autocast(device: torch.device, on_gpu: bool, on_cpu: bool = False):
    """The network's autocast in training and sampling: bf16 matrix multiplies and convolutions,
    float32 weights, norms and loss. On GPU the default (``train.bf16``). On CPU opt-in (``train.bf16_cpu``):
    oneDNN's bf16 kernels run ~1.3x faster on a CPU with avx512_bf16 or AMX (measured on 2 cores
    with a 7.5M-parameter latent U-Net: 0.76 s against 1.00 s a step) and slower on one without."""
    if device.type == "cuda" and on_gpu:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and on_cpu:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


# Sampling precisions: auto = bf16 autocast on a GPU and float32 on a CPU; bf16 = bf16 autocast on
# either; float32 = no autocast.
PRECISIONS = ("auto", "bf16", "float32")


def precision_autocast(precision: str, device: torch.device):
    """The autocast context of a sampling ``precision`` (one of :data:`PRECISIONS`) on ``device``;
    warns when bf16 is asked of a CPU that only emulates it."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn("this CPU has no native bf16 (avx512_bf16 or AMX): bf16 sampling is emulated and slower "
                      "than float32 here; use --precision float32", stacklevel=3)
    return bf16_autocast(device, on_gpu=precision != "float32", on_cpu=precision == "bf16")


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (avx512_bf16 or AMX); without, bf16 is emulated and slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False
