"""Guidance: wrappers that turn a model function into a guided model function.

Both wrappers take and return a model function ``model(x_t, t, **cond) -> output`` (see
:mod:`difflab.denoiser`), so every sampler supports guidance without knowing about it, and the
usual x̂₀ clipping or thresholding applies to the guided prediction, as in GLIDE and ADM.

**Classifier-free guidance** (Ho & Salimans 2022; GLIDE, Nichol et al. 2022, eq. 6)::

    ε̂ = ε(xₜ, ∅) + w · (ε(xₜ, y) − ε(xₜ, ∅))

w = 1 is the conditional model, w = 0 the unconditional one. Given xₜ and t every
parametrization (ε, x₀, v) is an affine function of the others with the same coefficients for both
branches, so combining the raw outputs is the same as combining ε. Both branches run in one
forward pass over a doubled batch. Options:

* *guidance rescale* φ (Lin et al. 2023, §3.4): rescale the guided output to the standard deviation
  of the conditional one, x_rescaled = x_cfg · std(x_cond)/std(x_cfg) per sample, and use
  φ · x_rescaled + (1 − φ) · x_cfg; it counters the over-exposure of large w;
* a *guidance interval* (Kynkäänniemi et al. 2024): guide only for noise levels σ in
  (σ_lo, σ_hi] and use the conditional model elsewhere. A guidance-distilled student (``difflab
  distill``, whose w is an input) takes the same interval through :class:`GuidanceInputInterval`:
  its w input is 1 outside it.

**Classifier guidance** (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs", §4): a classifier
p_φ(y | xₜ, t) trained on noisy images steers sampling with the gradient g = ∇ₓₜ log p_φ(y | xₜ):

* Algorithm 2 (DDIM and every ODE solver): ε̂ = ε − s · √(1 − ᾱₜ) · g, i.e. the score of
  p(xₜ) p(y | xₜ)^s. This is ``mode="epsilon"`` and works with every sampler.
* Algorithm 1 (ancestral sampling): the reverse-step mean moves to μ + s · Σ · g. This is
  ``mode="mean"``: the wrapper returns the unchanged prediction with the scaled gradient attached
  (:class:`GuidedOutput`), and the ``ddpm`` sampler adds Σ · s·g to its mean after clipping, as
  ADM's ``condition_mean`` does. Other samplers refuse such a model.

Only the classifier is differentiated: the diffusion model runs without a graph, and the gradient
is taken with respect to the input image alone, so neither network's parameters receive gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from . import process
from .denoiser import GuidedOutput

GUIDANCE_MODES = ("epsilon", "mean")


def null_class_labels(num_classes: int) -> Callable[[dict], dict]:
    """The unconditional counterpart of a class-conditional ``cond``: every label replaced by the
    null label ``num_classes`` (the embedding trained by label dropout)."""

    def uncond(cond: dict) -> dict:
        if cond.get("class_labels") is None:
            raise ValueError("classifier-free guidance needs class_labels: pick the class to guide towards")
        return {**cond, "class_labels": torch.full_like(cond["class_labels"], num_classes)}

    return uncond


def in_interval(sigma: Tensor, interval: tuple[float, float]) -> Tensor:
    """Which noise levels a guidance interval (σ_lo, σ_hi) guides: σ_lo < σ ≤ σ_hi (Kynkäänniemi et
    al. 2024), elementwise."""
    low, high = interval
    return (sigma > low) & (sigma <= high)


def active_at(t: Tensor, interval: tuple[float, float], schedule) -> Tensor:
    """Which rows of model times t an interval guides, read through the schedule's σ(t), as a CPU
    bool tensor (a host sync: callers skip it when no interval is set)."""
    return in_interval(schedule.sigma(t.detach().double().cpu()), interval)


def check_interval(interval: tuple[float, float]) -> None:
    """One clear error for an interval that guides nothing or is not a pair of numbers 0 ≤ lo < hi."""
    low, high = interval
    if not 0 <= low < high:
        raise ValueError(f"the guidance interval (sigma_lo, sigma_hi) must have 0 <= lo < hi, got {interval}")


def _cat_cond(cond: dict, uncond: dict, n: int, rows: int | None = None) -> dict:
    """One conditioning dict for the doubled batch [conditional; unconditional] (``cond`` has
    ``rows`` rows, n by default; ``uncond`` n, or 1 to broadcast)."""
    if cond.keys() != uncond.keys():
        raise ValueError(f"conditional and unconditional inputs differ in keys: {sorted(cond)} vs {sorted(uncond)}")
    out = {}
    for key, value in cond.items():
        other = uncond[key]
        if isinstance(value, Tensor) and value.ndim and value.shape[0] == (rows or n):
            other = other.expand(n, *other.shape[1:]) if other.shape[0] == 1 else other
            out[key] = torch.cat([value, other])
        elif value is None and other is None:
            out[key] = None
        else:
            raise ValueError(f"cannot batch the conditioning {key!r}: give a tensor with one row per sample")
    return out


def _per_sample_std(x: Tensor) -> Tensor:
    return x.flatten(1).std(dim=1).reshape(-1, *([1] * (x.ndim - 1)))


class ClassifierFreeGuidance:
    """``model(x_t, t, **cond)`` guided by its own unconditional prediction.

    Args:
        model: a conditional model function trained with condition dropout.
        scale: the guidance weight w (1 = the conditional model, 0 = the unconditional one), or a
            tensor (N,) of one weight per sample (guided distillation's teacher, ``difflab distill``).
        uncond: maps a ``cond`` dict to its unconditional counterpart (e.g.
            :func:`null_class_labels`); tensors of batch 1 are broadcast to the batch.
        rescale: Lin et al.'s φ in [0, 1] (0 = off; they use 0.7).
        interval: (σ_lo, σ_hi): guide only where σ_lo < σ ≤ σ_hi (needs ``schedule``).
        schedule: the model's noise schedule, to read σ from t for ``interval``.
        learned_variance: the model returns a variance output as its second half of channels;
            only the first half is guided and the variance is the conditional branch's (GLIDE).
    """

    def __init__(self, model, scale: float, uncond: Callable[[dict], dict], *, rescale: float = 0.0,
                 interval: tuple[float, float] | None = None, schedule=None, learned_variance: bool = False):
        if not 0.0 <= rescale <= 1.0:
            raise ValueError(f"guidance rescale must be in [0, 1], got {rescale}")
        if interval is not None:
            if schedule is None:
                raise ValueError("a guidance interval needs the model's schedule (to know σ at each t)")
            check_interval(interval)
        self.model, self.uncond = model, uncond
        self.scale = scale if isinstance(scale, Tensor) else float(scale)
        self.rescale, self.interval, self.schedule = rescale, interval, schedule
        self.learned_variance = learned_variance

    def __call__(self, x_t: Tensor, t: Tensor, **cond) -> Tensor:
        # Without an interval nothing here reads a value back from the device (no host sync).
        active = None if self.interval is None else active_at(t, self.interval, self.schedule)
        unguided = not isinstance(self.scale, Tensor) and self.scale == 1.0
        if unguided or (active is not None and not bool(active.any())):
            return self.model(x_t, t, **cond)
        n = x_t.shape[0]
        both = self.model(torch.cat([x_t, x_t]), torch.cat([t, t]), **_cat_cond(cond, self.uncond(cond), n))
        cond_out, uncond_out = both[:n], both[n:]
        mean_c, var_c = process.split_variance(cond_out, self.learned_variance)
        mean_u, _ = process.split_variance(uncond_out, self.learned_variance)
        scale = process.broadcast_to(self.scale, mean_c) if isinstance(self.scale, Tensor) else self.scale
        guided = mean_u + scale * (mean_c - mean_u)
        if self.rescale > 0:
            rescaled = guided * (_per_sample_std(mean_c) / _per_sample_std(guided).clamp_min(1e-12))
            guided = self.rescale * rescaled + (1 - self.rescale) * guided
        if active is not None and not bool(active.all()):
            guided = torch.where(process.broadcast_to(active, guided), guided, mean_c)
        return guided if var_c is None else torch.cat([guided, var_c], dim=1)


class InstructPix2PixGuidance:
    """Classifier-free guidance over two conditions, an image I and a text T (instruct-pix2pix,
    Brooks et al. 2023, eq. 3)::

        ε̂ = ε(∅, ∅) + s_I·(ε(I, ∅) − ε(∅, ∅)) + s_T·(ε(I, T) − ε(I, ∅))

    the three predictions in one batched call. s_I = s_T = 1 is the fully conditioned model (one
    call, no combination). A learned variance is the fully conditioned branch's.

    Args:
        model: a model trained with instruct-pix2pix's three-way conditioning dropout.
        text_scale, image_scale: s_T and s_I.
        text_uncond: ``cond`` with the text replaced by its null (the empty caption).
        image_uncond: ``cond`` with the image replaced by its null (zeros).
    """

    def __init__(self, model, text_scale: float, image_scale: float, text_uncond: Callable[[dict], dict],
                 image_uncond: Callable[[dict], dict], learned_variance: bool = False):
        for name, value in (("text", text_scale), ("image", image_scale)):
            if not math.isfinite(value):
                raise ValueError(f"the {name} guidance scale must be a finite number, got {value}")
        self.model, self.text_scale, self.image_scale = model, float(text_scale), float(image_scale)
        self.text_uncond, self.image_uncond, self.learned_variance = text_uncond, image_uncond, learned_variance

    def __call__(self, x_t: Tensor, t: Tensor, **cond) -> Tensor:
        if self.text_scale == 1.0 and self.image_scale == 1.0:
            return self.model(x_t, t, **cond)
        n = x_t.shape[0]
        image_only = self.text_uncond(cond)
        neither = self.image_uncond(image_only)
        both = _cat_cond(cond, image_only, n)
        out = self.model(torch.cat([x_t] * 3), torch.cat([t] * 3), **_cat_cond(both, neither, n, rows=2 * n))
        (full, var), (image, _), (null, _) = (process.split_variance(out[i * n:(i + 1) * n], self.learned_variance)
                                              for i in range(3))
        guided = null + self.image_scale * (image - null) + self.text_scale * (full - image)
        return guided if var is None else torch.cat([guided, var], dim=1)


def classifier_log_prob_gradient(classifier, x_t: Tensor, t: Tensor, labels: Tensor) -> Tensor:
    """∇ₓₜ Σᵢ log p(yᵢ | xₜ,ᵢ, t) for ``classifier(x_t, t) -> logits``: each sample's gradient of
    its own log-probability (the samples are independent). Only the input is differentiated."""
    with torch.enable_grad():
        x_in = x_t.detach().float().requires_grad_(True)
        logits = classifier(x_in, t.float())
        log_p = F.log_softmax(logits.float(), dim=-1).gather(1, labels.reshape(-1, 1)).sum()
        (gradient,) = torch.autograd.grad(log_p, x_in)
    return gradient.to(x_t.dtype)


class GuidanceInputInterval:
    """A guidance interval for a guidance-distilled student (Meng et al. 2023: w is the network's
    ``guidance_scale`` input, not two passes): ``model(x_t, t, **cond)`` with that input set to 1,
    the student's unguided mode, wherever σ(t) lies outside (σ_lo, σ_hi].

    A teacher's interval switches classifier-free guidance off at the noise levels where it costs
    diversity and buys little (Kynkäänniemi et al. 2024); a student's w input is read afresh at each
    of its steps, so the same interval is one weight per step: w inside, 1 outside. A student
    refined with an interval (``distill.guidance_interval``) learned its trajectories this way.
    """

    def __init__(self, model, interval: tuple[float, float], schedule):
        check_interval(interval)
        self.model, self.interval, self.schedule = model, interval, schedule

    def __call__(self, x_t: Tensor, t: Tensor, **cond) -> Tensor:
        w = cond.get("guidance_scale")
        if w is not None:
            active = active_at(t, self.interval, self.schedule)
            if not bool(active.all()):
                cond = {**cond, "guidance_scale": torch.where(active.to(w.device), w, torch.ones_like(w))}
        return self.model(x_t, t, **cond)


class ClassifierGuidance:
    """``model(x_t, t, **cond)`` steered by a noisy classifier (ADM §4, Algorithms 1 and 2).

    Args:
        model: the diffusion model function (unconditional, or conditional for ADM-G).
        classifier: ``classifier(x_t, t) -> logits``, trained on xₜ with the same schedule.
        scale: the gradient scale s (0 = no guidance).
        schedule: the model's noise schedule (for √(1 − ᾱₜ)).
        prediction: the model's prediction type.
        mode: ``"epsilon"`` (Algorithm 2, any sampler) or ``"mean"`` (Algorithm 1, ``ddpm`` only).
        label_key: the ``cond`` entry holding the target classes.
        model_takes_labels: pass the labels on to the model too (a class-conditional model);
            otherwise they are removed from what the model sees.
        learned_variance: the model's second half of channels is a variance output (left as is).
    """

    def __init__(self, model, classifier, scale: float, schedule, prediction: str = "epsilon", *,
                 mode: str = "epsilon", label_key: str = "class_labels", model_takes_labels: bool = False,
                 learned_variance: bool = False):
        if mode not in GUIDANCE_MODES:
            raise ValueError(f"unknown classifier-guidance mode {mode!r}; choose one of: {', '.join(GUIDANCE_MODES)}")
        self.model, self.classifier, self.scale = model, classifier, float(scale)
        self.schedule, self.prediction = schedule, process.check_prediction_type(prediction)
        self.mode, self.label_key, self.model_takes_labels = mode, label_key, model_takes_labels
        self.learned_variance = learned_variance

    def __call__(self, x_t: Tensor, t: Tensor, **cond):
        labels = cond.get(self.label_key)
        if labels is None:
            raise ValueError(f"classifier guidance needs {self.label_key}: the class to steer each sample to")
        model_cond = cond if self.model_takes_labels else {k: v for k, v in cond.items() if k != self.label_key}
        with torch.no_grad():
            output = self.model(x_t, t, **model_cond)
        if self.scale == 0.0:
            return output
        gradient = self.scale * classifier_log_prob_gradient(self.classifier, x_t, t, labels)
        if self.mode == "mean":
            return GuidedOutput(output, gradient)
        mean, variance = process.split_variance(output, self.learned_variance)
        scale, std = self.schedule.scale_std(t.detach().double().cpu())
        guided = process.shift_epsilon(self.prediction, mean, x_t, scale, std,
                                       -process.broadcast_to(std, x_t) * gradient)
        return guided if variance is None else torch.cat([guided, variance], dim=1)


def guide(denoiser, *, scale: float = 1.0, uncond: Callable[[dict], dict] | None = None, rescale: float = 0.0,
          interval: tuple[float, float] | None = None, classifier=None, classifier_scale: float = 0.0,
          classifier_mode: str = "epsilon", model_takes_labels: bool = False):
    """A :class:`~difflab.denoiser.Denoiser` whose model function is ``denoiser.model`` with
    classifier-free guidance (``scale`` ≠ 1, needs ``uncond``) and then classifier guidance
    (``classifier`` with ``classifier_scale`` ≠ 0) applied; schedule, prediction type, learned
    variance and clipping are kept. With neither, ``denoiser`` itself is returned."""
    model = denoiser.model
    if scale != 1.0:
        if uncond is None:
            raise ValueError("classifier-free guidance needs the unconditional input (uncond)")
        model = ClassifierFreeGuidance(model, scale, uncond, rescale=rescale, interval=interval,
                                       schedule=denoiser.schedule, learned_variance=denoiser.learned_variance)
    if classifier is not None and classifier_scale != 0.0:
        model = ClassifierGuidance(model, classifier, classifier_scale, denoiser.schedule, denoiser.prediction,
                                   mode=classifier_mode, model_takes_labels=model_takes_labels,
                                   learned_variance=denoiser.learned_variance)
    return denoiser if model is denoiser.model else denoiser.with_model(model)
