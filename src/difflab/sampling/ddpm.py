"""DDPM ancestral sampling with fixed-small, fixed-large or learned variance."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .common import Callback, ancestral_sigma_up, ancestral_update, as_noise_source, report

VARIANCES = ("fixed_small", "fixed_large", "learned")


def step_factors(schedule, sigma: float, sigma_next: float) -> tuple[float, float]:
    """(β/s_prev², s_prev/s) of the step σ → σₙ, for any schedule, in the space x = xₜ/s.

    The forward step from x_prev to xₜ adds noise of variance β = d² − (s/s_prev)²·d_prev² in the
    network's space (xₜ = s·x₀ + d·ε); 1 − ᾱₜ/ᾱ_prev for a variance-preserving schedule (DDPM's βₜ)
    and σ² − σₙ² for a variance-exploding one (SMLD). Divided by s_prev² it is DDPM's ``fixed_large``
    variance in this space, (σ² − σₙ²)(1 + σₙ²)/(1 + σ²) for VP. The second factor moves a
    gradient taken in this space into the step's mean (see :func:`ddpm`)."""
    scale, std = schedule.scale_std_at_sigma(torch.tensor([sigma, sigma_next], dtype=torch.float64))
    (s, s_prev), (d, d_prev) = scale.tolist(), std.tolist()
    beta = d**2 - (s / s_prev) ** 2 * d_prev**2
    return beta / s_prev**2, s_prev / s


@torch.no_grad()
def ddpm(denoise, x: Tensor, sigmas: Tensor, *, variance: str = "fixed_small", noise_source=None,
         callback: Callback | None = None) -> Tensor:
    """Ancestral sampling from p(x_prev | x) = N(μ̃(x, x̂₀), Σ) (Ho et al. 2020, Algorithm 2).

    The mean is the posterior mean μ̃ of eq. 7. In σ-space (divided by √ᾱ_prev) it is
    x̂₀ + √(σₙ² − σ̃²)·ε̂ with σ̃² = β̃/ᾱ_prev = σₙ²(1 − σₙ²/σ²): the update DDIM makes with η = 1
    (:func:`~difflab.sampling.common.ancestral_update`, shared). The variance Σ/ᾱ_prev is

    * ``fixed_small``: β̃/ᾱ_prev = σ̃² (the lower bound of the true reverse variance); then the
      whole step is DDIM's with η = 1, to the bit (tests/test_sampling.py);
    * ``fixed_large``: β/ᾱ_prev with the step's own β (:func:`step_factors`; for a VP schedule
      (σ² − σₙ²)(1 + σₙ²)/(1 + σ²), for a VE one σ² − σₙ²);
    * ``learned``: exp(f·log β + (1 − f)·log β̃)/ᾱ_prev with f the model's variance output
      (improved DDPM, Nichol & Dhariwal 2021, eq. 15); needs a denoiser with ``predict``.

    The ``ddpm`` sampler stays its own function beside ``ddim`` for the two things DDIM has no
    use for: the variance choice and ADM's mean shift. Skipped steps use the step's own β, as
    improved DDPM's respacing does. No noise is added on the step to σ = 0.

    Classifier guidance in ``mode="mean"`` (ADM Algorithm 1, :mod:`difflab.guidance`) shifts the
    mean by Σ·s∇ₓₜ log p(y | xₜ). In this space (x = xₜ/s, variance Σ/s_prev²) that is
    std²·(s_prev/s)·``mean_gradient`` (``mean_gradient`` = s·s∇ₓₜ log p); for VP
    s_prev/s = √((1 + σ²)/(1 + σₙ²)). Like the noise it is skipped on the step to σ = 0, where Σ = 0.
    ``fixed_large``, ``learned`` and the mean shift read β from ``denoise.schedule``.
    """
    if variance not in VARIANCES:
        raise ValueError(f"unknown DDPM variance {variance!r}; choose one of: {', '.join(VARIANCES)}")
    if variance == "learned" and not hasattr(denoise, "predict"):
        raise ValueError("variance='learned' needs a denoiser built with learned_variance=True")
    noise = as_noise_source(noise_source)
    s = sigmas.tolist()
    for i in range(len(s) - 1):
        sigma, sigma_next = s[i], s[i + 1]
        out = denoise.predict(x, sigma) if hasattr(denoise, "predict") else None
        denoised = out.x0 if out is not None else denoise(x, sigma)
        if variance == "learned" and out.variance_frac is None:
            raise ValueError("variance='learned' needs a model with learned_variance=True")
        small = ancestral_sigma_up(sigma, sigma_next)
        x = ancestral_update(x, denoised, sigma, sigma_next, small)
        if sigma_next > 0:
            shifted = out is not None and out.mean_gradient is not None
            if variance != "fixed_small" or shifted:
                large_sq, gradient_factor = step_factors(_schedule_of(denoise), sigma, sigma_next)
            if variance == "fixed_small":
                std = small
            elif variance == "fixed_large":
                std = math.sqrt(large_sq)
            else:
                frac = out.variance_frac
                log_var = frac * math.log(large_sq) + (1 - frac) * math.log(max(small**2, 1e-20))
                std = torch.exp(0.5 * log_var)
            if shifted:  # ADM Algorithm 1: μ + Σ·s∇ log p(y | xₜ), moved into this space (see docstring)
                x = x + std**2 * gradient_factor * out.mean_gradient
            x = x + std * noise(x)
        x = report(callback, i, s, x, denoised)
    return x


def _schedule_of(denoise):
    schedule = getattr(denoise, "schedule", None)
    if schedule is None:
        raise ValueError("ddpm's fixed_large and learned variances and classifier guidance in mode='mean' need the "
                         "noise schedule: pass a Denoiser (it carries the schedule)")
    return schedule
