"""One entry point for every sampler: :func:`sample`, and :func:`invert` for DDIM inversion."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..denoiser import BoundDenoiser, Denoiser
from .common import NoiseSource, Step
from .consistency import consistency
from .ddim import ddim, ddim_invert
from .ddpm import ddpm
from .dpm_solver import dpmpp_multistep
from .euler import edm_ode
from .spacing import default_spacing, get_sigmas
from .unipc import unipc


@dataclass(frozen=True)
class SamplerSpec:
    fn: Callable
    defaults: dict = field(default_factory=dict)
    calls_per_step: int = 1  # model calls per step (Heun: 2, but 1 on the step to σ = 0)
    about: str = ""
    stochastic: bool = False  # draws fresh noise per step: does not solve the probability-flow ODE


SAMPLERS: dict[str, SamplerSpec] = {
    "ddpm": SamplerSpec(ddpm, {}, about="DDPM ancestral (variance=fixed_small|fixed_large|learned)", stochastic=True),
    "ddim": SamplerSpec(ddim, {}, about="DDIM (eta=0 deterministic)"),
    "euler": SamplerSpec(edm_ode, {"order": 1}, about="Euler on the probability-flow ODE (EDM churn optional)"),
    "euler_ancestral": SamplerSpec(ddim, {"eta": 1.0}, about="Euler ancestral (= DDIM with eta=1)", stochastic=True),
    "heun": SamplerSpec(edm_ode, {"order": 2}, calls_per_step=2, about="Heun, EDM's second-order sampler"),
    "dpmpp_2m": SamplerSpec(dpmpp_multistep, {"order": 2}, about="DPM-Solver++ 2M"),
    "dpmpp_3m": SamplerSpec(dpmpp_multistep, {"order": 3}, about="DPM-Solver++ 3M"),
    "dpmpp_2m_sde": SamplerSpec(dpmpp_multistep, {"order": 2, "sde": True}, about="SDE-DPM-Solver++ 2M",
                                stochastic=True),
    "dpmpp_3m_sde": SamplerSpec(dpmpp_multistep, {"order": 3, "sde": True}, about="SDE-DPM-Solver++ 3M",
                                stochastic=True),
    "unipc": SamplerSpec(unipc, {"order": 2}, about="UniPC (bh2, order 2, with corrector)"),
    "unipc_3": SamplerSpec(unipc, {"order": 3}, about="UniPC (bh2, order 3, with corrector)"),
    "consistency": SamplerSpec(consistency, {}, about="multistep consistency sampling (a consistency-distilled run)",
                               stochastic=True),
}

# The samplers whose result is a function of the starting noise alone (ODE solvers, DDIM η = 0).
DETERMINISTIC = [name for name, spec in SAMPLERS.items() if not spec.stochastic]

# The defaults: the sampler of benchmarks/sampler_accuracy.py that is never far from the best
# across the linear, scaled-linear and cosine schedules (see docs/benchmarks.md). The spacing is
# chosen per schedule and step count by spacing.default_spacing(); DEFAULT_SPACING is what a
# training config's ``sample`` section writes (and what runs made before the rule recorded).
DEFAULT_METHOD = "unipc_3"
DEFAULT_SPACING = "trailing"
DEFAULT_STEPS = 20


def get_sampler(method: str) -> SamplerSpec:
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampler {method!r}; choose one of: {', '.join(SAMPLERS)}")
    return SAMPLERS[method]


def model_calls(method: str, steps: int, final_denoise: bool = True) -> int:
    """How many times ``method`` calls the model for ``steps`` steps."""
    spec = get_sampler(method)
    return steps * spec.calls_per_step - (spec.calls_per_step - 1) * int(final_denoise)


class _FiniteCheck:
    """Wraps a bound denoiser and records, without waiting on the device, whether any output was
    NaN or inf; :meth:`check` raises one clear error naming the first bad noise level."""

    def __init__(self, denoise: BoundDenoiser):
        self.denoise = denoise
        self.schedule = denoise.schedule
        self.flags: list[tuple[float, Tensor]] = []

    def _record(self, sigma, x0: Tensor) -> Tensor:
        self.flags.append((float(torch.as_tensor(sigma).max()), torch.isfinite(x0).all()))
        return x0

    def __call__(self, x: Tensor, sigma) -> Tensor:
        return self._record(sigma, self.denoise(x, sigma))

    def predict(self, x: Tensor, sigma):
        out = self.denoise.predict(x, sigma)
        self._record(sigma, out.x0)
        return out

    def check(self) -> None:
        if not self.flags:
            return
        ok = torch.stack([f for _, f in self.flags]).cpu()
        if not bool(ok.all()):
            first = int((~ok).nonzero()[0])
            raise FloatingPointError(
                f"the model returned NaN or inf at model call {first + 1} of {len(self.flags)} "
                f"(sigma={self.flags[first][0]:.4g}); check the model's weights and inputs, "
                "and that `prediction` matches how it was trained"
            )


def _as_denoiser(model, schedule, prediction, learned_variance, clip_x0, threshold) -> Denoiser:
    if isinstance(model, Denoiser):
        return model
    if schedule is None:
        raise ValueError("pass the schedule the model was trained with (or a Denoiser, which carries it)")
    return Denoiser(model, schedule, prediction, learned_variance, clip_x0, threshold)


def check_options(method: str, options: dict) -> None:
    """One clear error for a sampler option ``method``'s function does not take."""
    spec = get_sampler(method)
    params = inspect.signature(spec.fn).parameters
    allowed = [p for p in params if p not in ("denoise", "x", "sigmas", "noise_source", "callback")]
    unknown = [k for k in options if k not in allowed]
    if unknown:
        raise ValueError(
            f"sampler {method!r} has no option {', '.join(map(repr, unknown))}; "
            f"its options are: {', '.join(allowed) or 'none'}"
        )


def _check_sigmas(sigmas) -> Tensor:
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64).cpu()
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError("sigmas must be a 1-D sequence of at least 2 noise levels (start … end)")
    if not (sigmas[:-1] > sigmas[1:]).all() or sigmas[-1] < 0:
        raise ValueError("sigmas must be strictly decreasing and end at a level >= 0")
    return sigmas


def _with_progress(callback, total: int, progress: bool, desc: str):
    if not progress:
        return callback, None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="step", leave=False)

    def both(step: Step):
        bar.update(1)
        if callback is not None:
            callback(step)

    return both, bar


def sample(
    model,
    noise: Tensor,
    schedule=None,
    *,
    method: str = DEFAULT_METHOD,
    steps: int = DEFAULT_STEPS,
    spacing=None,
    sigmas=None,
    prediction: str = "epsilon",
    cond: dict | None = None,
    generator: torch.Generator | int | None = None,
    seeds=None,
    noise_source: NoiseSource | None = None,
    callback=None,
    progress: bool = False,
    final_denoise: bool = True,
    learned_variance: bool = False,
    clip_x0: float | None = None,
    threshold: float | None = None,
    x_start: Tensor | None = None,
    **options,
) -> Tensor:
    """Generate samples: start from ``noise`` at the highest noise level and solve down to data.

    Args:
        model: a model function ``model(x_t, t, **cond)`` (see :mod:`difflab.denoiser`) of type
            ``prediction``, or a :class:`~difflab.denoiser.Denoiser` (then ``schedule`` and the
            prediction options come from it).
        noise: standard normal noise of the output's shape; it is scaled to the prior at the
            first sigma (std √(1 + σ²) for variance-preserving schedules, σ otherwise).
        schedule: the model's noise schedule.
        method: a sampler name from :data:`SAMPLERS`.
        steps: number of steps (model calls: :func:`model_calls`).
        spacing: a name from :data:`~difflab.sampling.spacing.SPACINGS` or ``f(schedule, steps)``;
            default: :func:`~difflab.sampling.spacing.default_spacing` of the schedule and steps.
        sigmas: an explicit descending noise-level sequence (overrides steps/spacing).
        cond: keyword arguments passed to every model call (class labels, text context …).
        generator: a ``torch.Generator`` or int seed for the stochastic samplers' noise;
            ``seeds`` instead gives every sample its own seed (batch-independent results);
            ``noise_source`` a :class:`~difflab.sampling.common.NoiseSource` to go on drawing from
            (a pipeline's, which drew ``noise`` from it).
        callback: called with a :class:`~difflab.sampling.common.Step` after every step; it may
            return a replacement for ``step.x``.
        progress: show a progress bar.
        final_denoise: end with σ = 0 (the last x̂₀) rather than at the schedule's σ_min.
        x_start: start from this data (in the model's space) noised to ``sigmas[0]``,
            x = x_start + σ₀·noise, instead of from pure noise: SDEdit / img2img when ``sigmas``
            is the tail of a schedule (Meng et al. 2022), an inverted image's round trip.
        **options: sampler options, e.g. ``eta`` for DDIM, ``variance`` for DDPM, ``order``.
    Returns:
        The samples, in data space.
    """
    spec = get_sampler(method)
    check_options(method, options)
    denoiser = _as_denoiser(model, schedule, prediction, learned_variance, clip_x0, threshold)
    if sigmas is None:
        spacing = spacing or default_spacing(denoiser.schedule, steps)
        sigmas = get_sigmas(denoiser.schedule, steps, spacing, final_denoise)
    sigmas = _check_sigmas(sigmas)
    if isinstance(generator, int):
        generator = torch.Generator(noise.device).manual_seed(generator)
    kwargs = {**spec.defaults, **options}
    if "noise_source" in inspect.signature(spec.fn).parameters:
        kwargs["noise_source"] = noise_source or NoiseSource(generator, seeds)
    denoise = _FiniteCheck(denoiser.bind(**(cond or {})))
    callback, bar = _with_progress(callback, len(sigmas) - 1, progress, method)
    if x_start is None:
        x = noise * float(denoiser.schedule.prior_std(sigmas[0]))
    elif x_start.shape != noise.shape:
        raise ValueError(f"x_start has shape {tuple(x_start.shape)} but the noise {tuple(noise.shape)}")
    else:
        x = x_start.to(noise.dtype) + float(sigmas[0]) * noise
    try:
        x = spec.fn(denoise, x, sigmas, callback=callback, **kwargs)
    finally:
        if bar is not None:
            bar.close()
    denoise.check()
    return x


def invert(
    model,
    x0: Tensor,
    schedule=None,
    *,
    steps: int = 50,
    spacing=None,
    sigmas=None,
    prediction: str = "epsilon",
    cond: dict | None = None,
    callback=None,
) -> Tensor:
    """DDIM inversion (image → noise): the inverse of ``sample(..., method="ddim")`` with the same
    steps and spacing (by default both :func:`~difflab.sampling.spacing.default_spacing`'s).
    Returns noise in :func:`sample`'s convention (unit scale)."""
    denoiser = _as_denoiser(model, schedule, prediction, False, None, None)
    if sigmas is None:
        spacing = spacing or default_spacing(denoiser.schedule, steps)
        sigmas = get_sigmas(denoiser.schedule, steps, spacing, final_denoise=True)
    sigmas = _check_sigmas(sigmas)
    denoise = _FiniteCheck(denoiser.bind(**(cond or {})))
    x = ddim_invert(denoise, x0, sigmas.flip(0), callback=callback)
    denoise.check()
    return x / float(denoiser.schedule.prior_std(sigmas[0]))
