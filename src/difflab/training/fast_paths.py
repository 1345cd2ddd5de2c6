"""The trainer's speed switches, in one place so benchmarks/train_throughput.py times exactly
what ``difflab train`` runs: a fused AdamW (with its moments kept in the parameters' memory
layout), multi-tensor gradient clipping, the channels-last memory format, and bf16 autocast
(training's, and sampling's ``precision``).

Each is the plain path computed another way; tests/test_fast_paths.py checks it against the
plain path on CPU within float tolerance.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext

import torch
from torch import nn


def fused_adamw_supported(device: torch.device) -> bool:
    """torch's fused AdamW kernel: CUDA, and CPU since torch 2.4 (one pass over all parameters
    instead of a dozen small ops per tensor: ~4.5x faster than the default on 2 CPU cores)."""
    if device.type == "cuda":
        return True
    major, minor = (int(v) for v in torch.__version__.split(".")[:2])
    return device.type == "cpu" and (major, minor) >= (2, 4)


def make_optimizer(params, device: torch.device, lr: float, betas=(0.9, 0.999), weight_decay: float = 0.0,
                   fused: bool = True) -> torch.optim.AdamW:
    """AdamW (Loshchilov & Hutter 2019), fused where the device supports it."""
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay,
                             fused=fused and fused_adamw_supported(device))


def clip_gradients(params, max_norm: float) -> torch.Tensor:
    """Scale the gradients so their global L2 norm is at most ``max_norm``; returns the norm
    before clipping. torch's multi-tensor (``foreach``) kernels, which it uses by default on CUDA
    only: on CPU they cost ~0.6x the per-tensor loop's time."""
    return torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)


def memory_format(model: nn.Module, channels_last: bool) -> nn.Module:
    """Convolution weights in channels-last (NHWC) layout, which cuDNN's tensor-core and
    oneDNN's CPU kernels prefer; inputs follow through the first convolution.

    Measured on 2 CPU cores (docs/benchmarks.md, issue 8): sampling the demo U-Net ~20% faster;
    training it ~10% faster (7–31% over seven A/B runs: the faster convolutions outweigh torch's
    slower channels-last GroupNorm at 8×8); training the Fashion-MNIST 16 U-Net, the latent text
    U-Net, the DiT and the CPU autoencoder the same within the box's noise. The trainer
    (``train.channels_last``, default on) and ``DiffusionModel.load`` use it on every device."""
    return model.to(memory_format=torch.channels_last) if channels_last else model


def match_optimizer_state_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give every per-parameter state tensor (Adam's moments) its parameter's memory layout.

    The fused AdamW kernel walks a parameter, its gradient and its moments as flat memory, so a
    moment stored NCHW beside a channels-last parameter would pair the wrong elements and
    corrupt every later update, silently. That happens on resume when the layout changed since
    the checkpoint (a CPU run resumed on a GPU, ``train.channels_last`` switched, an older
    checkpoint); call this after the model's layout is final."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


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
