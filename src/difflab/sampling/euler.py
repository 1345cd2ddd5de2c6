"""Euler and Heun on the probability-flow ODE, with EDM's optional churn."""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import Tensor

from .common import Callback, as_noise_source, churn, churn_gamma, report


@torch.no_grad()
def edm_ode(
    denoise,
    x: Tensor,
    sigmas: Tensor,
    *,
    order: int = 1,
    churn_amount: float = 0.0,
    churn_range: tuple[float, float] = (0.0, math.inf),
    churn_noise: float = 1.0,
    noise_source=None,
    callback: Callback | None = None,
) -> Tensor:
    """Euler (``order=1``) or Heun (``order=2``) steps on dx/dσ = (x − D(x, σ))/σ
    (Karras et al. 2022, eq. 3 with σ(t) = t; Algorithms 1 and 2).

    Heun takes an Euler step to σₙ, then the trapezoidal correction with the slope there; the
    step to σ = 0 stays Euler (the slope is undefined at 0), so N steps cost 2·N − 1 model calls.
    With ``churn_amount`` > 0, each step first raises σ to σ̂ = σ(1 + γ) with fresh noise
    (EDM Algorithm 2, S_churn / S_tmin..S_tmax / S_noise).
    """
    if order not in (1, 2):
        raise ValueError(f"order must be 1 (Euler) or 2 (Heun), got {order}")
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
        if order == 2 and sigma_next > 0:
            d_next = (x_next - denoise(x_next, sigma_next)) / sigma_next
            x_next = x + (sigma_next - sigma) * 0.5 * (d + d_next)
        x = x_next
        x = report(callback, i, s, x, denoised)
    return x


euler = partial(edm_ode, order=1)
heun = partial(edm_ode, order=2)
