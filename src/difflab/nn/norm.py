"""Normalization layers that are safe in reduced precision, and adaptive normalization."""

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


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """Adaptive normalization's affine step, ``x·(1 + scale) + shift`` (adaLN in DiT, Peebles &
    Xie 2023, §3.2; AdaGN in ADM): ``x`` is an already normalized (N, L, C) token sequence and
    ``shift``, ``scale`` are (N, C) regressed from the conditioning, broadcast over the tokens.
    Written with ``1 + scale`` so a zero regression leaves the plain normalization."""
    return x * (1 + scale[:, None]) + shift[:, None]  # (N, L, C)
