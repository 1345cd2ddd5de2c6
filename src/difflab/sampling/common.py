"""Pieces every sampler shares: noise sources, the ancestral split, EDM churn, step records.

Samplers are plain functions ``sampler(denoise, x, sigmas, *, noise_source=None, callback=None, ...)``:
``denoise(x, sigma) -> x0`` is the denoiser (:mod:`difflab.denoiser`), ``x`` starts at noise level
``sigmas[0]`` in the space x = x₀ + σ·ε, and ``sigmas`` is a descending float64 tensor whose last
entry is 0 for a final denoise. Scalar coefficients are computed in Python floats (float64) from
``sigmas.tolist()``, so the loops never wait on the device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Step:
    """What a sampler reports to ``callback`` after step ``i`` of ``n``.

    The callback may return a tensor of x's shape: the sampler continues from it instead of ``x``
    (inpainting's blend and RePaint, editing, cancellation by raising). Both ``x`` and
    ``denoised`` are in the sampler's space x = x₀ + σ·ε (latents for a latent model)."""

    i: int
    n: int
    sigma: float
    sigma_next: float
    x: Tensor  # the state after the step, at sigma_next
    denoised: Tensor  # the denoiser's x̂₀ at sigma


Callback = Callable[[Step], "Tensor | None"]


class StepOfCall:
    """Which step of a solver's walk a model call belongs to, read from the call's time input t.

    ``sigmas``: the walk (decreasing, ending at 0). A call at level σ is in step k when k of the
    walk's starting levels lie above σ (with a 1e-4 relative margin: the level a step starts from
    counts as that step's); so every call of a multistep or multistage solver within one step
    reads the same k, for any sampler, without touching the sampling path (prompt-to-prompt's
    controller, null-text inversion's per-step contexts).
    """

    def __init__(self, schedule, sigmas: Tensor):
        self.schedule = schedule
        self.levels = sigmas[:-1].double().cpu()  # the level each step starts from, decreasing

    def __call__(self, t: Tensor) -> int:
        sigma = float(self.schedule.sigma(t[:1].detach().double().cpu()))
        return int((self.levels > sigma * (1 + 1e-4)).sum())  # steps already behind


class NoiseSource:
    """Standard normal noise for sampling, reproducible run to run.

    With ``seeds`` (one int per sample) every sample draws from its own CPU generator, so a
    sample's result depends on its seed alone: not on the batch it is in (EDM's per-sample RNG),
    nor on the device. A pipeline draws the starting noise from it first, then the stochastic
    samplers' noise, one stream per image. With ``generator`` the batch draws from one generator;
    with neither, from torch's global RNG.
    """

    def __init__(self, generator: torch.Generator | None = None, seeds: Sequence[int] | None = None):
        self.generator = generator
        self.seeds = list(seeds) if seeds is not None else None
        self._per_sample: list[torch.Generator] | None = None

    def __call__(self, like: Tensor) -> Tensor:
        if self.seeds is None:
            return torch.randn(like.shape, generator=self.generator, dtype=like.dtype, device=like.device)
        if len(self.seeds) != like.shape[0]:
            raise ValueError(f"got {len(self.seeds)} seeds for a batch of {like.shape[0]}: give one seed per sample")
        if self._per_sample is None:
            self._per_sample = [torch.Generator().manual_seed(int(s)) for s in self.seeds]
        noise = torch.stack([torch.randn(like.shape[1:], generator=g) for g in self._per_sample])
        return noise.to(device=like.device, dtype=like.dtype)


def as_noise_source(noise) -> NoiseSource | Callable[[Tensor], Tensor]:
    """None → global RNG; a ``torch.Generator`` or an int seed → that generator; else a callable."""
    if noise is None:
        return NoiseSource()
    if isinstance(noise, torch.Generator):
        return NoiseSource(generator=noise)
    if isinstance(noise, int):
        return NoiseSource(generator=torch.Generator().manual_seed(noise))
    return noise


def ancestral_sigma_up(sigma: float, sigma_next: float) -> float:
    """Std of the fresh noise of a full ancestral step σ → σₙ: σₙ·√(1 − σₙ²/σ²).

    This is DDPM's posterior std √β̃ divided by √ᾱ_prev (Ho et al. 2020, eq. 7), the noise of
    DDIM with η = 1 (Song et al. 2021, eq. 16) and k-diffusion's ``get_ancestral_step``.
    """
    if sigma_next == 0:
        return 0.0
    return sigma_next * math.sqrt(max(0.0, 1.0 - (sigma_next / sigma) ** 2))


def churn(x: Tensor, sigma: float, gamma: float, noise, noise_scale: float = 1.0) -> tuple[Tensor, float]:
    """EDM's stochastic "churn" (Karras et al. 2022, Algorithm 2, lines 5–6).

    Raise the noise level from σ to σ̂ = σ(1 + γ) by adding fresh noise of std √(σ̂² − σ²).
    """
    if gamma <= 0:
        return x, sigma
    sigma_hat = sigma * (1 + gamma)
    return x + noise(x) * noise_scale * math.sqrt(sigma_hat**2 - sigma**2), sigma_hat


def churn_gamma(sigma: float, churn_amount: float, steps: int, churn_range: tuple[float, float]) -> float:
    """γᵢ = min(S_churn/N, √2 − 1) inside [S_tmin, S_tmax], else 0 (EDM, Algorithm 2)."""
    lo, hi = churn_range
    if churn_amount <= 0 or not lo <= sigma <= hi:
        return 0.0
    return min(churn_amount / steps, math.sqrt(2) - 1)


def ancestral_update(x: Tensor, denoised: Tensor, sigma: float, sigma_next: float, sigma_up: float) -> Tensor:
    """The deterministic part of an ancestral step σ → σₙ that will add noise of std σ_up:
    x̂₀ + √(σₙ² − σ_up²)·ε̂ with ε̂ = (x − x̂₀)/σ (DDIM eq. 12 divided by √ᾱ_prev). DDIM (any η)
    and DDPM (whatever its variance) share it; they differ in σ_up and in the noise added."""
    return denoised + math.sqrt(sigma_next**2 - sigma_up**2) * ((x - denoised) / sigma)


def report(callback: Callback | None, i: int, sigmas: list[float], x: Tensor, denoised: Tensor) -> Tensor:
    """Tell ``callback`` about step i; returns the state to continue from (the callback's
    replacement, if it returned one)."""
    if callback is None:
        return x
    replacement = callback(Step(i, len(sigmas) - 1, sigmas[i], sigmas[i + 1], x, denoised))
    if replacement is None:
        return x
    if not isinstance(replacement, Tensor) or replacement.shape != x.shape:
        raise ValueError(f"a sampler callback may return None or a tensor of shape {tuple(x.shape)}, "
                         f"got {getattr(replacement, 'shape', type(replacement).__name__)}")
    return replacement.to(x.dtype)
