"""Step schedules tuned to one model: choose the noise levels a few-step sampler visits so that
its result matches a many-step solve of the same model.

A fixed spacing (trailing, log-SNR, Karras) is a guess at where a model's probability-flow ODE
curves; the best levels depend on the data, the network and the solver. Like "Align Your Steps"
(Sabour et al. 2024) and GITS (Chen et al. 2024, "On the Trajectory Regularity of ODE-based
Diffusion Sampling"), :func:`tune_sigmas` fits them to the model itself, from calibration noise
only — no data and no exact solution is needed:

    min over σ₁ > … > σₙ₋₁ of  ‖S(x_T; σ_max, σ₁, …, σₙ₋₁, 0) − S*(x_T)‖ / ‖S*(x_T)‖

where S is the few-step solver (any deterministic sampler of :mod:`difflab.sampling`), S* the
same model solved with ``reference_steps`` UniPC-3 steps uniform in log-SNR, and x_T a batch of
calibration noise. The levels are parametrised by the softmax of n logits, whose cumulative sums
place σ₁ … σₙ₋₁ between log σ_max and log σ_min (the n-th share is the gap left above σ_min), so
every candidate is strictly decreasing; the derivative-free search (Nelder–Mead) costs
``steps`` model calls on the calibration batch per evaluation. Tune on noise you will not
sample from, and check on fresh noise (:class:`TunedSigmas` records both errors).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .sample import get_sampler, sample
from .spacing import get_sigmas

REFERENCE_METHOD = "unipc_3"
REFERENCE_SPACING = "log_snr"


@dataclass
class TunedSigmas:
    """A tuned step schedule and how it was found (written to / read from JSON)."""

    method: str
    steps: int
    sigmas: list[float]  # steps + 1 levels: σ_max … σₙ₋₁, 0
    init: str
    error_init: float  # relative error of the initial spacing on the calibration noise
    error_tuned: float  # … and of the tuned levels
    evaluations: int
    reference_steps: int
    options: dict = field(default_factory=dict)  # sampler options the levels were tuned with
    heldout_error_init: float | None = None  # the same two errors on fresh noise (:meth:`check`)
    heldout_error: float | None = None
    context: dict = field(default_factory=dict)  # what the caller tuned for (guidance scale, step …)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> TunedSigmas:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no tuned step schedule at {path}: make one with `difflab tune-steps`")
        try:
            tuned = cls(**json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError) as e:
            raise ValueError(f"{path} is not a tuned step schedule written by `difflab tune-steps` ({e})") from None
        if len(tuned.sigmas) != tuned.steps + 1:
            raise ValueError(f"{path}: {len(tuned.sigmas)} levels for {tuned.steps} steps (expected steps + 1)")
        return tuned

    def tensor(self) -> Tensor:
        return torch.tensor(self.sigmas, dtype=torch.float64)

    def check(self, model, noise: Tensor, schedule=None, *, prediction: str = "epsilon",
              cond: dict | None = None) -> tuple[float, float]:
        """Errors of the initial spacing and of the tuned levels on fresh ``noise`` (not the
        calibration noise), stored as ``heldout_error_init`` / ``heldout_error``."""
        score = _Scorer(model, noise, schedule, self.method, prediction, cond, self.reference_steps, self.options)
        init = initial_sigmas(score.schedule, self.steps, self.init)
        self.heldout_error_init, self.heldout_error = score(init), score(self.tensor())
        return self.heldout_error_init, self.heldout_error


class _OutOfTime(Exception):
    """The search's wall-clock budget is spent (raised inside the optimizer, caught around it)."""


class _Scorer:
    """error(σ levels) = ‖S(noise; levels) − S*(noise)‖ / ‖S*(noise)‖, S* solved once."""

    def __init__(self, model, noise, schedule, method, prediction, cond, reference_steps, options):
        self.schedule = schedule if schedule is not None else model.schedule
        self.model, self.noise, self.method, self.options = model, noise, method, options
        self.kw = dict(prediction=prediction, cond=cond)
        reference = sample(model, noise, self.schedule, method=REFERENCE_METHOD, steps=reference_steps,
                           spacing=REFERENCE_SPACING, **self.kw)
        self.reference = reference.to(torch.float64)
        self.norm = float(self.reference.norm()) or 1.0

    def __call__(self, sigmas: Tensor) -> float:
        x = sample(self.model, self.noise, self.schedule, method=self.method, sigmas=sigmas, **self.kw, **self.options)
        err = float((x.to(torch.float64) - self.reference).norm()) / self.norm
        return err if math.isfinite(err) else 1e30


def initial_sigmas(schedule, steps: int, init) -> Tensor:
    """The spacing ``init`` with its first level moved to σ_max (where tuned schedules start)
    and a final denoise."""
    sigmas = get_sigmas(schedule, steps, init, final_denoise=True)
    sigmas[0] = float(schedule.sigma_max)
    return sigmas


def sigmas_from_logits(logits, sigma_max: float, sigma_min: float) -> Tensor:
    """σ_max, then n − 1 levels whose log-gaps are the first n − 1 softmax shares of
    log(σ_max/σ_min), then 0 (the final denoise)."""
    logits = np.asarray(logits, dtype=np.float64)
    share = np.exp(logits - logits.max())
    share /= share.sum()
    log_sigma = math.log(sigma_max) - math.log(sigma_max / sigma_min) * np.cumsum(share[:-1])
    return torch.tensor([sigma_max, *np.exp(log_sigma).tolist(), 0.0], dtype=torch.float64)


def logits_from_sigmas(sigmas: Tensor, sigma_min: float) -> np.ndarray:
    """The inverse of :func:`sigmas_from_logits` for levels σ_max … σₙ₋₁ (then 0)."""
    levels = sigmas[:-1].tolist() if float(sigmas[-1]) == 0 else sigmas.tolist()
    log_levels = np.log(np.clip(np.array(levels + [sigma_min]), sigma_min, None))
    gaps = np.maximum(-np.diff(log_levels), 1e-6 * (log_levels[0] - log_levels[-1]))
    return np.log(gaps)


def tune_sigmas(
    model,
    noise: Tensor,
    schedule=None,
    *,
    method: str = "unipc_3",
    steps: int = 10,
    init: str | Sequence[str] = "log_snr",
    prediction: str = "epsilon",
    cond: dict | None = None,
    reference_steps: int = 200,
    max_evals: int | None = None,
    max_seconds: float | None = None,
    progress: bool = False,
    **options,
) -> TunedSigmas:
    """Tune the ``steps`` noise levels of ``method`` for ``model`` on the calibration ``noise``.

    Args:
        model, schedule, prediction, cond: as for :func:`~difflab.sampling.sample`.
        noise: calibration noise (standard normal, the shape of a batch of samples).
        method: a deterministic sampler name; the levels are tuned for it.
        steps: number of steps of the tuned schedule (model calls: ``model_calls(method, steps)``).
        init: the spacing the search starts from (a name from ``SPACINGS``), or several names:
            each is scored on the calibration noise (one solve each) and the search starts from
            the best, which the result records as its ``init``.
        reference_steps: steps of the UniPC-3 / log-SNR solve taken as the exact answer.
        max_evals: budget of the search in solver runs (default 150 per level, at most 3,000).
        max_seconds: a wall-clock budget as well, for this call and the :meth:`TunedSigmas.check`
            that should follow it (about one more reference solve): the search stops when
            ``max_seconds`` minus the reference solve's time have passed since the call, or at
            ``max_evals``, whichever comes first, and keeps its best levels so far.
        **options: sampler options (e.g. ``order``), used for tuning and to be used when sampling.
    Returns:
        :class:`TunedSigmas`; pass ``.tensor()`` as ``sigmas=`` to :func:`~difflab.sampling.sample`.
    """
    from scipy.optimize import minimize

    start = time.perf_counter()
    if get_sampler(method).stochastic or options.get("eta", 0) or options.get("churn_amount", 0):
        raise ValueError(f"sampler {method!r} is stochastic: tune the levels of a deterministic one (e.g. unipc_3)")
    if steps < 2:
        raise ValueError("tuning needs steps >= 2 (one step has no level to choose)")
    if reference_steps <= steps:
        raise ValueError(f"reference_steps ({reference_steps}) must be well above steps ({steps})")
    error = _Scorer(model, noise, schedule, method, prediction, cond, reference_steps, options)
    schedule = error.schedule
    reference_seconds = time.perf_counter() - start  # the check repeats a solve this long on fresh noise
    deadline = math.inf if max_seconds is None else start + max_seconds - reference_seconds
    sigma_max, sigma_min = float(schedule.sigma_max), float(schedule.sigma_min)

    starts = {}
    for name in dict.fromkeys([init] if isinstance(init, str) else init):  # in order, once each
        logits = logits_from_sigmas(initial_sigmas(schedule, steps, name), sigma_min)
        starts[name] = (error(sigmas_from_logits(logits, sigma_max, sigma_min)), logits)
    if not starts:
        raise ValueError("tune_sigmas needs at least one initial spacing (init)")
    init = min(starts, key=lambda name: starts[name][0])
    error_init, x0 = starts[init]
    max_evals = max_evals or min(150 * steps, 3000)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_evals, desc=f"tuning {steps} levels", unit="solve", leave=False)
    best = {"err": error_init, "logits": x0, "evaluations": 0}

    def objective(logits) -> float:
        if time.perf_counter() > deadline:
            raise _OutOfTime
        err = error(sigmas_from_logits(logits, sigma_max, sigma_min))
        best["evaluations"] += 1
        if err < best["err"]:
            best.update(err=err, logits=np.array(logits))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(error=f"{best['err']:.3g}")
        return math.log(err + 1e-300)

    try:
        with contextlib.suppress(_OutOfTime):  # the time is up: the best levels so far stand
            minimize(objective, x0, method="Nelder-Mead",
                     options={"maxfev": max_evals, "xatol": 1e-4, "fatol": 1e-4, "adaptive": True})
    finally:
        if bar is not None:
            bar.close()
    tuned = sigmas_from_logits(best["logits"], sigma_max, sigma_min)
    return TunedSigmas(method=method, steps=steps, sigmas=tuned.tolist(), init=str(init), error_init=error_init,
                       error_tuned=best["err"], evaluations=best["evaluations"], reference_steps=reference_steps,
                       options=dict(options))

