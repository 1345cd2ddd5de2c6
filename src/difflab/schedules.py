"""Noise schedules: the one place that maps a time ``t`` to noise levels.

Every schedule is defined by its log signal-to-noise ratio λ(t) = log(ᾱₜ / (1 − ᾱₜ)) and its
inverse; everything else derives from λ:

* ``alpha_bar(t)`` = ᾱₜ = sigmoid(λ) — the DDPM cumulative product (Ho et al. 2020, eq. 4);
* ``alpha(t)`` = √ᾱₜ;
* ``sigma(t)`` = √((1 − ᾱₜ)/ᾱₜ) = exp(−λ/2) — the noise level of the denoiser's space, where
  x = x₀ + σ·ε (Karras et al. 2022, "EDM"; k-diffusion). Samplers work in this space.
* ``scale_std(t)`` = (s, d) with xₜ = s·x₀ + d·ε in the space the *network* sees:
  (√ᾱ, √(1 − ᾱ)) for variance-preserving schedules, (1, σ) for variance-exploding ones.
  In both cases σ = d / s, so the network's input is ``s * x``.

Discrete schedules (DDPM's T steps) take integer or fractional t in [0, T − 1]: between the
integers log σ is interpolated linearly, as k-diffusion and diffusers' ``_sigma_to_t`` do, so
samplers may use any noise level in range. Continuous schedules take t in [t_min, t_max].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

# A zero ᾱ (zero terminal SNR) is replaced by this value, or by half the smallest positive ᾱ if
# that is lower, when taking logs: σ stays finite and increasing in t (diffusers' Euler
# scheduler uses the same 2**-24).
ALPHA_BAR_FLOOR = 2.0**-24


def _as_tensor(x) -> Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear interpolation of (xp, fp) at x, xp increasing; x is clamped to its range."""
    x = x.to(torch.float64).clamp(xp[0], xp[-1])
    i = torch.searchsorted(xp, x).clamp(1, len(xp) - 1)
    x0, x1 = xp[i - 1], xp[i]
    w = (x - x0) / (x1 - x0)
    return fp[i - 1] + w * (fp[i] - fp[i - 1])


class NoiseSchedule:
    """A map between time t and log-SNR λ; subclasses define ``log_snr`` and its inverse."""

    name: str = "schedule"
    variance_preserving: bool = True
    t_min: float = 0.0
    t_max: float = 1.0

    # -- defined by each schedule ------------------------------------------------------------
    def log_snr(self, t) -> Tensor:
        raise NotImplementedError

    def t_from_log_snr(self, log_snr) -> Tensor:
        raise NotImplementedError

    def to_config(self) -> dict:
        raise NotImplementedError

    # -- derived ---------------------------------------------------------------------------
    def alpha_bar(self, t) -> Tensor:
        return torch.sigmoid(self.log_snr(t))

    def alpha(self, t) -> Tensor:
        return self.alpha_bar(t).sqrt()

    def sigma(self, t) -> Tensor:
        return torch.exp(-0.5 * self.log_snr(t))

    def t_from_sigma(self, sigma) -> Tensor:
        return self.t_from_log_snr(-2.0 * torch.log(_as_tensor(sigma)))

    def scale_std(self, t) -> tuple[Tensor, Tensor]:
        """(s, d) with xₜ = s·x₀ + d·ε in the network's input space."""
        return self.scale_std_at_sigma(self.sigma(t))

    def scale_std_at_sigma(self, sigma) -> tuple[Tensor, Tensor]:
        sigma = _as_tensor(sigma)
        if self.variance_preserving:
            scale = torch.rsqrt(1.0 + sigma**2)
            return scale, sigma * scale
        return torch.ones_like(sigma), sigma

    def prior_std(self, sigma) -> Tensor:
        """Standard deviation of pure noise at level σ in the denoiser's space (x = x₀ + σε).

        A variance-preserving model starts from xₜ ~ N(0, I) in its own space, that is
        x = xₜ / s with std √(1 + σ²); a variance-exploding one from N(0, σ²I).
        """
        sigma = _as_tensor(sigma)
        return torch.sqrt(1.0 + sigma**2) if self.variance_preserving else sigma

    @property
    def sigma_min(self) -> float:
        return float(self.sigma(self.t_min))

    @property
    def sigma_max(self) -> float:
        return float(self.sigma(self.t_max))

    @property
    def is_discrete(self) -> bool:
        return False

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.to_config().items() if k != "name")
        return f"{self.name}({args})"


# ---------------------------------------------------------------------------------------------
# Discrete schedules (DDPM and its descendants)
# ---------------------------------------------------------------------------------------------
@dataclass(repr=False)
class DiscreteSchedule(NoiseSchedule):
    """T discrete steps given by their betas; t ∈ [0, T − 1], fractional t interpolates log σ.

    ᾱₜ = ∏ₛ≤ₜ (1 − βₛ) (Ho et al. 2020, eq. 4).
    """

    betas: Tensor
    name: str = "discrete"
    params: dict = field(default_factory=dict)

    def __post_init__(self):
        betas = _as_tensor(self.betas)
        if betas.ndim != 1 or len(betas) < 2:
            raise ValueError("a discrete schedule needs at least 2 betas in a 1-D tensor")
        if not ((betas >= 0).all() and (betas <= 1).all()):
            raise ValueError("betas must lie in [0, 1]")
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        ab = self.alphas_cumprod
        if (ab <= 0).any():
            floor = min(ALPHA_BAR_FLOOR, 0.5 * float(ab[ab > 0].min()))
            ab = ab.clamp(min=floor)
        if not (ab[1:] < ab[:-1]).all():
            raise ValueError("betas must be positive so that alpha_bar strictly decreases")
        # log σ rises with t; kept for interpolation in both directions.
        self.log_sigmas = 0.5 * (torch.log1p(-ab) - torch.log(ab))
        self.t_min, self.t_max = 0.0, float(len(betas) - 1)

    @property
    def num_steps(self) -> int:
        return len(self.betas)

    @property
    def is_discrete(self) -> bool:
        return True

    def log_snr(self, t) -> Tensor:
        t = _as_tensor(t)
        return -2.0 * _interp(t, torch.arange(self.num_steps, dtype=torch.float64), self.log_sigmas)

    def t_from_log_snr(self, log_snr) -> Tensor:
        log_sigma = -0.5 * _as_tensor(log_snr)
        return _interp(log_sigma, self.log_sigmas, torch.arange(self.num_steps, dtype=torch.float64))

    def to_config(self) -> dict:
        if not self.params:  # built from raw betas: store them
            return {"name": self.name, "betas": self.betas.tolist()}
        return {"name": self.name, **self.params}


def linear(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> DiscreteSchedule:
    """DDPM's linear betas (Ho et al. 2020, §4): βₜ from 1e-4 to 0.02 over T = 1000 steps."""
    betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
    return DiscreteSchedule(betas, "linear", dict(num_steps=num_steps, beta_start=beta_start, beta_end=beta_end))


def scaled_linear(num_steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> DiscreteSchedule:
    """Stable Diffusion's schedule (LDM): √β linear from √β_start to √β_end."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float64) ** 2
    return DiscreteSchedule(
        betas, "scaled_linear", dict(num_steps=num_steps, beta_start=beta_start, beta_end=beta_end)
    )


def cosine(num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> DiscreteSchedule:
    """Improved DDPM's cosine schedule (Nichol & Dhariwal 2021, eq. 17).

    ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2); βₜ = 1 − ᾱ(t+1)/ᾱ(t), clipped to
    ``max_beta`` (0.999) to avoid the singularity at t = T.
    """
    def f(u):
        return torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    u = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    betas = (1 - f(u[1:]) / f(u[:-1])).clamp(max=max_beta)
    return DiscreteSchedule(betas, "cosine", dict(num_steps=num_steps, s=s, max_beta=max_beta))


def sigmoid(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> DiscreteSchedule:
    """Sigmoid betas (GeoDiff, Xu et al. 2022; diffusers' ``"sigmoid"``): β = β₀ + (β₁ − β₀)·sigmoid(u),
    u evenly spaced in [−6, 6]."""
    u = torch.linspace(-6, 6, num_steps, dtype=torch.float64)
    betas = torch.sigmoid(u) * (beta_end - beta_start) + beta_start
    return DiscreteSchedule(betas, "sigmoid", dict(num_steps=num_steps, beta_start=beta_start, beta_end=beta_end))


def rescale_zero_terminal_snr(schedule: DiscreteSchedule) -> DiscreteSchedule:
    """Shift and scale √ᾱ so that the last step has SNR exactly 0 (Lin et al. 2023, Algorithm 1).

    √ᾱ ← (√ᾱ − √ᾱ_T) · √ᾱ_0 / (√ᾱ_0 − √ᾱ_T): the first step keeps its value, the last becomes 0.
    At the last step σ is infinite; it is evaluated with ᾱ floored at 2⁻²⁴ (see ``ALPHA_BAR_FLOOR``).
    Use v- or x₀-prediction with it: ε-prediction cannot recover x₀ from pure noise.
    """
    a = schedule.alphas_cumprod.sqrt()
    a0, aT = a[0].clone(), a[-1].clone()
    a = (a - aT) * a0 / (a0 - aT)
    alpha_bar = a**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    params = {**schedule.params, "zero_terminal_snr": True, "base": schedule.name} if schedule.params else {}
    rescaled = DiscreteSchedule(1 - alphas, schedule.name, params)
    return rescaled


# ---------------------------------------------------------------------------------------------
# Continuous-time schedules
# ---------------------------------------------------------------------------------------------
@dataclass(repr=False)
class VPSchedule(NoiseSchedule):
    """Continuous variance-preserving SDE with linear β(t) (Song et al. 2021, "Score SDE", eq. 33).

    log ᾱ(t) = −¼ t²(β_max − β_min) − ½ t β_min, t ∈ [t_min, 1].
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = 1e-3
    t_max: float = 1.0
    name: str = "vp"

    def log_snr(self, t) -> Tensor:
        t = _as_tensor(t)
        neg_log_ab = 0.25 * t**2 * (self.beta_max - self.beta_min) + 0.5 * t * self.beta_min
        return -torch.log(torch.expm1(neg_log_ab))  # log(ᾱ/(1−ᾱ)) = −log(1/ᾱ − 1)

    def t_from_log_snr(self, log_snr) -> Tensor:
        c = torch.nn.functional.softplus(-_as_tensor(log_snr))  # −log ᾱ
        a, b = 0.25 * (self.beta_max - self.beta_min), 0.5 * self.beta_min
        if a == 0:
            return c / b
        return (-b + torch.sqrt(b**2 + 4 * a * c)) / (2 * a)

    def to_config(self) -> dict:
        return dict(name=self.name, beta_min=self.beta_min, beta_max=self.beta_max, t_min=self.t_min, t_max=self.t_max)


@dataclass(repr=False)
class CosineSchedule(NoiseSchedule):
    """Continuous cosine schedule: ᾱ(t) = cos²((t + s)/(1 + s)·π/2) / cos²(s/(1 + s)·π/2).

    The continuous form of improved DDPM's schedule; t_max < 1 keeps σ finite.
    """

    s: float = 0.008
    t_min: float = 1e-4
    t_max: float = 0.999
    name: str = "cosine_continuous"

    def _angle(self, t):
        return (t + self.s) / (1 + self.s) * math.pi / 2

    def log_snr(self, t) -> Tensor:
        # 1 − ᾱ = sin(a − a₀)·sin(a + a₀)/cos²a₀, so λ = log cos²a − log(sin(a − a₀)·sin(a + a₀)),
        # which stays accurate as t → 0.
        a, a0 = self._angle(_as_tensor(t)), self._angle(0.0)
        return 2 * torch.log(torch.cos(a)) - torch.log(torch.sin(a - a0) * torch.sin(a + a0))

    def t_from_log_snr(self, log_snr) -> Tensor:
        ab = torch.sigmoid(_as_tensor(log_snr))
        angle = torch.arccos((ab.sqrt() * math.cos(self._angle(0.0))).clamp(-1, 1))
        return angle * 2 / math.pi * (1 + self.s) - self.s

    def to_config(self) -> dict:
        return dict(name=self.name, s=self.s, t_min=self.t_min, t_max=self.t_max)


@dataclass(repr=False)
class VESchedule(NoiseSchedule):
    """Variance-exploding SDE (Song et al. 2021, eq. 30): σ(t) = σ_min (σ_max/σ_min)^t, x = x₀ + σε."""

    sigma_lo: float = 0.01
    sigma_hi: float = 50.0
    t_min: float = 0.0
    t_max: float = 1.0
    name: str = "ve"
    variance_preserving: bool = False

    def log_snr(self, t) -> Tensor:
        t = _as_tensor(t)
        log_sigma = math.log(self.sigma_lo) + t * math.log(self.sigma_hi / self.sigma_lo)
        return -2.0 * log_sigma

    def t_from_log_snr(self, log_snr) -> Tensor:
        log_sigma = -0.5 * _as_tensor(log_snr)
        return (log_sigma - math.log(self.sigma_lo)) / math.log(self.sigma_hi / self.sigma_lo)

    def to_config(self) -> dict:
        return dict(name=self.name, sigma_lo=self.sigma_lo, sigma_hi=self.sigma_hi)


@dataclass(repr=False)
class EDMSchedule(NoiseSchedule):
    """EDM (Karras et al. 2022): time is the noise level itself, t = σ ∈ [σ_min, σ_max]; x = x₀ + σε.

    ``sigma_data`` (0.5) is stored for the EDM preconditioning and loss weighting.
    """

    sigma_lo: float = 0.002
    sigma_hi: float = 80.0
    sigma_data: float = 0.5
    name: str = "edm"
    variance_preserving: bool = False

    def __post_init__(self):
        self.t_min, self.t_max = self.sigma_lo, self.sigma_hi

    def log_snr(self, t) -> Tensor:
        return -2.0 * torch.log(_as_tensor(t))

    def t_from_log_snr(self, log_snr) -> Tensor:
        return torch.exp(-0.5 * _as_tensor(log_snr))

    def to_config(self) -> dict:
        return dict(name=self.name, sigma_lo=self.sigma_lo, sigma_hi=self.sigma_hi, sigma_data=self.sigma_data)


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------
SCHEDULES = {
    "linear": linear,
    "scaled_linear": scaled_linear,
    "cosine": cosine,
    "sigmoid": sigmoid,
    "vp": VPSchedule,
    "cosine_continuous": CosineSchedule,
    "ve": VESchedule,
    "edm": EDMSchedule,
}


def get_schedule(name: str, **kwargs) -> NoiseSchedule:
    """Build a schedule by name, e.g. ``get_schedule("cosine", num_steps=1000)``.

    ``zero_terminal_snr=True`` applies :func:`rescale_zero_terminal_snr` to a discrete schedule.
    """
    zero_snr = kwargs.pop("zero_terminal_snr", False)
    kwargs.pop("base", None)
    if name == "discrete" and "betas" in kwargs:
        schedule = DiscreteSchedule(torch.tensor(kwargs["betas"], dtype=torch.float64))
    elif name not in SCHEDULES:
        raise ValueError(f"unknown noise schedule {name!r}; choose one of: {', '.join(SCHEDULES)}")
    else:
        try:
            schedule = SCHEDULES[name](**kwargs)
        except TypeError as err:
            raise ValueError(f"bad arguments for schedule {name!r}: {err}") from None
    if zero_snr:
        if not isinstance(schedule, DiscreteSchedule):
            raise ValueError("zero_terminal_snr applies to discrete schedules only")
        schedule = rescale_zero_terminal_snr(schedule)
    return schedule


def schedule_from_config(config: dict) -> NoiseSchedule:
    """Inverse of ``schedule.to_config()`` (used by checkpoints)."""
    config = dict(config)
    return get_schedule(config.pop("name"), **config)
