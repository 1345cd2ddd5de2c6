"""Embeddings of the diffusion time.

The sinusoidal embedding is the Transformer's positional encoding (Vaswani et al. 2017, §3.5)
applied to the noise-process time, as DDPM (Ho et al. 2020, appendix B) and ADM (Dhariwal &
Nichol 2021) do; :class:`TimestepMLP` is the two-layer SiLU network that follows it in both the
ADM U-Net and DiT (Peebles & Xie 2023, §3.2).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features of a (possibly fractional) time, in ADM's layout ``[cos | sin]``.

    With ``half = dim // 2`` and frequencies ``ω_i = max_period^(−i/half)`` for ``i < half``::

        emb(t) = [cos(t·ω_0), …, cos(t·ω_{half−1}), sin(t·ω_0), …, sin(t·ω_{half−1})]

    An odd ``dim`` gets one trailing zero. The features are computed in float32 whatever the
    autocast state, so t = 999.5 and t = 999 stay distinguishable in bf16 training.

    Args:
        t: times of shape (N,), e.g. 0 … 999 for a 1000-step DDPM schedule; any float.
        dim: number of output features.
        max_period: the longest wavelength, 10000 as in the Transformer, DDPM and ADM.

    Returns:
        float32 tensor of shape (N, dim).
    """
    if t.ndim != 1:
        raise ValueError(f"timestep_embedding expects t of shape (N,), got {tuple(t.shape)}")
    half = dim // 2
    exponent = torch.arange(half, device=t.device, dtype=torch.float32) / half
    freqs = torch.exp(-math.log(max_period) * exponent)  # (half,)
    args = t.float()[:, None] * freqs[None, :]  # (N, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (N, 2·half)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))  # (N, dim)
    return emb


class TimestepMLP(nn.Module):
    """``t ↦ Linear(SiLU(Linear(timestep_embedding(t))))``: the time embedding of ADM and DiT.

    Args:
        frequency_dim: width of the sinusoidal features (ADM: the base channel count).
        embed_dim: output width (ADM: 4 × the base channel count).
        max_period: see :func:`timestep_embedding`.
    """

    def __init__(self, frequency_dim: int, embed_dim: int, max_period: float = 10000.0):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.max_period = max_period
        self.mlp = nn.Sequential(
            nn.Linear(frequency_dim, embed_dim),
            nn.SiLU(),
            nn.Linear(embed_dim, embed_dim),
        )

    def forward(self, t: Tensor) -> Tensor:
        freq = timestep_embedding(t, self.frequency_dim, self.max_period)  # (N, frequency_dim)
        return self.mlp(freq)  # (N, embed_dim)
