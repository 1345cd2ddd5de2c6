"""The learning rate over training: linear warm-up, then constant or decaying.

    factor(s) = (s + 1) / W                                  for s < W (warm-up steps W)
    factor(s) = f + (1 − f) · d(p),  p = (s − W) / (S − W)   after it (S = train.steps)

with d = 1 (``constant``), d(p) = ½(1 + cos πp) (``cosine``, Loshchilov & Hutter 2017, SGDR
without restarts) or d(p) = 1 − p (``linear``), and f = ``optim.min_lr_fraction``. The rate is
``optim.lr · factor(step)``. The factor depends on the step only, so a resumed run continues the
same curve (the scheduler's state in the checkpoint holds the step).
"""

from __future__ import annotations

import math

LR_SCHEDULES = ("constant", "cosine", "linear")


def lr_factor(step: int, warmup: int, total: int, shape: str = "constant", floor: float = 0.0) -> float:
    """The multiplier of the base learning rate at 0-based ``step`` (see the module docstring)."""
    if shape not in LR_SCHEDULES:
        raise ValueError(f"optim.lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {shape!r}")
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"optim.min_lr_fraction must be in [0, 1], got {floor}")
    if step < warmup:
        return (step + 1) / warmup
    if shape == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    decay = 0.5 * (1.0 + math.cos(math.pi * progress)) if shape == "cosine" else 1.0 - progress
    return floor + (1.0 - floor) * decay


def lr_lambda(warmup: int, total: int, shape: str = "constant", floor: float = 0.0):
    """``lr_factor`` with its settings bound, for ``torch.optim.lr_scheduler.LambdaLR``; checks
    the settings at once rather than at the first step."""
    lr_factor(0, warmup, total, shape, floor)
    return lambda step: lr_factor(step, warmup, total, shape, floor)
