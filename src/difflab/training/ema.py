"""Exponential moving average of a model's weights (Polyak averaging; DDPM §4 uses decay 0.9999)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Keeps ``shadow`` = decay·shadow + (1 − decay)·weights after every optimizer step.

    With ``warmup`` the decay is min(decay, (1 + step)/(10 + step)), so early averages are not
    dominated by the random initialization (the schedule of TensorFlow's moving averages and
    improved DDPM's code). Buffers are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = self.decay_at(step)
        shadow = list(self.shadow.parameters())
        current = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(shadow, current, 1.0 - decay)
        for b_shadow, b in zip(self.shadow.buffers(), model.buffers()):
            b_shadow.copy_(b)

    def state_dict(self) -> dict:
        return self.shadow.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.shadow.load_state_dict(state)
