"""DPM-Solver++ multistep, ODE and SDE (Lu et al. 2022, "DPM-Solver++", Algorithm 2; §5 SDE)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .common import Callback, as_noise_source, report


def step_order(order: int, i: int, n: int, sigma_next: float, lower_order_final: bool) -> int:
    """Order of multistep step i of n: warm up from 1, drop to 1 on the step to σ = 0, and with
    ``lower_order_final`` (for n < 15, as diffusers does) end with orders …, 2, 1."""
    k = min(order, i + 1)
    if sigma_next == 0:
        return 1
    if lower_order_final and n < 15:
        k = min(k, n - i)
    return k


@torch.no_grad()
def dpmpp_multistep(
    denoise,
    x: Tensor,
    sigmas: Tensor,
    *,
    order: int = 2,
    sde: bool = False,
    lower_order_final: bool = True,
    noise_source=None,
    callback: Callback | None = None,
) -> Tensor:
    """Multistep DPM-Solver++ of order 1–3 in data prediction, with λ = −log σ and h = λₙ − λ.

    The exact solution of the ODE from σ to σₙ is x(σₙ) = (σₙ/σ)·x + σₙ∫ e^λ D dλ; expanding
    D in λ around the current point with earlier denoiser outputs as differences gives (σ-space;
    divide diffusers' VP formulas by αₙ)::

        order 1:  x_n = (σₙ/σ)x − (e^{−h} − 1)·D₀                        (= DDIM)
        order 2:  … − ½(e^{−h} − 1)·D₁,      D₁ = (D₀ − D₋₁)/r₀, r₀ = h₋₁/h
        order 3:  … + ((e^{−h} − 1)/h + 1)·D₁ − ((e^{−h} − 1 + h)/h² − ½)·D₂

    ``sde=True`` is SDE-DPM-Solver++ (the reverse SDE, Lu et al. 2022 §5; "2M SDE"):
    x_n = (σₙ/σ)e^{−h}x + (1 − e^{−2h})(D₀ + ½D₁) + σₙ√(1 − e^{−2h})·z at order 2; at order 3
    the D₁, D₂ coefficients are ∫₀ʰ2e^{−2(h−u)}·u^k/k! du divided by hᵏ.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"DPM-Solver++ order must be 1, 2 or 3, got {order}")
    noise = as_noise_source(noise_source)
    s = sigmas.tolist()
    n = len(s) - 1
    history: list[Tensor] = []  # denoiser outputs, newest last
    lambdas: list[float] = []
    for i in range(n):
        sigma, sigma_next = s[i], s[i + 1]
        denoised = denoise(x, sigma)
        history = (history + [denoised])[-order:]
        lambdas = (lambdas + [-math.log(sigma)])[-order:]
        k = step_order(order, i, n, sigma_next, lower_order_final)
        if sigma_next == 0:
            x = denoised
        else:
            h = math.log(sigma / sigma_next)
            d0, d1, d2 = _differences(history, lambdas, h, k)
            x = _update(x, sigma, sigma_next, h, d0, d1, d2, sde, noise)
        x = report(callback, i, s, x, denoised)
    return x


def _differences(history, lambdas, h, k):
    """D₀ and the scaled divided differences D₁ ≈ h·D′, D₂ ≈ h²·D″ from the last k outputs."""
    d0 = history[-1]
    if k == 1:
        return d0, None, None
    r0 = (lambdas[-1] - lambdas[-2]) / h
    d1_0 = (d0 - history[-2]) / r0
    if k == 2:
        return d0, d1_0, None
    r1 = (lambdas[-2] - lambdas[-3]) / h
    d1_1 = (history[-2] - history[-3]) / r1
    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    return d0, d1, d2


def _update(x, sigma, sigma_next, h, d0, d1, d2, sde, noise):
    ratio = sigma_next / sigma
    if not sde:
        em1 = math.expm1(-h)  # e^{−h} − 1
        x = ratio * x - em1 * d0
        if d1 is not None and d2 is None:
            x = x - 0.5 * em1 * d1
        elif d2 is not None:
            x = x + (em1 / h + 1) * d1 - ((em1 + h) / h**2 - 0.5) * d2
        return x
    e2 = -math.expm1(-2 * h)  # 1 − e^{−2h}
    x = ratio * math.exp(-h) * x + e2 * d0
    if d1 is not None and d2 is None:
        x = x + 0.5 * e2 * d1
    elif d2 is not None:
        x = x + (1 - e2 / (2 * h)) * d1 + (0.5 - 1 / (2 * h) + e2 / (4 * h**2)) * d2
    return x + sigma_next * math.sqrt(e2) * noise(x)
