"""Layers shared by difflab's networks (U-Net, DiT, autoencoders, conditioners).

* :mod:`.embeddings` — sinusoidal time features, the time-embedding MLP, 2-D sin-cos positions.
* :mod:`.attention` — multi-head attention through ``scaled_dot_product_attention``.
* :mod:`.norm` — group normalization computed in float32; adaptive-norm modulation.
* :mod:`.init` — zero initialization of residual branches.
"""

from .attention import AttentionPool2d, SelfAttention, SpatialSelfAttention, multi_head_attention, resolve_num_heads
from .embeddings import TimestepMLP, sincos_position_embedding_2d, timestep_embedding
from .init import zero_module
from .norm import GroupNorm32, modulate

__all__ = [
    "AttentionPool2d",
    "GroupNorm32",
    "SelfAttention",
    "SpatialSelfAttention",
    "TimestepMLP",
    "modulate",
    "multi_head_attention",
    "resolve_num_heads",
    "sincos_position_embedding_2d",
    "timestep_embedding",
    "zero_module",
]
