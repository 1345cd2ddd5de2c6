"""Layers shared by difflab's networks (U-Net, DiT, autoencoders, conditioners).

* :mod:`.embeddings` — sinusoidal time features and the time-embedding MLP.
* :mod:`.attention` — multi-head attention through ``scaled_dot_product_attention``.
* :mod:`.norm` — group normalization computed in float32.
* :mod:`.init` — zero initialization of residual branches.
"""

from .attention import AttentionPool2d, SelfAttention, SpatialSelfAttention, multi_head_attention, resolve_num_heads
from .embeddings import TimestepMLP, timestep_embedding
from .init import zero_module
from .norm import GroupNorm32

__all__ = [
    "AttentionPool2d",
    "GroupNorm32",
    "SelfAttention",
    "SpatialSelfAttention",
    "TimestepMLP",
    "multi_head_attention",
    "resolve_num_heads",
    "timestep_embedding",
    "zero_module",
]
