"""Multistep consistency sampling (Song et al. 2023, "Consistency Models", Algorithm 1)."""

from __future__ import annotations

import torch
from torch import Tensor

from .common import Callback, as_noise_source, report


@torch.no_grad()
def consistency(denoise, x: Tensor, sigmas: Tensor, *, noise_source=None, callback: Callback | None = None) -> Tensor:
    """Each step maps x straight to an image, then noises that image afresh to the next level::

        x̂₀ = f(x, σ),     x_next = x̂₀ + σₙ·z,   z ~ N(0, I)

    where f is ``denoise``: for a consistency model (``difflab distill --method consistency``) the
    map from any point of a probability-flow ODE trajectory to its origin, so one step already gives
    an image and the later ones refine it. The paper's Algorithm 1 noises by √(σₙ² − ε²)·z for its
    boundary level ε; difflab's consistency function has its boundary at σ = 0 (f(x, 0) = x), so ε = 0.
    No noise follows the last step (σₙ = 0). The same update is DDIM's with all of the step's noise
    fresh (η → ∞), and diffusers' ``LCMScheduler`` once its boundary skip is zero
    (tests/test_consistency_distill.py)."""
    noise = as_noise_source(noise_source)
    s = sigmas.tolist()
    for i in range(len(s) - 1):
        denoised = denoise(x, s[i])
        x = denoised + s[i + 1] * noise(denoised) if s[i + 1] > 0 else denoised
        x = report(callback, i, s, x, denoised)
    return x


def consistency_levels(levels: list[float], steps: int) -> Tensor:
    """The k = ``steps`` noise levels of multistep consistency sampling, taken from the N + 1 levels a
    consistency model was trained on (descending, ending in 0): σ at indices ⌊j·N/k⌋ for
    j = 0 … k − 1, then 0. One step is (σ_max, 0); k = N walks every level."""
    n = len(levels) - 1
    if not 1 <= steps <= n:
        raise ValueError(f"a consistency-distilled run samples with 1 to {n} steps (its training levels), got {steps}")
    return torch.tensor([levels[j * n // steps] for j in range(steps)] + [0.0], dtype=torch.float64)
