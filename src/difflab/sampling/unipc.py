"""UniPC: unified predictor-corrector (Zhao et al. 2023, "UniPC", Algorithms 2–3, B(h) variants)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .common import Callback, report

VARIANTS = ("bh1", "bh2")


def _coefficients(rks: list[float], h: float, order: int, variant: str):
    """Solve UniPC's order conditions R·ρ = b for the data-prediction form (hh = −h).

    Rows k = 1..order: R[k] = r^(k−1) over the nodes r (earlier points and the end point 1),
    b[k] = k!·φ_{k+1}(hh)·hh/B(h) with h·φ₁ = e^{hh} − 1 (Zhao et al. 2023, eq. 9 and App. C).
    B(h) = hh ("bh1") or e^{hh} − 1 ("bh2").
    """
    hh = -h
    h_phi_1 = math.expm1(hh)
    b_h = hh if variant == "bh1" else h_phi_1
    h_phi_k = h_phi_1 / hh - 1
    factorial = 1
    rows, rhs = [], []
    for k in range(1, order + 1):
        rows.append([r ** (k - 1) for r in rks])
        rhs.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return np.array(rows, dtype=np.float64), np.array(rhs, dtype=np.float64), h_phi_1, b_h


def _history_terms(history, lambdas, lam0, h, count):
    """Ratios r_k = (λ_k − λ₀)/h and scaled differences (D_k − D₀)/r_k for `count` earlier points."""
    rks, diffs = [], []
    for k in range(1, count + 1):
        rk = (lambdas[-1 - k] - lam0) / h
        rks.append(rk)
        diffs.append((history[-1 - k] - history[-1]) / rk)
    return rks, diffs


def _predict(x, sigma, sigma_next, history, lambdas, order, variant):
    """UniP-p: x_n = (σₙ/σ)x − hφ₁·D₀ − B(h)·Σ ρₖ·(Dₖ − D₀)/rₖ."""
    h = math.log(sigma / sigma_next)
    rks, diffs = _history_terms(history, lambdas, lambdas[-1], h, order - 1)
    R, b, h_phi_1, b_h = _coefficients(rks + [1.0], h, order, variant)
    x_new = (sigma_next / sigma) * x - h_phi_1 * history[-1]
    if diffs:
        rhos = [0.5] if order == 2 else np.linalg.solve(R[:-1, :-1], b[:-1]).tolist()
        x_new = x_new - b_h * sum(rho * d for rho, d in zip(rhos, diffs))
    return x_new


def _correct(x_prev, sigma_prev, sigma, history, lambdas, denoised, order, variant):
    """UniC-p: redo the last step with the new output D at its end point as one more node."""
    h = math.log(sigma_prev / sigma)
    rks, diffs = _history_terms(history, lambdas, lambdas[-1], h, order - 1)
    R, b, h_phi_1, b_h = _coefficients(rks + [1.0], h, order, variant)
    rhos = [0.5] if order == 1 else np.linalg.solve(R, b).tolist()
    x_new = (sigma / sigma_prev) * x_prev - h_phi_1 * history[-1]
    correction = rhos[-1] * (denoised - history[-1])
    for rho, d in zip(rhos[:-1], diffs):
        correction = correction + rho * d
    return x_new - b_h * correction


@torch.no_grad()
def unipc(
    denoise,
    x: Tensor,
    sigmas: Tensor,
    *,
    order: int = 2,
    variant: str = "bh2",
    corrector: bool = True,
    lower_order_final: bool = True,
    callback: Callback | None = None,
) -> Tensor:
    """UniPC multistep in data prediction (UniPC-p with the UniC corrector), in σ-space.

    Each model call at a new point first corrects that point (UniC, which raises the order by
    one at no extra call), then predicts the next (UniP). The corrected point's own output is
    the one evaluated before correction, as in the paper (§3.2). ``lower_order_final`` lowers the
    order near the end (min(order, steps left)), as diffusers does; the step to σ = 0 is order 1.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown UniPC variant {variant!r}; choose one of: {', '.join(VARIANTS)}")
    if order not in (1, 2, 3):
        raise ValueError(f"UniPC order must be 1, 2 or 3, got {order}")
    s = sigmas.tolist()
    n = len(s) - 1
    history: list[Tensor] = []
    lambdas: list[float] = []
    x_prev, prev_order = None, None
    for i in range(n):
        sigma, sigma_next = s[i], s[i + 1]
        denoised = denoise(x, sigma)
        if corrector and x_prev is not None:
            x = _correct(x_prev, s[i - 1], sigma, history, lambdas, denoised, prev_order, variant)
        history = (history + [denoised])[-order:]
        lambdas = (lambdas + [-math.log(sigma)])[-order:]
        k = min(order, n - i) if lower_order_final else order
        k = 1 if sigma_next == 0 else min(k, i + 1)
        x_prev, prev_order = x, k
        x = denoised if sigma_next == 0 else _predict(x, sigma, sigma_next, history, lambdas, k, variant)
        replaced = report(callback, i, s, x, denoised)
        if replaced is not x:  # a callback moved x: the next corrector has no predictor step to correct
            x, x_prev = replaced, None
    return x
