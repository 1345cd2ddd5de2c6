"""Data whose denoiser is exact in closed form: isotropic Gaussian mixtures.

For p(x₀) = Σₖ πₖ N(μₖ, sₖ²I) and x = x₀ + σε the posterior mean is (Karras et al. 2022, App. B.3
treats the single Gaussian)::

    D(x, σ) = Σₖ wₖ(x)·(μₖ + sₖ²/(sₖ² + σ²)·(x − μₖ)),   wₖ ∝ πₖ·N(x; μₖ, (sₖ² + σ²)I)

so samplers, losses and likelihoods can be tested against exact answers. The probability-flow
ODE dx/dσ = (x − D(x, σ))/σ has a closed-form solution for one Gaussian and is integrated to
high accuracy (DOP853, tolerance 1e-11) for a mixture.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import process


class GaussianMixture:
    """An isotropic Gaussian mixture in ``dim`` dimensions (samples of shape (N, dim))."""

    def __init__(self, means, stds, weights=None):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        if self.means.ndim != 2:
            raise ValueError("means must have shape (components, dim)")
        k = self.means.shape[0]
        self.stds = torch.as_tensor(stds, dtype=torch.float64).expand(k).clone()
        w = torch.ones(k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.weights = w / w.sum()

    @classmethod
    def gaussian(cls, dim: int, mean: float = 0.0, std: float = 1.0) -> GaussianMixture:
        return cls(torch.full((1, dim), float(mean)), [std])

    @classmethod
    def random(cls, components: int, dim: int, spread: float = 1.0, std_range=(0.1, 0.3), seed: int = 0):
        """Components with means ~ N(0, spread²) and stds uniform in ``std_range``."""
        g = torch.Generator().manual_seed(seed)
        means = torch.randn(components, dim, generator=g, dtype=torch.float64) * spread
        lo, hi = std_range
        stds = lo + (hi - lo) * torch.rand(components, generator=g, dtype=torch.float64)
        weights = 0.5 + torch.rand(components, generator=g, dtype=torch.float64)
        return cls(means, stds, weights)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k, None] * eps

    def log_prob(self, x: Tensor, sigma=0.0) -> Tensor:
        """log p_σ(x), the density of x = x₀ + σε."""
        x = x.to(torch.float64)
        var = self.stds**2 + float(sigma) ** 2  # (K,)
        sq = ((x[:, None, :] - self.means[None]) ** 2).sum(-1)  # (N, K)
        log_n = -0.5 * sq / var - 0.5 * self.dim * torch.log(2 * math.pi * var)
        return torch.logsumexp(torch.log(self.weights) + log_n, dim=1)

    def denoise(self, x: Tensor, sigma) -> Tensor:
        """E[x₀ | x₀ + σε = x], exactly; ``sigma`` a float or a per-sample tensor (N,)."""
        dtype = x.dtype
        x = x.to(torch.float64)
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
        sig2 = (sigma**2).reshape(-1, 1) if sigma.ndim else sigma**2  # (N, 1) or ()
        var = self.stds[None] ** 2 + sig2  # (N, K) or (1, K)
        diff = x[:, None, :] - self.means[None]  # (N, K, dim)
        log_w = torch.log(self.weights) - 0.5 * (diff**2).sum(-1) / var - 0.5 * self.dim * torch.log(var)
        w = torch.softmax(log_w, dim=1)  # (N, K)
        shrink = self.stds[None] ** 2 / var  # (N, K)
        per_component = self.means[None] + shrink[..., None] * diff
        return (w[..., None] * per_component).sum(1).to(dtype)

    def model(self, schedule, prediction: str = "epsilon"):
        """A model function ``model(x_t, t)`` returning the exact prediction of the given type."""
        process.check_prediction_type(prediction)

        def model_fn(x_t: Tensor, t: Tensor) -> Tensor:
            t64 = t.to(torch.float64).cpu()
            scale, std = schedule.scale_std(t64)
            x_t64 = x_t.to(torch.float64)
            x0 = self.denoise(x_t64 / process.broadcast_to(scale, x_t64), schedule.sigma(t64))
            eps = process.to_epsilon(x_t64, x0, scale, std)
            return process.training_target(prediction, x0, eps, scale, std).to(x_t.dtype)

        return model_fn

    def ode_solution(self, x: Tensor, sigma_start: float, sigma_end: float = 0.0) -> Tensor:
        """Solve the probability-flow ODE from σ_start to σ_end (0 allowed) for each row of x.

        One Gaussian: x(σ) = μ + (x − μ)·√((s² + σ²)/(s² + σ_start²)). A mixture: DOP853 on
        dx/du = x − D(x, eᵘ) with u = log σ down to σ = 1e-6, then x̂₀ = D(x, 1e-6), whose error
        is O(10⁻¹² / s²).
        """
        x = x.to(torch.float64)
        if len(self.stds) == 1:
            mu, s = self.means[0], float(self.stds[0])
            return mu + (x - mu) * math.sqrt((s**2 + sigma_end**2) / (s**2 + sigma_start**2))
        from scipy.integrate import solve_ivp

        tiny = 1e-6
        end = max(sigma_end, tiny)
        shape = x.shape

        def rhs(u, y):
            xs = torch.from_numpy(y).reshape(shape)
            return (xs - self.denoise(xs, math.exp(u))).reshape(-1).numpy()

        sol = solve_ivp(
            rhs, (math.log(sigma_start), math.log(end)), x.reshape(-1).numpy(), method="DOP853", rtol=1e-11, atol=1e-11
        )
        if not sol.success:
            raise RuntimeError(f"reference ODE solve failed: {sol.message}")
        out = torch.from_numpy(sol.y[:, -1]).reshape(shape)
        return self.denoise(out, tiny) if sigma_end == 0 else out
