"""DDIM with η, its ancestral special cases, and DDIM inversion."""

from __future__ import annotations

import torch
from torch import Tensor

from .common import Callback, ancestral_sigma_up, ancestral_update, as_noise_source, report


@torch.no_grad()
def ddim(denoise, x: Tensor, sigmas: Tensor, *, eta: float = 0.0, noise_source=None,
         callback: Callback | None = None) -> Tensor:
    """DDIM (Song et al. 2021, "Denoising Diffusion Implicit Models", eq. 12) in σ-space.

    Divided by √ᾱ_prev, eq. 12 reads, with ε̂ = (x − x̂₀)/σ::

        x_next = x̂₀ + √(σₙ² − σ_up²)·ε̂ + σ_up·z,     σ_up = η·σₙ·√(1 − σₙ²/σ²)

    η = 0 is deterministic and equals Euler's method on the probability-flow ODE
    (Karras et al. 2022, §3); η = 1 is DDPM ancestral sampling with the posterior variance β̃,
    and also k-diffusion's / diffusers' Euler-ancestral, which is why ``euler_ancestral`` is this
    function with η = 1.
    """
    noise = as_noise_source(noise_source)
    s = sigmas.tolist()
    for i in range(len(s) - 1):
        sigma, sigma_next = s[i], s[i + 1]
        denoised = denoise(x, sigma)
        sigma_up = min(sigma_next, eta * ancestral_sigma_up(sigma, sigma_next))
        x = ancestral_update(x, denoised, sigma, sigma_next, sigma_up)
        if sigma_up > 0:
            x = x + sigma_up * noise(x)
        x = report(callback, i, s, x, denoised)
    return x


@torch.no_grad()
def ddim_invert(denoise, x0: Tensor, sigmas: Tensor, *, callback: Callback | None = None) -> Tensor:
    """DDIM inversion: the deterministic DDIM update run with *ascending* σ (image → noise).

    Each step σ → σₙ is x_n = x + (σₙ − σ)·ε̂ with ε̂ = (x − D(x, σ))/σ evaluated at the current
    point, the usual approximation (Dhariwal & Nichol 2021, App. F; Mokady et al. 2023). From
    σ = 0, ε̂ is taken at σₙ, as diffusers' DDIMInverseScheduler does. Running :func:`ddim`
    with the reversed sigmas maps the result back to (approximately) the image.
    """
    s = sigmas.tolist()
    if s[0] < 0 or any(b <= a for a, b in zip(s, s[1:])):
        raise ValueError("inversion needs ascending, non-negative sigmas")
    x = x0
    for i in range(len(s) - 1):
        sigma_eval = s[i] if s[i] > 0 else s[i + 1]
        denoised = denoise(x, sigma_eval)
        x = x + (s[i + 1] - s[i]) * (x - denoised) / sigma_eval
        x = report(callback, i, s, x, denoised)
    return x
