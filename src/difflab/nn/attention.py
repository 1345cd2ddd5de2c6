"""Multi-head attention through ``torch.nn.functional.scaled_dot_product_attention``.

Attention(Q, K, V) = softmax(Q Kᵀ / √d) V per head (Vaswani et al. 2017, eq. 1). Calling
PyTorch's fused kernel lets the GPU use flash / memory-efficient attention; in reduced precision
the kernel accumulates the softmax in float32 itself, so ADM's trick of scaling Q and K by
d^(−1/4) before the product is not needed.

:func:`multi_head_attention` works on token sequences (N, L, C) and serves self- and
cross-attention alike; :class:`SelfAttention` is the projection layer around it (DiT's block
uses it on patches), and :class:`SpatialSelfAttention` is the U-Net block that lets every pixel
of a feature map attend to every other (DDPM's and ADM's attention block).

Attention processors (DESIGN.md, "How the applications plug in"): a layer's ``processor``, None
by default, is a function ``probs -> probs`` of the attention maps softmax(Q Kᵀ/√d), (N, heads,
Lq, Lk); prompt-to-prompt (:mod:`difflab.editing`) installs one for a call and removes it after.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .init import zero_module
from .norm import GroupNorm32


def resolve_num_heads(channels: int, num_heads: int = 1, num_head_channels: int = -1) -> int:
    """The number of heads for ``channels`` features: ``num_heads``, or ``channels / num_head_channels``.

    ``num_head_channels = -1`` means "use ``num_heads``" (ADM's convention); otherwise the head
    width is fixed and wider layers get more heads (ADM's final models use 64 channels a head).

    Raises:
        ValueError: the channels cannot be split evenly into heads.
    """
    if num_head_channels == -1:
        if num_heads < 1:
            raise ValueError(f"num_heads must be >= 1 (got {num_heads}); or set num_head_channels > 0")
        if channels % num_heads:
            raise ValueError(
                f"num_heads={num_heads} does not divide the {channels} channels of an attention layer; "
                f"choose num_heads among the divisors of {channels}, or set num_head_channels"
            )
        return num_heads
    if num_head_channels < 1 or channels % num_head_channels:
        raise ValueError(
            f"num_head_channels={num_head_channels} does not divide the {channels} channels of an "
            f"attention layer; choose a divisor of {channels}, or -1 to use num_heads"
        )
    return channels // num_head_channels


AttentionProcessor = Callable[[Tensor], Tensor]  # the maps (N, heads, Lq, Lk) -> the maps to use


def multi_head_attention(q: Tensor, k: Tensor, v: Tensor, num_heads: int, key_mask: Tensor | None = None,
                         processor: AttentionProcessor | None = None) -> Tensor:
    """softmax(Q Kᵀ / √d) V for each of ``num_heads`` heads of width d = C / num_heads.

    Args:
        q: queries (N, Lq, C); k, v: keys and values (N, Lk, C).
        num_heads: the channels are split into this many contiguous groups of d channels.
        key_mask: optional bool (N, Lk), True for real tokens: padding keys get no attention.
            A row with no real token attends to all of them (so it stays finite).
        processor: optional function of the attention maps (see the module docstring). The maps
            are then computed explicitly as well; samples whose maps it leaves unchanged keep the
            fused kernel's output bit for bit, the others get ``processor(maps) · V``.

    Returns:
        (N, Lq, C), the heads concatenated back in channel order.
    """
    n, lq, c = q.shape
    d = c // num_heads
    q, k, v = (z.reshape(n, -1, num_heads, d).transpose(1, 2) for z in (q, k, v))  # (N, heads, L, d)
    attn_mask = None
    if key_mask is not None:
        key_mask = key_mask.to(torch.bool)
        key_mask = key_mask | ~key_mask.any(dim=1, keepdim=True)  # all padding: attend to all
        attn_mask = key_mask[:, None, None, :]  # (N, 1, 1, Lk), broadcast over heads and queries
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (N, heads, Lq, d)
    if processor is not None:
        out = _processed(q, k, v, attn_mask, out, processor)
    return out.transpose(1, 2).reshape(n, lq, c)  # (N, Lq, C)


def _processed(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, out: Tensor,
               processor: AttentionProcessor) -> Tensor:
    """``out`` with the samples whose maps ``processor`` changes recomputed from the new maps."""
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # (N, heads, Lq, Lk)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    probs = scores.softmax(dim=-1)
    new = processor(probs)
    changed = (new != probs).flatten(1).any(dim=1)  # (N,)
    if not bool(changed.any()):
        return out
    return torch.where(changed[:, None, None, None], new.to(v.dtype) @ v, out)


class SelfAttention(nn.Module):
    """Multi-head self-attention over tokens: ``proj(attention(W_q x, W_k x, W_v x))``.

    Args:
        dim: token width C.
        num_heads: number of heads; ``dim`` must be divisible by it.
        bias: whether W_q, W_k, W_v have biases (Stable Diffusion's transformer blocks have none).
    """

    def __init__(self, dim: int, num_heads: int = 1, bias: bool = True):
        super().__init__()
        self.num_heads = resolve_num_heads(dim, num_heads)
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim)
        self.processor: AttentionProcessor | None = None  # see the module docstring

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # 3 × (N, L, C)
        return self.proj(multi_head_attention(q, k, v, self.num_heads, processor=self.processor))  # (N, L, C)


class SpatialSelfAttention(nn.Module):
    """Self-attention between the H·W positions of a feature map, as a residual block.

    ``out = (x + SelfAttention(GroupNorm(x))) · residual_scale`` with the output projection
    zero-initialized, so the block starts as the identity (DDPM, Ho et al. 2020, appendix B;
    ADM, Dhariwal & Nichol 2021, §3). ``residual_scale = 1/√2`` is DDPM++'s ``skip_rescale``
    (Song et al. 2021, appendix H).

    Args:
        channels: feature channels C.
        num_heads, num_head_channels: see :func:`resolve_num_heads`.
        norm_groups: groups of the group normalization; norm_eps: its ε.
        residual_scale: factor applied to the residual sum.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int = 1,
        num_head_channels: int = -1,
        norm_groups: int = 32,
        residual_scale: float = 1.0,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        self.norm = GroupNorm32(norm_groups, channels, eps=norm_eps)
        self.attn = SelfAttention(channels, resolve_num_heads(channels, num_heads, num_head_channels))
        zero_module(self.attn.proj)
        self.residual_scale = residual_scale

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (N, H·W, C); a view for channels_last
        out = x + self.attn(tokens).transpose(1, 2).reshape(n, c, h, w)  # (N, C, H, W)
        return out if self.residual_scale == 1.0 else out * self.residual_scale


class AttentionPool2d(nn.Module):
    """Pool a feature map to one vector by attention (CLIP's ResNet head; ADM's classifier head).

    The mean over positions is prepended as a query token, learned position embeddings are added
    to all H·W + 1 tokens, and the output is the mean token's attention over every token,
    projected to ``out_dim``::

        tokens = [mean(x); x₁ … x_HW] + P          (N, HW + 1, C)
        out    = W_o · Attention(W_q tokens₀, W_k tokens, W_v tokens)

    Args:
        spatial_size: H = W of the input feature map (fixes the position embedding's length).
        channels: C.
        num_heads, num_head_channels: see :func:`resolve_num_heads`.
        out_dim: the output width (e.g. the number of classes).
    """

    def __init__(self, spatial_size: int, channels: int, out_dim: int, num_heads: int = 1, num_head_channels: int = -1):
        super().__init__()
        self.num_heads = resolve_num_heads(channels, num_heads, num_head_channels)
        self.position = nn.Parameter(torch.randn(spatial_size**2 + 1, channels) / channels**0.5)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        tokens = x.flatten(2).transpose(1, 2)  # (N, H·W, C)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1) + self.position.to(x.dtype)
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)  # 3 × (N, HW + 1, C)
        pooled = multi_head_attention(q[:, :1], k, v, self.num_heads)  # (N, 1, C)
        return self.proj(pooled[:, 0])  # (N, out_dim)
