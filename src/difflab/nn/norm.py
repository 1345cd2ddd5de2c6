"""Normalization layers that are safe in reduced precision."""

from __future__ import annotations

from torch import Tensor, nn


class GroupNorm32(nn.GroupNorm):
    """Group normalization (Wu & He 2018) computed in float32 and cast back to the input dtype.

    Under bf16/fp16 the mean and variance over a group of ``C/G·H·W`` values lose precision;
    ADM's ``GroupNorm32`` normalizes in float32 for this reason, and so does this layer. The
    affine parameters stay in whatever dtype the module holds.
    """

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).to(x.dtype)
