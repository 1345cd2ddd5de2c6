"""The trainer's optimizer switches, in one place so benchmarks/train_throughput.py times exactly
what ``difflab train`` runs: a fused AdamW (with its moments kept in the parameters' memory
layout) and multi-tensor gradient clipping. The memory layout and autocast switches that
sampling shares are in :mod:`difflab.device`.

Each is the plain path computed another way; tests/test_fast_paths.py checks it against the
plain path on CPU within float tolerance.
"""

from __future__ import annotations

import torch


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
