"""Layers shared by difflab's networks (U-Net, DiT, autoencoders, conditioners).

* :mod:`.embeddings` — sinusoidal time features, the time-embedding MLP, 2-D sin-cos positions.
* :mod:`.attention` — multi-head attention through ``scaled_dot_product_attention``.
* :mod:`.norm` — group normalization computed in float32; adaptive-norm modulation.
* :mod:`.init` — zero initialization of residual branches.
* :mod:`.upsample` — nearest 2× + 3×3 convolution as one stride-2 transposed convolution.
"""

from .attention import AttentionPool2d, SelfAttention, SpatialSelfAttention, multi_head_attention, resolve_num_heads
from .embeddings import TimestepMLP, sincos_position_embedding_2d, timestep_embedding
from .init import zero_module
from .norm import GroupNorm32, modulate
from .upsample import Upsample, upsample_conv3x3

__all__ = [
    "AttentionPool2d",
    "GroupNorm32",
    "SelfAttention",
    "SpatialSelfAttention",
    "TimestepMLP",
    "Upsample",
    "modulate",
    "multi_head_attention",
    "resolve_num_heads",
    "sincos_position_embedding_2d",
    "timestep_embedding",
    "upsample_conv3x3",
    "zero_module",
]
