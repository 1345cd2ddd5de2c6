"""The prompt-to-prompt attention controller and its installation around one call.

Prompt-to-prompt (Hertz et al. 2022, §3.2) samples a source prompt P and an edited prompt P* from
the same noise and, for the first steps, injects the source's attention maps M into the edit's
pass::

    cross-attention, step < τ_c·T:  M̂* = α ⊙ M[..., map] + (1 − α) ⊙ M*   then  M̂* ⊙ scale
    self-attention,  step < τ_s·T:  M̂* = M      (maps of at most ``self_max_tokens`` queries)
    decoder features, step < τ_f·T:  f* = f      (one U-Net block; :mod:`.feature_injection`)

with ``map``/``α`` from :func:`~difflab.editing.tokens.token_map` (replace: every position;
refine: the aligned tokens) and ``scale`` the per-token reweighting (§3.2, "attention
re-weighting"). The batch the network sees is ``[sources (n); edits (n)]``, followed by as many
unconditional rows under classifier-free guidance, which are left alone (as in the paper's code).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ..nn.attention import SelfAttention
from ..nn.transformer import CrossAttention
from .tokens import TokenMap


def has_cross_attention(network: nn.Module) -> bool:
    """Whether ``network`` has a cross-attention layer (a U-Net with context_dim, a DiT with cross-attention)."""
    return any(isinstance(module, CrossAttention) for module in network.modules())


class PromptToPromptControl:
    """Edits the maps of the edit rows of every attention call (see the module docstring).

    Args:
        pairs: n, the number of source/edit pairs (rows i and n + i).
        tokens: the edit's key-position map.
        steps: T, the sampler's steps; :attr:`step` is the current one, set before each model call.
        cross_replace, self_replace: τ_c and τ_s, the fractions of the steps with injected maps.
        feature_replace: τ_f, the fraction of the steps with injected decoder features (beyond
            the paper: Tumanyan et al. 2023's plug-and-play features; 0: none).
        self_max_tokens: self-attention maps with more queries keep their own (the paper's 16×16).

    Attributes:
        calls: how many cross- and self-attention maps and feature-layer outputs it has seen
            (``{"cross": k, "self": m, "features": f}``).
        blend: a :class:`~difflab.editing.local_blend.LocalBlend` that gets every cross-attention
            map before the edit (None: no local blend).
        store: an :class:`~difflab.editing.attention_maps.AttentionStore` that gets them too
            (None: none).
    """

    def __init__(self, pairs: int, tokens: TokenMap, steps: int, cross_replace: float = 0.8,
                 self_replace: float = 0.4, feature_replace: float = 0.0, self_max_tokens: int = 256):
        for name, value in (("cross_replace", cross_replace), ("self_replace", self_replace),
                            ("feature_replace", feature_replace)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} is a fraction of the steps in [0, 1], got {value}")
        self.pairs, self.tokens, self.self_max_tokens = pairs, tokens, self_max_tokens
        self.cross_steps, self.self_steps = int(steps * cross_replace), int(steps * self_replace)
        self.feature_steps = int(steps * feature_replace)
        self.step = 0
        self.calls = {"cross": 0, "self": 0, "features": 0}
        self.blend = None
        self.store = None

    def cross_attention(self, probs: Tensor) -> Tensor:
        """The cross-attention maps (N, heads, Lq, Lk) with the edit rows' maps injected and reweighted."""
        self.calls["cross"] += 1
        n = self.pairs
        if self.blend is not None:
            self.blend.record(probs)
        if self.store is not None:
            self.store.record(probs)
        if self.step >= self.cross_steps or probs.shape[0] < 2 * n:
            return probs
        source, edit = probs[:n], probs[n : 2 * n]
        tokens = self.tokens
        alpha, scale = (t.to(probs.device, probs.dtype) for t in (tokens.alpha, tokens.scale))
        injected = source[..., tokens.source.to(probs.device)] * alpha + edit * (1 - alpha)
        return torch.cat([source, injected * scale, probs[2 * n :]])

    def self_attention(self, probs: Tensor) -> Tensor:
        """The self-attention maps with the edit rows' replaced by the source rows' (early steps)."""
        self.calls["self"] += 1
        n = self.pairs
        if self.step >= self.self_steps or probs.shape[2] > self.self_max_tokens or probs.shape[0] < 2 * n:
            return probs
        return torch.cat([probs[:n], probs[:n], probs[2 * n :]])

    def features(self, h: Tensor) -> Tensor:
        """The feature layer's output (N, C, H, W) with the edit rows' replaced by the source rows' (early steps)."""
        self.calls["features"] += 1
        n = self.pairs
        if self.step >= self.feature_steps or h.shape[0] < 2 * n:
            return h
        return torch.cat([h[:n], h[:n], h[2 * n :]])


@contextmanager
def attention_controller(network: nn.Module, control: PromptToPromptControl) -> Iterator[PromptToPromptControl]:
    """Install ``control`` as the processor of every attention layer of ``network`` for the
    ``with`` block (cross-attention: ``control.cross_attention``, self-attention: ``control.self_attention``); the
    layers get their previous processors back afterwards, whatever happens."""
    layers = [m for m in network.modules() if isinstance(m, (CrossAttention, SelfAttention))]
    previous = [layer.processor for layer in layers]
    for layer in layers:
        layer.processor = control.cross_attention if isinstance(layer, CrossAttention) else control.self_attention
    try:
        yield control
    finally:
        for layer, processor in zip(layers, previous):
            layer.processor = processor
