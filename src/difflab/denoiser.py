"""The one wrapper that turns a model function into the denoiser samplers and losses see.

A *model function* is anything callable as ``model(x_t, t, **cond) -> output`` where ``x_t`` is in
the network's space (xₜ = s·x₀ + d·ε), ``t`` is the schedule's time as a float tensor of shape
(N,), and ``output`` is an ε, x₀ or v prediction (see :mod:`difflab.process`) — optionally with
twice the channels, the second half being improved DDPM's variance interpolation v ∈ [−1, 1].

The *denoiser* is ``D(x, sigma) -> x0`` in the space x = x₀ + σ·ε (Karras et al. 2022, §2;
k-diffusion's contract). The conversion is the only place that knows the prediction type::

    s, d = scale_std(σ)        # network input scaling
    t    = t_from_sigma(σ)     # network time input
    x̂₀   = to_x0(model(s·x, t))
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from . import process


@dataclass
class GuidedOutput:
    """A model output with ADM Algorithm 1's mean shift attached (see :mod:`difflab.guidance`).

    Attributes:
        output: the (unguided) network output.
        mean_gradient: s · ∇ₓₜ log p(y | xₜ) in the network's input space; an ancestral sampler
            adds Σ · mean_gradient to the mean of p(x_{t−1} | xₜ).
    """

    output: Tensor
    mean_gradient: Tensor


@dataclass
class DenoiserOutput:
    x0: Tensor
    # Improved DDPM's learned-variance output mapped to [0, 1] (None without learned variance):
    # log Σ = frac·log β + (1 − frac)·log β̃ (Nichol & Dhariwal 2021, eq. 15).
    variance_frac: Tensor | None = None
    # ADM Algorithm 1's classifier gradient s·∇ₓ log p(y | x) in this space (None without
    # mean-shift guidance, see difflab.guidance); only ancestral samplers can use it.
    mean_gradient: Tensor | None = None

    def denoised(self) -> Tensor:
        """x̂₀ alone, for samplers that have no use for the variance or mean-shift outputs."""
        if self.mean_gradient is not None:
            raise ValueError(
                "classifier guidance in mode='mean' (ADM Algorithm 1) only works with the ddpm sampler; "
                "use mode='epsilon' (Algorithm 2) for the other samplers"
            )
        return self.x0


@dataclass
class Denoiser:
    """``D(x, sigma, **cond) -> x0`` for a model function of a declared prediction type.

    Attributes:
        model: ``model(x_t, t, **cond)``; a network, a guided network or a closed form.
        schedule: the :class:`~difflab.schedules.NoiseSchedule` the model was trained with.
        prediction: ``"epsilon"``, ``"x0"`` or ``"v"``.
        learned_variance: the model returns 2×C channels, the last C being the variance output.
        clip_x0: clamp x̂₀ to [−clip_x0, clip_x0] (e.g. 1.0 for images in [−1, 1]).
        threshold: Imagen dynamic-thresholding percentile (e.g. 0.995), applied instead of clipping.

    :meth:`with_model` is the same denoiser around another model function (what guidance
    wrappers return); ``dataclasses.replace`` changes any other field.
    """

    model: object
    schedule: object
    prediction: str = "epsilon"
    learned_variance: bool = False
    clip_x0: float | None = None
    threshold: float | None = None

    def __post_init__(self):
        if not callable(self.model):
            raise TypeError(f"the model must be callable as model(x_t, t, **cond), got {type(self.model).__name__}")
        process.check_prediction_type(self.prediction)
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise ValueError(f"the dynamic-thresholding percentile must be in (0, 1), e.g. 0.995; got {self.threshold}")

    def with_model(self, model) -> Denoiser:
        """This denoiser (schedule, prediction type, variance, clipping, kind) around ``model``."""
        return dataclasses.replace(self, model=model)

    def model_time(self, sigma: Tensor) -> Tensor:
        """The model's time input for noise level σ (float64). Discrete schedules snap values
        within 1e-6 of an integer to it, so a network sees exactly its training timesteps."""
        t = self.schedule.t_from_sigma(sigma)
        if self.schedule.is_discrete:
            t = torch.where((t - t.round()).abs() < 1e-6, t.round(), t)
        return t

    def predict(self, x: Tensor, sigma, **cond) -> DenoiserOutput:
        """x̂₀ (and the variance output, if learned) at noise level ``sigma`` (a float or (N,))."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device="cpu")  # schedule math: float64
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        scale, std = self.schedule.scale_std_at_sigma(sigma)
        # the step's coefficients reach the device in one copy, in x's dtype
        scale, std, t = torch.stack([scale, std, self.model_time(sigma)]).to(device=x.device, dtype=x.dtype)
        return self.network_x0(x, scale, std, t, cond)

    def network_x0(self, x: Tensor, scale: Tensor, std: Tensor, t: Tensor, cond: dict) -> DenoiserOutput:
        """The tensor work of one call, given the step's per-sample scale s, std d and model time t
        on x's device: xₜ = s·x, the model, x̂₀ from its output, clipping. Everything here runs
        on the device without waiting on it, which is what :mod:`difflab.sampling.compiled` compiles."""
        x_t = process.broadcast_to(scale, x) * x
        output = self.model(x_t, t, **cond)
        mean_gradient = None
        if isinstance(output, GuidedOutput):  # x = xₜ/s, so ∇ₓ = s·∇ₓₜ
            output, mean_gradient = output.output, process.broadcast_to(scale, x) * output.mean_gradient.to(x.dtype)
        self._check_shape(output, x)
        # e.g. bf16 under autocast: solver arithmetic stays in x's dtype
        mean, variance = process.split_variance(output.to(x.dtype), self.learned_variance)
        x0 = process.to_x0(self.prediction, mean, x_t, scale, std)
        if self.threshold is not None:
            x0 = process.dynamic_threshold(x0, self.threshold)
        elif self.clip_x0 is not None:
            x0 = process.clip_x0(x0, self.clip_x0)
        variance_frac = None if variance is None else process.variance_fraction(variance)
        return DenoiserOutput(x0, variance_frac, mean_gradient)

    def __call__(self, x: Tensor, sigma, **cond) -> Tensor:
        return self.predict(x, sigma, **cond).denoised()

    def bind(self, **cond) -> BoundDenoiser:
        """This denoiser with its conditioning fixed: what samplers call as ``denoise(x, sigma)``."""
        return BoundDenoiser(self, cond)

    def _check_shape(self, output, x: Tensor) -> None:
        if not isinstance(output, Tensor):
            raise TypeError(f"the model must return a tensor, got {type(output).__name__}")
        channels = x.shape[1] * (2 if self.learned_variance else 1)
        expected = (x.shape[0], channels, *x.shape[2:])
        if tuple(output.shape) != expected:
            hint = " (twice the input's channels, since learned_variance=True)" if self.learned_variance else (
                " (the input's shape; a model with learned variance needs learned_variance=True)"
            )
            raise ValueError(f"the model returned shape {tuple(output.shape)}, expected {expected}{hint}")


class BoundDenoiser:
    """A denoiser with its conditioning bound: ``denoise(x, sigma) -> x0``."""

    def __init__(self, denoiser: Denoiser, cond: dict):
        self.denoiser = denoiser
        self.cond = cond
        self.schedule = denoiser.schedule

    def predict(self, x: Tensor, sigma) -> DenoiserOutput:
        return self.denoiser.predict(x, sigma, **self.cond)

    def __call__(self, x: Tensor, sigma) -> Tensor:
        return self.denoiser.predict(x, sigma, **self.cond).denoised()
