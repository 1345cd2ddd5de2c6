"""DDPM ancestral sampling with fixed-small, fixed-large or learned variance."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .common import Callback, ancestral_sigma_up, as_noise_source, report

VARIANCES = ("fixed_small", "fixed_large", "learned")


@torch.no_grad()
def ddpm(
    denoise, x: Tensor, sigmas: Tensor, *, variance: str = "fixed_small", noise_source=None, callback: Callback | None = None
) -> Tensor:
    """Ancestral sampling from p(x_prev | x) = N(μ̃(x, x̂₀), Σ) (Ho et al. 2020, Algorithm 2).

    The mean is the posterior mean μ̃ of eq. 7. In σ-space (divided by √ᾱ_prev) it is
    x̂₀ + √(σₙ² − σ̃²)·ε̂ with σ̃² = β̃/ᾱ_prev = σₙ²(1 − σₙ²/σ²). The variance Σ/ᾱ_prev is

    * ``fixed_small``: β̃/ᾱ_prev = σ̃² (the lower bound of the true reverse variance);
    * ``fixed_large``: β/ᾱ_prev = (σ² − σₙ²)(1 + σₙ²)/(1 + σ²), with the step's β = 1 − ᾱ/ᾱ_prev;
    * ``learned``: exp(f·log β + (1 − f)·log β̃)/ᾱ_prev with f the model's variance output
      (improved DDPM, Nichol & Dhariwal 2021, eq. 15); needs a denoiser with ``predict``.

    Skipped steps use the step's own β, as improved DDPM's respacing does. No noise is added on
    the step to σ = 0.

    Classifier guidance in ``mode="mean"`` (ADM Algorithm 1, :mod:`difflab.guidance`) shifts the
    mean by Σ·s∇ₓₜ log p(y | xₜ). With x = xₜ/√ᾱₜ and Σ/ᾱ_prev the variance here, that is
    std²·√(ᾱ_prev/ᾱₜ)·s∇ₓ log p = std²·√((1 + σ²)/(1 + σₙ²))·``mean_gradient``; like the noise it
    is skipped on the step to σ = 0, where Σ = 0.
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
        eps = (x - denoised) / sigma
        x = denoised + math.sqrt(sigma_next**2 - small**2) * eps
        if sigma_next > 0:
            large_sq = (sigma**2 - sigma_next**2) * (1 + sigma_next**2) / (1 + sigma**2)
            if variance == "fixed_small":
                std = small
            elif variance == "fixed_large":
                std = math.sqrt(large_sq)
            else:
                log_var = out.variance_frac * math.log(large_sq) + (1 - out.variance_frac) * math.log(max(small**2, 1e-20))
                std = torch.exp(0.5 * log_var)
            if out is not None and out.mean_gradient is not None:
                # ADM Algorithm 1: μ + Σ·s∇ log p(y | xₜ), moved into this space (see docstring).
                x = x + std**2 * math.sqrt((1 + sigma**2) / (1 + sigma_next**2)) * out.mean_gradient
            x = x + std * noise(x)
        report(callback, i, s, x, denoised)
    return x
