"""LDM's spatial transformer: text (or any context sequence) conditioning inside the U-Net.

Latent diffusion (Rombach et al. 2022, §3.3) conditions the U-Net on a token sequence τ(y) by
cross-attention, Attention(Q, K, V) = softmax(Q Kᵀ/√d)·V with Q = W_Q·φ(zₜ), K = W_K·τ(y),
V = W_V·τ(y). Its ``SpatialTransformer`` treats the H·W pixels of a feature map as tokens and
applies pre-norm transformer blocks::

    h = proj_in(GroupNorm(x))                      (N, H·W, C)
    per block:  h = h + SelfAttention(LN(h))
                h = h + CrossAttention(LN(h), context, mask)
                h = h + FeedForward(LN(h))          GEGLU, 4× width (Shazeer 2020)
    out = x + proj_out(h)                           proj_out zero-initialized: starts as identity

Padding tokens of the context (``context_mask`` False) receive no attention.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .attention import AttentionProcessor, SelfAttention, multi_head_attention, resolve_num_heads
from .init import zero_module
from .norm import GroupNorm32


class CrossAttention(nn.Module):
    """Queries from the image tokens (N, L, C), keys and values from the context (N, Lc, D);
    ``processor``: see :mod:`difflab.nn.attention` (its maps are (N, heads, L, Lc)). ``bias``:
    whether W_q, W_k, W_v have biases (LDM's have none; diffusers' ``attention_bias`` adds them)."""

    def __init__(self, dim: int, context_dim: int, num_heads: int, bias: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=bias)
        self.kv = nn.Linear(context_dim, 2 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim)
        self.processor: AttentionProcessor | None = None

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        k, v = self.kv(context.to(x.dtype)).chunk(2, dim=-1)  # 2 × (N, Lc, C)
        out = multi_head_attention(self.q(x), k, v, self.num_heads, mask, processor=self.processor)  # (N, L, C)
        return self.proj(out)


class GEGLU(nn.Module):
    """Feed-forward with a gated GELU: W₂·(GELU(W_g x) ⊙ W_v x) (Shazeer 2020), as in LDM."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.proj_in = nn.Linear(dim, 2 * mult * dim)
        self.proj_out = nn.Linear(mult * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.proj_in(x).chunk(2, dim=-1)
        return self.proj_out(value * F.gelu(gate))


class TransformerBlock(nn.Module):
    """Pre-norm block: self-attention, cross-attention to the context, feed-forward.

    ``attention_bias``: biases on W_q, W_k, W_v of the self-attention and of the cross-attention;
    difflab's own layout (the default) has them on the self-attention only, Stable Diffusion's
    (``(False, False)``) on neither, diffusers' ``attention_bias: true`` on both."""

    def __init__(self, dim: int, context_dim: int, num_heads: int, attention_bias: tuple[bool, bool] = (True, False)):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), SelfAttention(dim, num_heads, bias=attention_bias[0])
        self.norm2, self.cross = nn.LayerNorm(dim), CrossAttention(dim, context_dim, num_heads, bias=attention_bias[1])
        self.norm3, self.ff = nn.LayerNorm(dim), GEGLU(dim)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x))
        x = x + self.cross(self.norm2(x), context, mask)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """``depth`` transformer blocks over the pixels of a feature map, as a residual block.

    Args:
        channels: feature channels C.
        context_dim: width D of the context tokens.
        num_heads, num_head_channels: see :func:`~difflab.nn.attention.resolve_num_heads`.
        depth: number of transformer blocks.
        norm_groups, norm_eps: groups and ε of the input group normalization (Stable Diffusion's ε: 10⁻⁶).
        attention_bias: see :class:`TransformerBlock`.
    """

    def __init__(self, channels: int, context_dim: int, num_heads: int = 1, num_head_channels: int = -1,
                 depth: int = 1, norm_groups: int = 32, norm_eps: float = 1e-5,
                 attention_bias: tuple[bool, bool] = (True, False)):
        super().__init__()
        heads = resolve_num_heads(channels, num_heads, num_head_channels)
        self.norm = GroupNorm32(norm_groups, channels, eps=norm_eps)
        self.proj_in = nn.Linear(channels, channels)
        self.blocks = nn.ModuleList(TransformerBlock(channels, context_dim, heads, attention_bias)
                                    for _ in range(depth))
        self.proj_out = zero_module(nn.Linear(channels, channels))

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        n, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))  # (N, H·W, C)
        for block in self.blocks:
            tokens = block(tokens, context, mask)
        return x + self.proj_out(tokens).transpose(1, 2).reshape(n, c, h, w)  # (N, C, H, W)
