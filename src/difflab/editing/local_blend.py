"""Local blend: prompt-to-prompt edits confined to where the chosen words are drawn.

Hertz et al. 2022, §3.2 ("local editing") and their code's ``LocalBlend``: after each step the
cross-attention maps of the chosen words (in the source prompt and in the edit) are summed over
the words, averaged over heads, max-pooled 3×3, resized to x, normalised by their maximum and
thresholded; the union M of the source's and the edit's masks keeps the edit inside and the
source outside::

    x*  ←  x + M ⊙ (x* − x)         (x: the source's state, x*: the edit's, after the step)

so the pixels (latents) outside the mask are the source's exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..sampling import Step


class LocalBlend:
    """The sampler callback of a local blend; the controller hands it the maps (:meth:`record`).

    Args:
        pairs: n, the number of source/edit pairs (rows i and n + i).
        source_positions, edit_positions: bool (Lk,) masks of the words' key positions in each prompt.
        threshold: the fraction of its maximum at which a map counts as the words' region.
        start: the first ⌊start·steps⌋ steps are not blended (the paper's code: 0.2).
        steps: the sampler's steps.
    """

    def __init__(self, pairs: int, source_positions: Tensor, edit_positions: Tensor, steps: int,
                 threshold: float = 0.3, start: float = 0.2):
        if not (source_positions.any() or edit_positions.any()):
            raise ValueError("local blend: none of its words is in the source or the edit prompt")
        self.pairs, self.threshold, self.start = pairs, threshold, int(start * steps)
        self.source_positions, self.edit_positions = source_positions, edit_positions
        self.maps: list[Tensor] = []  # this step's word maps, (2n, Lq) per cross-attention call

    def record(self, probs: Tensor) -> None:
        """Keep the words' maps of the conditional rows of one cross-attention call (N, heads, Lq, Lk)."""
        n = self.pairs
        source = probs[:n, ..., self.source_positions.to(probs.device)].sum(-1).mean(1)  # (n, Lq)
        edit = probs[n : 2 * n, ..., self.edit_positions.to(probs.device)].sum(-1).mean(1)
        self.maps.append(torch.cat([source, edit]).float())

    def mask(self, size: tuple[int, int]) -> Tensor:
        """The blend mask (n, 1, H, W) from the maps recorded since the last step."""
        total = 0
        for maps in self.maps:
            side = math.isqrt(maps.shape[1])
            square = maps.reshape(-1, 1, side, maps.shape[1] // side)  # (2n, 1, h, w): square feature maps
            total = total + F.interpolate(F.max_pool2d(square, 3, 1, padding=1), size=size, mode="nearest")
        total = total / total.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
        words = total > self.threshold
        return words[: self.pairs] | words[self.pairs :]

    def __call__(self, step: Step) -> Tensor | None:
        if not self.maps:
            return None
        mask, self.maps = self.mask(tuple(step.x.shape[-2:])), []
        if step.i < self.start:
            return None
        n, x = self.pairs, step.x
        source = x[:n]
        return torch.cat([source, source + mask.to(x.dtype) * (x[n : 2 * n] - source)])
