"""Initialization helpers."""

from __future__ import annotations

from torch import nn


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` in place and return it.

    A residual branch whose last layer starts at zero makes its block the identity at
    initialization (ADM's zero-initialized output convolutions, Dhariwal & Nichol 2021; DiT's
    adaLN-Zero, Peebles & Xie 2023, §3.2; Goyal et al. 2017 for residual networks in general).
    """
    for p in module.parameters():
        nn.init.zeros_(p)
    return module
