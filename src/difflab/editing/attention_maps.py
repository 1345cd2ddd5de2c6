"""Where each word is drawn: the cross-attention maps of a prompt's tokens, averaged.

Prompt-to-prompt's first picture (Hertz et al. 2022, Fig. 4; ``show_cross_attention`` in their
code) is the average cross-attention map of every token: which pixels attend to "sneaker", which
to "photo". It tells which words hold the layout, what to give local blend and what a reweighting
will touch. :class:`AttentionStore` sums the maps of the conditional rows of every cross-attention
call (every layer, every step; heads averaged), each resized to the image's side, and
:func:`attention_grid` draws one heat map per token with the token under it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


class AttentionStore:
    """Accumulates the token maps of ``rows`` rows (the sources and the edits: 2n) at ``size``;
    ``tokens``: the source's and the edit's tokens, the labels of :func:`attention_grid`."""

    def __init__(self, rows: int, size: tuple[int, int], tokens: list[list[str]] | None = None):
        self.rows, self.size, self.tokens = rows, size, tokens
        self.total: Tensor | None = None  # (rows, Lk, H, W)
        self.count = 0

    def record(self, probs: Tensor) -> None:
        """Add one cross-attention call's maps (N, heads, Lq, Lk); Lq must be a square feature map."""
        maps = probs[: self.rows].float().mean(1)  # (rows, Lq, Lk)
        side = math.isqrt(maps.shape[1])
        maps = maps.transpose(1, 2).reshape(self.rows, -1, side, maps.shape[1] // side)
        maps = F.interpolate(maps, size=self.size, mode="bilinear", align_corners=False)
        self.total = maps if self.total is None else self.total + maps.to(self.total.device)
        self.count += 1

    def maps(self) -> Tensor:
        """The average map of every token (rows, Lk, H, W); each position's maps sum to 1 over tokens."""
        if self.total is None:
            raise ValueError("no cross-attention map was recorded: the network has no cross-attention")
        return self.total / self.count


def attention_grid(maps: Tensor, tokens: list[list[str]], side: int = 64):
    """A PIL image: per row (one prompt) its tokens' maps as heat maps (each scaled to its own
    maximum) with the token written under it."""
    from PIL import Image, ImageDraw

    label = 14
    rows = len(tokens)
    columns = max(len(t) for t in tokens)
    grid = Image.new("RGB", (columns * (side + 4), rows * (side + label + 4)), "white")
    draw = ImageDraw.Draw(grid)
    for r, row_tokens in enumerate(tokens):
        for c, token in enumerate(row_tokens):
            heat = maps[r, c]
            heat = (heat / heat.max().clamp_min(1e-12)).clamp(0, 1)
            rgb = torch.stack([heat, heat.pow(2), 1 - heat]) * 255  # blue (none) to yellow (all)
            tile = Image.fromarray(rgb.byte().permute(1, 2, 0).cpu().numpy()).resize((side, side), Image.NEAREST)
            x, y = c * (side + 4) + 2, r * (side + label + 4) + 2
            grid.paste(tile, (x, y))
            draw.text((x, y + side + 1), token[:10], fill="black")
    return grid
