"""The forward process and the parametrizations, written once.

Notation (Ho et al. 2020; Kingma et al. 2021): in the network's space xₜ = s·x₀ + d·ε with
(s, d) = ``schedule.scale_std(t)`` — (√ᾱₜ, √(1 − ᾱₜ)) for variance-preserving schedules,
(1, σₜ) for variance-exploding ones. A network predicts one of

* ``"epsilon"``: ε̂ (DDPM);
* ``"x0"``: x̂₀ directly;
* ``"v"``: v̂ = s·ε − d·x₀ (Salimans & Ho 2022, "Progressive distillation", §4).

Everything here is elementwise arithmetic on tensors; ``s`` and ``d`` broadcast against x. This is
the one module that branches on the prediction type: the :class:`~difflab.denoiser.Denoiser`
declares it and calls :func:`to_x0`, classifier guidance calls :func:`shift_epsilon`, the losses
call :func:`training_target`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

PREDICTION_TYPES = ("epsilon", "x0", "v")


def check_prediction_type(prediction: str) -> str:
    if prediction not in PREDICTION_TYPES:
        raise ValueError(
            f"unknown prediction type {prediction!r}; choose one of: {', '.join(PREDICTION_TYPES)}"
        )
    return prediction


def broadcast_to(coef, x: Tensor) -> Tensor:
    """A per-sample coefficient (scalar or shape (N,)) shaped to broadcast against x (N, ...)."""
    coef = torch.as_tensor(coef, device=x.device)
    coef = coef.to(x.dtype) if coef.is_floating_point() else coef
    return coef.reshape(coef.shape + (1,) * (x.ndim - coef.ndim))


# ---------------------------------------------------------------------------------------------
# q(xₜ | x₀)
# ---------------------------------------------------------------------------------------------
def q_sample(schedule, x0: Tensor, t, noise: Tensor) -> Tensor:
    """Draw xₜ ~ q(xₜ | x₀) = N(s·x₀, d²I) with the given ε (DDPM eq. 4)."""
    scale, std = schedule.scale_std(t)
    return broadcast_to(scale, x0) * x0 + broadcast_to(std, x0) * noise


# ---------------------------------------------------------------------------------------------
# Parametrizations
# ---------------------------------------------------------------------------------------------
def to_x0(prediction: str, output: Tensor, x_t: Tensor, scale, std) -> Tensor:
    """x̂₀ from a network output of the given type: x₀ = (xₜ − d·ε)/s; x₀ = s·xₜ − d·v (VP)."""
    scale, std = broadcast_to(scale, x_t), broadcast_to(std, x_t)
    if prediction == "epsilon":
        return (x_t - std * output) / scale
    if prediction == "x0":
        return output
    if prediction == "v":
        # With s² + d² = 1: s·xₜ − d·v = s²x₀ + sdε − sdε + d²x₀ = x₀.
        return (scale * x_t - std * output) / (scale**2 + std**2)
    raise ValueError(check_prediction_type(prediction))


def split_variance(output: Tensor, learned_variance: bool) -> tuple[Tensor, Tensor | None]:
    """(prediction, raw variance output v) of a network output; v is None without learned variance.

    A learned-variance network (improved DDPM, Nichol & Dhariwal 2021, §3.1) returns 2×C channels:
    the prediction, then v ∈ [−1, 1] (see :func:`variance_fraction`)."""
    return output.chunk(2, dim=1) if learned_variance else (output, None)


def variance_fraction(v: Tensor) -> Tensor:
    """f = (v + 1)/2 of improved DDPM's eq. 15: log Σ = f·log β + (1 − f)·log β̃."""
    return (v + 1) / 2


def shift_epsilon(prediction: str, output: Tensor, x_t: Tensor, scale, std, delta: Tensor) -> Tensor:
    """The output of the same type whose implied noise is ε̂ + ``delta`` at the same xₜ.

    Classifier guidance moves ε̂ (ADM Algorithm 2: ε̂ − √(1 − ᾱₜ)·∇ log p(y | xₜ)); a network
    predicting x₀ or v gets the output that implies the moved ε̂."""
    if prediction == "epsilon":
        return output + delta
    eps = to_epsilon(x_t, to_x0(prediction, output, x_t, scale, std), scale, std) + delta
    x0 = (x_t - broadcast_to(std, x_t) * eps) / broadcast_to(scale, x_t)
    return training_target(prediction, x0, eps, scale, std).to(output.dtype)


def to_epsilon(x_t: Tensor, x0: Tensor, scale, std) -> Tensor:
    """ε̂ = (xₜ − s·x̂₀)/d: the noise implied by a data estimate."""
    return (x_t - broadcast_to(scale, x_t) * x0) / broadcast_to(std, x_t)


def training_target(prediction: str, x0: Tensor, noise: Tensor, scale, std) -> Tensor:
    """What a network of the given type should output for (x₀, ε)."""
    if prediction == "epsilon":
        return noise
    if prediction == "x0":
        return x0
    if prediction == "v":
        return broadcast_to(scale, x0) * noise - broadcast_to(std, x0) * x0
    raise ValueError(check_prediction_type(prediction))


# ---------------------------------------------------------------------------------------------
# The posterior q(x_{t-1} | xₜ, x₀)
# ---------------------------------------------------------------------------------------------
@dataclass
class Posterior:
    """q(x_prev | xₜ, x₀) = N(coef_x0·x₀ + coef_xt·xₜ, variance) for a step t → t_prev.

    DDPM eqs. 6–7 with the step's own β = 1 − ᾱₜ/ᾱ_prev (so skipped steps work, as in improved
    DDPM's respacing): coef_x0 = √ᾱ_prev·β/(1 − ᾱₜ), coef_xt = √(1 − β)(1 − ᾱ_prev)/(1 − ᾱₜ),
    β̃ = β(1 − ᾱ_prev)/(1 − ᾱₜ). ``log_variance_clipped`` replaces the zero β̃ of the last step
    (t_prev = −1, ᾱ_prev = 1) with ``variance_floor`` (improved DDPM uses β̃ of step 1).
    """

    coef_x0: Tensor
    coef_xt: Tensor
    variance: Tensor
    log_variance_clipped: Tensor
    beta: Tensor

    def mean(self, x0: Tensor, x_t: Tensor) -> Tensor:
        return broadcast_to(self.coef_x0, x_t) * x0 + broadcast_to(self.coef_xt, x_t) * x_t


def alpha_bar_at(schedule, t) -> Tensor:
    """ᾱₜ with t = −1 meaning "before the first step" (ᾱ = 1), as DDPM's last step needs."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return torch.where(t < 0, torch.ones_like(t), schedule.alpha_bar(t.clamp(min=0)))


def posterior(schedule, t, t_prev) -> Posterior:
    """The Gaussian posterior of a variance-preserving schedule for the step t → t_prev."""
    if not schedule.variance_preserving:
        raise ValueError("the DDPM posterior is defined for variance-preserving schedules only")
    ab_t, ab_prev = alpha_bar_at(schedule, t), alpha_bar_at(schedule, t_prev)
    beta = 1 - ab_t / ab_prev
    variance = posterior_variance(ab_t, ab_prev)
    floor = _variance_floor(schedule)
    return Posterior(
        coef_x0=ab_prev.sqrt() * beta / (1 - ab_t),
        coef_xt=(1 - beta).sqrt() * (1 - ab_prev) / (1 - ab_t),
        variance=variance,
        log_variance_clipped=torch.log(torch.where(variance > 0, variance, torch.full_like(variance, floor))),
        beta=beta,
    )


def _variance_floor(schedule) -> float:
    """β̃ of the step 1 → 0: improved DDPM's stand-in for the zero β̃ of the last step.

    Continuous schedules have no step 1; there the floor is 1e-20 (diffusers' clamp).
    """
    if not schedule.is_discrete:
        return 1e-20
    return float(posterior_variance(schedule.alpha_bar(1.0), schedule.alpha_bar(0.0)))


def posterior_variance(ab_t: Tensor, ab_prev: Tensor) -> Tensor:
    """β̃ = (1 − ᾱ_prev)/(1 − ᾱₜ)·(1 − ᾱₜ/ᾱ_prev) (DDPM eq. 7)."""
    return (1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)


# ---------------------------------------------------------------------------------------------
# Keeping x̂₀ in range
# ---------------------------------------------------------------------------------------------
def clip_x0(x0: Tensor, limit: float = 1.0) -> Tensor:
    """Clamp x̂₀ to [−limit, limit] (DDPM's ``clip_denoised``)."""
    return x0.clamp(-limit, limit)


def dynamic_threshold(x0: Tensor, percentile: float = 0.995, max_value: float | None = None) -> Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022, §2.3).

    Per sample, s = the ``percentile`` quantile of |x̂₀|, at least 1 (and at most ``max_value``
    if given; diffusers' ``sample_max_value``, whose default 1 makes this plain clipping); then
    x̂₀ ← clamp(x̂₀, −s, s)/s. Pixels pushed past ±1 are pulled in instead of saturating.
    """
    flat = x0.reshape(x0.shape[0], -1).abs().float()
    s = torch.quantile(flat, percentile, dim=1).clamp(min=1.0, max=max_value).to(x0.dtype)
    s = broadcast_to(s, x0)
    return torch.maximum(torch.minimum(x0, s), -s) / s
