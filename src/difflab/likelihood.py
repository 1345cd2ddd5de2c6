"""The variational bound (DDPM's L_vlb) in bits per dimension, for training and for NLL evaluation.

L = L_T + Σ_{t≥1} L_{t−1} + L_0 (Ho et al. 2020, eq. 5; Nichol & Dhariwal 2021, §2.1):

* L_T = KL(q(x_T | x₀) ‖ N(0, I)), the prior term;
* L_{t−1} = KL(q(x_{t−1} | xₜ, x₀) ‖ p(x_{t−1} | xₜ)), Gaussians on both sides;
* L_0 = −log p(x₀ | x₁) with the discretized Gaussian decoder of DDPM eq. 13 (data in [−1, 1],
  256 bins, the outer bins reaching ±∞).

All terms are averaged over dimensions and divided by ln 2, so they are in bits/dim. Defined for
discrete variance-preserving schedules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from . import process

LN2 = math.log(2.0)


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _std_normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor, bins: int = 256) -> Tensor:
    """log P(x) for data x ∈ [−1, 1] quantized to ``bins`` levels under N(mean, e^{2·log_scale})
    integrated over each bin (DDPM eq. 13); the first and last bins extend to ∓∞."""
    half = 1.0 / (bins - 1)  # half a bin width: bins are 2/(bins − 1) wide
    inv_std = torch.exp(-log_scale)
    cdf_plus = _std_normal_cdf(inv_std * (x - mean + half))
    cdf_minus = _std_normal_cdf(inv_std * (x - mean - half))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_minus = torch.log((1.0 - cdf_minus).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_minus).clamp(min=1e-12))
    edge = 1.0 - half  # beyond this the pixel is in an outer bin
    return torch.where(x < -edge, log_cdf_plus, torch.where(x > edge, log_one_minus_cdf_minus, log_delta))


def _mean_bits(nats: Tensor) -> Tensor:
    """Average over all but the batch dimension, in bits."""
    return nats.reshape(nats.shape[0], -1).mean(dim=1) / LN2


def model_log_variance(post: process.Posterior, variance_frac: Tensor | None, x: Tensor, variance: str) -> Tensor:
    """log Σ of p(x_{t−1} | xₜ): learned (f·log β + (1 − f)·log β̃, improved DDPM eq. 15), or
    fixed to β̃ ("fixed_small") or β ("fixed_large")."""
    log_small = process.broadcast_to(post.log_variance_clipped, x)
    log_large = process.broadcast_to(torch.log(post.beta), x)
    if variance_frac is not None:
        return variance_frac * log_large + (1 - variance_frac) * log_small
    if variance == "fixed_large":
        return log_large.expand_as(x)
    return log_small.expand_as(x)


def vlb_terms(
    schedule,
    prediction: str,
    output: Tensor,
    x0: Tensor,
    x_t: Tensor,
    t: Tensor,
    variance_frac: Tensor | None = None,
    variance: str = "fixed_small",
) -> Tensor:
    """L_{t−1} for each sample (bits/dim): the KL for t ≥ 1 and the decoder NLL for t = 0.

    ``output`` is the network's mean output (ε, x₀ or v) at xₜ; ``t`` holds integer timesteps.
    """
    t = torch.as_tensor(t, dtype=torch.float64).cpu()
    scale, std = schedule.scale_std(t)
    x0_pred = process.to_x0(prediction, output, x_t, scale, std)
    post = process.posterior(schedule, t, t - 1)
    model_mean = post.mean(x0_pred, x_t)
    log_var = model_log_variance(post, variance_frac, x_t, variance)
    true_log_var = process.broadcast_to(post.log_variance_clipped, x_t)
    kl = _mean_bits(normal_kl(post.mean(x0, x_t), true_log_var, model_mean, log_var))
    nll = -_mean_bits(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * log_var))
    return torch.where(t.to(x0.device) == 0, nll, kl)


def prior_bits(schedule, x0: Tensor) -> Tensor:
    """L_T = KL(q(x_T | x₀) ‖ N(0, I)) in bits/dim; near 0 for a good schedule."""
    scale, std = schedule.scale_std(torch.tensor(schedule.t_max, dtype=torch.float64))
    mean = float(scale) * x0
    log_var = torch.full_like(x0, 2 * math.log(float(std)))
    return _mean_bits(normal_kl(mean, log_var, torch.zeros_like(x0), torch.zeros_like(x0)))


@dataclass
class BitsPerDim:
    """The bound per sample: ``total`` = ``prior`` + ``terms.sum(1)``; ``terms[:, t]`` = L_t."""

    total: Tensor
    prior: Tensor
    terms: Tensor


@torch.no_grad()
def bits_per_dim(
    model,
    x0: Tensor,
    schedule,
    *,
    prediction: str = "epsilon",
    learned_variance: bool = False,
    variance: str = "fixed_small",
    cond: dict | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> BitsPerDim:
    """The full variational bound of a model on data x₀ ∈ [−1, 1], one model call per timestep.

    Improved DDPM evaluates NLL this way (all T terms, fresh noise per term). A model with
    learned variance uses it; otherwise ``variance`` picks β̃ or β.
    """
    if not schedule.is_discrete or not schedule.variance_preserving:
        raise ValueError("bits/dim is defined here for discrete variance-preserving schedules")
    process.check_prediction_type(prediction)
    n, steps = x0.shape[0], schedule.num_steps
    terms = torch.zeros(n, steps, dtype=torch.float64)
    order = range(steps - 1, -1, -1)
    if progress:
        from tqdm.auto import tqdm

        order = tqdm(order, desc="bits/dim", unit="t", leave=False)
    for step in order:
        t = torch.full((n,), float(step), dtype=torch.float64)
        device = generator.device if generator is not None else x0.device
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=device).to(x0.device)
        x_t = process.q_sample(schedule, x0, t, noise)
        output = model(x_t, t.to(device=x0.device, dtype=x0.dtype), **(cond or {}))
        frac = None
        if learned_variance:
            output, v = output.chunk(2, dim=1)
            frac = (v + 1) / 2
        terms[:, step] = vlb_terms(schedule, prediction, output, x0, x_t, t, frac, variance).double().cpu()
    prior = prior_bits(schedule, x0).double().cpu()
    return BitsPerDim(total=prior + terms.sum(1), prior=prior, terms=terms)
