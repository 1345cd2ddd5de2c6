"""Embeddings of the diffusion time.

The sinusoidal embedding is the Transformer's positional encoding (Vaswani et al. 2017, §3.5)
applied to the noise-process time, as DDPM (Ho et al. 2020, appendix B) and ADM (Dhariwal &
Nichol 2021) do; :class:`TimestepMLP` is the two-layer SiLU network that follows it in both the
ADM U-Net and DiT (Peebles & Xie 2023, §3.2). :func:`sincos_position_embedding_2d` is the fixed
2-D position embedding of ViT-style patch tokens (MAE, He et al. 2022; DiT).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0, freq_shift: float = 0.0,
                       sin_first: bool = False) -> Tensor:
    """Sinusoidal features of a (possibly fractional) time, in ADM's layout ``[cos | sin]``.

    With ``half = dim // 2`` and frequencies ``ω_i = max_period^(−i/(half − freq_shift))`` for ``i < half``::

        emb(t) = [cos(t·ω_0), …, cos(t·ω_{half−1}), sin(t·ω_0), …, sin(t·ω_{half−1})]

    ADM, LDM/Stable Diffusion and DiT's reference code use ``freq_shift = 0`` and cosines first.
    The two options exist for imported weights: DDPM's original code (and diffusers' ``UNet2DModel``
    ports of it) puts the sines first with ``freq_shift = 1``, diffusers' ``DiTTransformer2DModel``
    uses ``freq_shift = 1`` with cosines first (diffusers' ``downscale_freq_shift`` and
    ``flip_sin_to_cos = not sin_first``).

    An odd ``dim`` gets one trailing zero. The features are computed in float32 whatever the
    autocast state, so t = 999.5 and t = 999 stay distinguishable in bf16 training.

    Args:
        t: times of shape (N,), e.g. 0 … 999 for a 1000-step DDPM schedule; any float.
        dim: number of output features.
        max_period: the longest wavelength, 10000 as in the Transformer, DDPM and ADM.
        freq_shift: subtracted from ``half`` in the frequencies' exponent.
        sin_first: the layout ``[sin | cos]`` instead of ``[cos | sin]``.

    Returns:
        float32 tensor of shape (N, dim).
    """
    if t.ndim != 1:
        raise ValueError(f"timestep_embedding expects t of shape (N,), got {tuple(t.shape)}")
    half = dim // 2
    exponent = torch.arange(half, device=t.device, dtype=torch.float32) / (half - freq_shift)
    freqs = torch.exp(-math.log(max_period) * exponent)  # (half,)
    args = t.float()[:, None] * freqs[None, :]  # (N, half)
    waves = (torch.sin(args), torch.cos(args)) if sin_first else (torch.cos(args), torch.sin(args))
    emb = torch.cat(waves, dim=-1)  # (N, 2·half)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))  # (N, dim)
    return emb


class TimestepMLP(nn.Module):
    """``t ↦ Linear(SiLU(Linear(timestep_embedding(t))))``: the time embedding of ADM and DiT.

    Args:
        frequency_dim: width of the sinusoidal features (ADM: the base channel count).
        embed_dim: output width (ADM: 4 × the base channel count).
        max_period, freq_shift, sin_first: see :func:`timestep_embedding`.
    """

    def __init__(self, frequency_dim: int, embed_dim: int, max_period: float = 10000.0, freq_shift: float = 0.0,
                 sin_first: bool = False):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.max_period = max_period
        self.freq_shift, self.sin_first = freq_shift, sin_first
        self.mlp = nn.Sequential(
            nn.Linear(frequency_dim, embed_dim),
            nn.SiLU(),
            nn.Linear(embed_dim, embed_dim),
        )

    def forward(self, t: Tensor) -> Tensor:
        freq = timestep_embedding(t, self.frequency_dim, self.max_period, self.freq_shift,
                                  self.sin_first)  # (N, frequency_dim)
        return self.mlp(freq)  # (N, embed_dim)


def sincos_position_embedding_2d(dim: int, grid_size: int) -> Tensor:
    """Fixed 2-D sine-cosine embedding of a ``grid_size × grid_size`` grid of tokens (MAE's and DiT's).

    Half of the ``dim`` features encode the column ``x`` of a token, half its row ``y``, each with
    the 1-D embedding of width D = dim / 2 and frequencies ω_k = 10000^(−k/(D/2)), k < D/2::

        e(p) = [sin(p·ω_0), …, sin(p·ω_{D/2−1}), cos(p·ω_0), …, cos(p·ω_{D/2−1})]
        E[y·grid_size + x] = [e(x) | e(y)]

    Tokens are in row-major order, as a convolutional patch embedding flattens them. (MAE's code
    names the halves the other way round but feeds the column coordinate to the first; this is
    the same tensor, so DiT's and MAE's weights fit.) Computed in float64 and returned as float32
    on the default device (``torch.device("meta")`` included).

    Raises:
        ValueError: ``dim`` is not a multiple of 4.
    """
    if dim % 4:
        raise ValueError(f"a 2-D sine-cosine position embedding needs a width divisible by 4, got {dim}")
    omega = 1.0 / 10000.0 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # (dim/4,)
    coords = torch.arange(grid_size, dtype=torch.float64)
    y, x = torch.meshgrid(coords, coords, indexing="ij")  # (G, G) each: row, column

    def embed_1d(pos: Tensor) -> Tensor:
        angles = pos.reshape(-1, 1) * omega  # (G·G, dim/4)
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)  # (G·G, dim/2)

    return torch.cat([embed_1d(x), embed_1d(y)], dim=1).float()  # (G·G, dim)
