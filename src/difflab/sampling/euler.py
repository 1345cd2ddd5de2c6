"""Euler and Heun on the probability-flow ODE, with EDM's optional churn."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .common import Callback, as_noise_source, churn, churn_gamma, report


@torch.no_grad()
def euler(
    denoise,
    x: Tensor,
    sigmas: Tensor,
    *,
    churn_amount: float = 0.0,
    churn_range: tuple[float, float] = (0.0, math.inf),
    churn_noise: float = 1.0,
    noise_source=None,
    callback: Callback | None = None,
) -> Tensor:
    """Euler's method on dx/dσ = (x − D(x, σ))/σ (Karras et al. 2022, eq. 3 with σ(t) = t).

    With ``churn_amount`` > 0, each step first raises σ to σ̂ = σ(1 + γ) with fresh noise
    (EDM Algorithm 2, S_churn / S_tmin..S_tmax / S_noise).
    """
    noise = as_noise_source(noise_source)
    s = sigmas.tolist()
    n = len(s) - 1
    for i in range(n):
        gamma = churn_gamma(s[i], churn_amount, n, churn_range)
        x, sigma = churn(x, s[i], gamma, noise, churn_noise)
        denoised = denoise(x, sigma)
        x = x + (s[i + 1] - sigma) * (x - denoised) / sigma
        report(callback, i, s, x, denoised)
    return x


@torch.no_grad()
def heun(
    denoise,
    x: Tensor,
    sigmas: Tensor,
    *,
    churn_amount: float = 0.0,
    churn_range: tuple[float, float] = (0.0, math.inf),
    churn_noise: float = 1.0,
    noise_source=None,
    callback: Callback | None = None,
) -> Tensor:
    """Heun's second-order method (Karras et al. 2022, Algorithm 1/2).

    An Euler step to σₙ, then the trapezoidal correction with the slope there; the step to
    σ = 0 stays Euler (the slope is undefined at 0). 2·N − 1 model calls for N steps.
    """
    noise = as_noise_source(noise_source)
    s = sigmas.tolist()
    n = len(s) - 1
    for i in range(n):
        gamma = churn_gamma(s[i], churn_amount, n, churn_range)
        x, sigma = churn(x, s[i], gamma, noise, churn_noise)
        sigma_next = s[i + 1]
        denoised = denoise(x, sigma)
        d = (x - denoised) / sigma
        x_next = x + (sigma_next - sigma) * d
        if sigma_next > 0:
            d_next = (x_next - denoise(x_next, sigma_next)) / sigma_next
            x_next = x + (sigma_next - sigma) * 0.5 * (d + d_next)
        x = x_next
        report(callback, i, s, x, denoised)
    return x
