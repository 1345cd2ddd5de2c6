"""Step spacings: which noise levels a sampler visits. Each returns a descending float64 tensor
of ``steps`` sigmas (the points where the model is called); :func:`get_sigmas` appends the end.

Solvers take any spacing, and img2img-style partial sampling is a slice of the result.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .generic_levels import generic_levels


def _check_steps(steps) -> int:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return steps


def _span(schedule) -> float:
    """Length of the time axis: T for a discrete schedule (steps 0..T−1), t_max − t_min otherwise."""
    return float(schedule.num_steps) if schedule.is_discrete else schedule.t_max - schedule.t_min


def leading(schedule, steps: int, offset: int = 0) -> Tensor:
    """DDIM's original spacing: t = i·⌊T/n⌋ + offset, i = n−1…0 (Song et al. 2021; diffusers'
    ``"leading"``). Starts below t_max, so the first step is not pure noise (Lin et al. 2023)."""
    steps = _check_steps(steps)
    i = torch.arange(steps - 1, -1, -1, dtype=torch.float64)
    if schedule.is_discrete:
        t = i * (schedule.num_steps // steps) + offset
    else:
        t = schedule.t_min + i * _span(schedule) / steps
    return schedule.sigma(t)


def trailing(schedule, steps: int) -> Tensor:
    """t = t_max − i·T/n, i = 0…n−1 (rounded for discrete schedules; Lin et al. 2023, Table 2):
    starts exactly at t_max."""
    steps = _check_steps(steps)
    i = torch.arange(steps, dtype=torch.float64)
    if schedule.is_discrete:
        t = torch.round(schedule.num_steps - i * schedule.num_steps / steps) - 1
    else:
        t = schedule.t_max - i * _span(schedule) / steps
    return schedule.sigma(t)


def linspace(schedule, steps: int) -> Tensor:
    """t evenly spaced from t_max down to t_min, both included (fractional t allowed)."""
    steps = _check_steps(steps)
    return schedule.sigma(torch.linspace(schedule.t_max, schedule.t_min, steps, dtype=torch.float64))


def log_snr(schedule, steps: int, sigma_min: float | None = None, sigma_max: float | None = None) -> Tensor:
    """Uniform in log-SNR λ = −2 log σ between σ_max and σ_min (the DPM-Solver paper's
    "logSNR" spacing, Lu et al. 2022, §3.3)."""
    steps = _check_steps(steps)
    lo, hi = _range(schedule, sigma_min, sigma_max)
    return torch.exp(torch.linspace(math.log(hi), math.log(lo), steps, dtype=torch.float64))


def karras(
    schedule, steps: int, rho: float = 7.0, sigma_min: float | None = None, sigma_max: float | None = None
) -> Tensor:
    """σᵢ = (σ_max^{1/ρ} + i/(n−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ (Karras et al. 2022, eq. 5)."""
    steps = _check_steps(steps)
    lo, hi = _range(schedule, sigma_min, sigma_max)
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    return (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho


def _range(schedule, sigma_min, sigma_max) -> tuple[float, float]:
    lo = schedule.sigma_min if sigma_min is None else sigma_min
    hi = schedule.sigma_max if sigma_max is None else sigma_max
    if not 0 < lo < hi:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={lo}, sigma_max={hi}")
    return lo, hi


SPACINGS = {"leading": leading, "trailing": trailing, "linspace": linspace, "log_snr": log_snr, "karras": karras}


# default_spacing's thresholds, measured with benchmarks/sampler_accuracy.py --defaults (docs/benchmarks.md).
WIDE_SIGMA_MAX = 1000.0  # above: log-SNR-uniform levels waste steps far above the data's scale
STEPS_PER_NEPER = 1.2  # log-SNR spacing from this many steps per unit of ln(σ_max/σ_min)
NARROW_SPAN = 8.0  # ln(σ_max/σ_min) below: a narrow schedule (Stable Diffusion's scaled-linear: 6.2)
KARRAS_STEPS_PER_NEPER = 2.0  # … where Karras spacing takes over from this many steps per unit


def default_spacing(schedule, steps: int) -> str:
    """The spacing :func:`~difflab.sampling.sample` uses when none is given: ``"generic"`` where
    :mod:`~difflab.sampling.generic_levels` has levels for the schedule and the number of steps
    (the built-in linear, scaled-linear and cosine schedules at 10 and 20 steps), else
    :func:`rule_spacing`'s (docs/sampling.md)."""
    return "generic" if generic_levels(schedule, _check_steps(steps)) is not None else rule_spacing(schedule, steps)


def rule_spacing(schedule, steps: int) -> str:
    """A named spacing from the schedule's range of noise levels and the number of steps (a
    measured rule; docs/sampling.md).

    With the span s = ln(σ_max/σ_min) (half the schedule's log-SNR range, λ = −2 ln σ):

    * ``"trailing"`` if σ_max > 1000 (a tiny terminal SNR, e.g. the cosine schedule's σ_max ≈ 20,000:
      uniform-λ levels spend half their steps above σ = 10) or steps < 1.2·s (too few steps for
      uniform λ: each would cross more than e^0.8 ≈ 2.2× in σ);
    * ``"karras"`` (ρ = 7, Karras et al. 2022, eq. 5) if s < 8 (a narrow schedule, e.g. scaled-linear,
      σ 0.03–14.6) and steps ≥ 2·s;
    * ``"log_snr"`` (uniform in λ, Lu et al. 2022) otherwise.

    So 20 steps are trailing on cosine, log-SNR on DDPM's linear schedule (s = 9.7: from 12 steps)
    and Karras on scaled-linear (s = 6.2: log-SNR from 8 steps, Karras from 13). Measured with
    UniPC-3 (the default sampler) on Gaussian mixtures in 8, 32 and 64 dimensions with exact
    denoisers (``benchmarks/sampler_accuracy.py --defaults``): no spacing, nor any fixed sampler
    and spacing, is within 1.1× of the best on every mixture at 10–20 calls of the linear schedule;
    this rule takes the one with the smallest worst case (docs/benchmarks.md, "Default spacing"),
    and :mod:`~difflab.sampling.generic_levels` beats it where it has levels.
    """
    steps = _check_steps(steps)
    sigma_max, sigma_min = float(schedule.sigma_max), float(schedule.sigma_min)
    if not sigma_max <= WIDE_SIGMA_MAX:  # also inf / nan (a zero terminal SNR)
        return "trailing"
    span = math.log(sigma_max / sigma_min)
    if steps < STEPS_PER_NEPER * span:
        return "trailing"
    if span < NARROW_SPAN and steps >= KARRAS_STEPS_PER_NEPER * span:
        return "karras"
    return "log_snr"


def generic(schedule, steps: int) -> Tensor:
    """The generic tuned levels of :mod:`~difflab.sampling.generic_levels` where it has them for
    this schedule and number of steps, else the levels of :func:`rule_spacing`'s spacing."""
    levels = generic_levels(schedule, _check_steps(steps))
    return levels if levels is not None else SPACINGS[rule_spacing(schedule, steps)](schedule, steps)


SPACINGS["generic"] = generic


def get_sigmas(schedule, steps: int, spacing="log_snr", final_denoise: bool = True) -> Tensor:
    """The full sigma sequence a sampler walks: the spacing's ``steps`` levels, then 0 (a final
    denoise: the result is the last x̂₀) or, with ``final_denoise=False``, σ_min of the schedule
    (the result keeps that little noise; skipped if the spacing already ends there)."""
    if callable(spacing):
        sigmas = torch.as_tensor(spacing(schedule, steps), dtype=torch.float64)
    elif spacing in SPACINGS:
        sigmas = SPACINGS[spacing](schedule, steps)
    else:
        raise ValueError(f"unknown step spacing {spacing!r}; choose one of: {', '.join(SPACINGS)}")
    if final_denoise:
        end = 0.0
    else:
        end = schedule.sigma_min
        if float(sigmas[-1]) <= end * (1 + 1e-9):
            return sigmas
    return torch.cat([sigmas, sigmas.new_tensor([end])])


def strength_tail(sigmas: Tensor, strength: float) -> Tensor:
    """The tail of a sampler's ``sigmas`` (N steps, then the end level) that img2img / SDEdit runs
    at ``strength`` in (0, 1] (Meng et al. 2022): the last ⌊N·strength⌋ steps, diffusers'
    convention (``StableDiffusionImg2ImgPipeline.get_timesteps``). Strength 1 is the whole walk."""
    steps = len(sigmas) - 1
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    kept = min(int(steps * strength), steps)
    if kept == 0:
        raise ValueError(f"strength {strength} of {steps} steps runs no step (int({steps} x {strength}) = 0): "
                         f"raise the strength to at least {1 / steps:.3g} or the steps")
    return sigmas[steps - kept :]


def fixed_strength_walk(schedule, steps: int, spacing, strength: float, final_denoise: bool = True) -> Tensor:
    """img2img's "fixed steps" convention (A1111's "do exactly the amount of steps", ComfyUI's
    denoise): exactly ``steps`` solver steps, the tail of a walk of ⌊steps/strength⌋ steps, so
    they start near the level a full walk reaches at ``strength`` and run to the end."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    total = max(steps, int(steps / strength + 1e-9))  # 1e-9: 3 / 0.3 is 10.000000000000002, 7 / 0.7 is 10
    return get_sigmas(schedule, total, spacing, final_denoise)[-(steps + 1):]
