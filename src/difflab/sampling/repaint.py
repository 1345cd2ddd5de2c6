"""RePaint (Lugmayr et al. 2022, "RePaint: Inpainting using Denoising Diffusion Probabilistic
Models", Algorithm 1): inpainting with any unconditional or conditional model by resampling.

Each step down is a DDPM ancestral step (:func:`~difflab.sampling.common.ancestral_update`, DDIM's
η = 1 by default) for the unknown region, joined to the known region noised to the new level;
every ``jump_length`` steps the walk goes back up ``jump_length`` levels by re-noising ("undo"),
``jump_n_sample − 1`` times, so the two regions have time to agree.

The undo step. The paper's forward step is x_t = √(1 − β_t)·x_{t−1} + √β_t·ε; over a jump from
level t_prev up to t it is x_t = √(ᾱ_t/ᾱ_prev)·x_prev + √(1 − ᾱ_t/ᾱ_prev)·ε (the product of the
single steps). Our samplers work in the scaled space x = x_t/√ᾱ_t, where σ² = 1/ᾱ − 1. Dividing by
√ᾱ_t: x_t/√ᾱ_t = x_prev/√ᾱ_prev + √(1/ᾱ_t − 1/ᾱ_prev)·ε, that is

    x(σ) = x(σ_prev) + √(σ² − σ_prev²)·ε,

the same form as a variance-exploding schedule's forward step, so one line serves every
schedule. (diffusers' ``RePaintScheduler.undo_step`` adds the betas of t_last … t_last + stride − 1,
one train step off the exact jump; we use the exact jump.)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .common import Callback, Step, ancestral_sigma_up, ancestral_update, as_noise_source
from .ddpm import step_factors
from .spacing import leading


def repaint_timesteps(steps: int, jump_length: int = 10, jump_n_sample: int = 10) -> list[int]:
    """The resampling schedule in step indices 0 … steps−1 (RePaint's Algorithm 1 with the jumps
    of its code; equal to diffusers' ``RePaintScheduler.set_timesteps`` divided by its stride):
    walking down, every ``jump_length`` indices the walk climbs ``jump_length`` back up,
    ``jump_n_sample − 1`` times. An index t going down means: the model is called at level t and
    the state moves to t − 1; going up: the state moves from t − 1 to t."""
    for name, value in (("steps", steps), ("jump length", jump_length), ("resample count", jump_n_sample)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"RePaint's {name} must be an integer >= 1, got {value!r}")
    jumps = {j: jump_n_sample - 1 for j in range(0, steps - jump_length, jump_length)}
    timesteps, t = [], steps
    while t >= 1:
        t -= 1
        timesteps.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                timesteps.append(t)
    return timesteps


def repaint_levels(steps: int, jump_length: int = 10, jump_n_sample: int = 10) -> list[int]:
    """The level index of the state before and after every move of :func:`repaint_timesteps`
    (−1 is the end, σ = 0). After index t, going down or up, the state is at t − 1: a step down
    from t calls the model at level t; diffusers' ``undo_step(x, t_last)`` before the model call
    at t = t_last + 1 brings the state from t_last − 1 up to t_last."""
    timesteps = repaint_timesteps(steps, jump_length, jump_n_sample)
    return [timesteps[0]] + [t - 1 for t in timesteps]


def repaint_sigmas(schedule, steps: int, jump_length: int = 10, jump_n_sample: int = 10) -> Tensor:
    """The noise levels RePaint's state visits, up and down (float64, ending at 0): level index k
    is the ``leading`` spacing's t = k·⌊T/steps⌋ (diffusers' RePaint timesteps)."""
    ladder = leading(schedule, steps).flip(0)  # ladder[k]: the level of index k
    levels = repaint_levels(steps, jump_length, jump_n_sample)
    return torch.stack([ladder[k] if k >= 0 else ladder.new_zeros(()) for k in levels])


@torch.no_grad()
def repaint(denoise, x: Tensor, sigmas: Tensor, *, known: Tensor, mask: Tensor, eta: float = 1.0,
            noise_source=None, known_noise=None, callback: Callback | None = None) -> Tensor:
    """Walk ``sigmas`` (:func:`repaint_sigmas`: up and down) from ``x`` at ``sigmas[0]``.

    Down σ → σₙ: x = m·(x̂₀ + √(σₙ² − σ_up²)·ε̂ + σ_up·z) + (1 − m)·(known + σₙ·z'), σ_up = η·σₙ√(1 − σₙ²/σ²)
    (DDPM's posterior std for η = 1). Up σₙ → σ: x = x + √(σ² − σₙ²)·z (the undo step, module
    docstring). ``mask`` is 1 where the image is repainted, broadcastable to x; ``known`` is the
    original in the sampler's space; z comes from ``noise_source`` (the image's stream), z' from
    ``known_noise`` (default: the same source). ``callback`` sees every step down. Classifier
    guidance in ``mode="mean"`` (ADM Algorithm 1) shifts each step down's mean by Σ·s∇ log p, as
    the ``ddpm`` sampler does (:func:`~difflab.sampling.ddpm.step_factors`).
    """
    noise = as_noise_source(noise_source)
    noise_known = as_noise_source(known_noise) if known_noise is not None else noise
    s = sigmas.tolist()
    downs = sum(1 for a, b in zip(s, s[1:]) if b < a)
    done = 0
    for sigma, sigma_next in zip(s, s[1:]):
        if sigma_next > sigma:  # undo: back up to the higher level
            x = x + math.sqrt(sigma_next**2 - sigma**2) * noise(x)
            continue
        out = denoise.predict(x, sigma) if hasattr(denoise, "predict") else None
        denoised = out.x0 if out is not None else denoise(x, sigma)
        sigma_up = eta * ancestral_sigma_up(sigma, sigma_next)
        x = ancestral_update(x, denoised, sigma, sigma_next, sigma_up)
        if sigma_next > 0:
            if out is not None and out.mean_gradient is not None:  # ADM Algorithm 1: μ + Σ·s∇ log p(y | xₜ)
                _, gradient_factor = step_factors(denoise.schedule, sigma, sigma_next)
                x = x + sigma_up**2 * gradient_factor * out.mean_gradient
            x = x + sigma_up * noise(x)
            x = mask * x + (1 - mask) * (known + sigma_next * noise_known(x))
        else:
            x = mask * x + (1 - mask) * known
        if callback is not None:
            replacement = callback(Step(done, downs, sigma, sigma_next, x, denoised))
            x = replacement.to(x.dtype) if replacement is not None else x
        done += 1
    return x
