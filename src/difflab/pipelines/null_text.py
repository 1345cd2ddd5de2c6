"""Null-text inversion (Mokady et al. 2023): real images that sample back exactly under CFG.

DDIM inversion at w = 1 gives the noise whose *unguided* DDIM sample is the image again, but an
edit is sampled with guidance, and at w > 1 the guided walk leaves the inverted trajectory
z*_T … z*_0 and the image is lost. Null-text inversion keeps the noise z*_T and the prompt, and
instead tunes the unconditional ("null") text input of each step, one ∅_t per step and image,
so that the guided walk stays on the trajectory (their Algorithm 1)::

    z̄_T = z*_T;  for each step t (σ_t → σ_{t−1}):
        ∅_t ← ∅_{t+1} (the empty caption's states at the first step)
        repeat N times:  ∅_t ← Adam step on ‖ z*_{t−1} − DDIM(z̄_t, σ_t → σ_{t−1}; ε̂_w(z̄_t, C, ∅_t)) ‖²
        z̄_{t−1} = DDIM(z̄_t, σ_t → σ_{t−1}; ε̂_w(z̄_t, C, ∅_t))

with ε̂_w = ε(∅_t) + w·(ε(C) − ε(∅_t)) the guided prediction. Sampling the noise with the same
prompt, steps and w and the tuned ∅_t (:func:`apply_null_text`) gives the image back; editing it
(prompt-to-prompt) changes only what the new words say. The ∅_t are the frozen text encoder's
token states (a model whose text encoder trains with it has no such input: an error).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..data import to_float
from ..guidance import ClassifierFreeGuidance
from ..sampling import invert
from ..sampling.common import StepOfCall
from .generate import GenerationPlan, SamplerSettings, plan
from .guidance_policy import Guidance
from .loading import DiffusionModel


@dataclass
class NullText:
    """A null-text inversion: the starting noise and the tuned unconditional context per step.

    Attributes:
        noise: (N, C, H, W) unit-scale DDIM noise, as :func:`~.inversion.invert_images` returns.
        contexts: (T, N, L, D) the unconditional context states of each step and image.
        steps, spacing, guidance_scale: the DDIM walk and the CFG weight they were tuned for.
        losses: (T,) the final mean squared miss of each step's guided update (diagnostics).
    """

    noise: Tensor
    contexts: Tensor
    steps: int
    spacing: str
    guidance_scale: float
    losses: Tensor

    def save(self, path) -> None:
        """Write the .npz ``difflab invert --null-text`` writes: ``noise`` (what a plain inversion's
        file holds) and the tuned contexts with the walk and scale they were tuned for."""
        np.savez(path, noise=self.noise.float().cpu().numpy(), null_contexts=self.contexts.float().cpu().numpy(),
                 null_steps=self.steps, null_spacing=self.spacing, null_guidance_scale=self.guidance_scale)

    def fill(self, method: str | None, steps: int | None, spacing: str | None, guidance: Guidance | None,
             noise: Tensor | None) -> tuple[str, int, str, Guidance, Tensor]:
        """Sampling arguments with its own walk (DDIM), guidance scale and noise where none was given."""
        if guidance is None or guidance.scale is None:
            guidance = dataclasses.replace(guidance or Guidance(), scale=self.guidance_scale)
        return (method or "ddim", steps or self.steps, spacing or self.spacing, guidance,
                self.noise if noise is None else noise)

    @classmethod
    def from_arrays(cls, npz, noise: Tensor) -> NullText | None:
        """The inversion stored in an .npz by :meth:`save` (None when it has none)."""
        if "null_contexts" not in npz.files:
            return None
        contexts = torch.from_numpy(npz["null_contexts"])
        if contexts.ndim != 4 or contexts.shape[1] != len(noise):
            raise ValueError(f"the null-text contexts must be (steps, {len(noise)}, tokens, dim), one per noise; got "
                             f"{tuple(contexts.shape)}: the file is damaged, run `difflab invert --null-text` again")
        return cls(noise, contexts, int(npz["null_steps"]), str(npz["null_spacing"]),
                   float(npz["null_guidance_scale"]), torch.zeros(len(contexts)))


class PerStepNull:
    """The network's model function with the unconditional rows' context replaced by the tuned
    ∅ of the current step (read from each call's noise level), for the images ``rows``.

    Under CFG the network sees ``[conditional (n); unconditional (n)]``; the second half's
    ``context`` becomes ``contexts[step][rows]``. Calls with one half only (w = 1) are passed on.
    """

    def __init__(self, model, schedule, sigmas: Tensor, contexts: Tensor | list[Tensor], rows: list[int]):
        self.model, self.rows, self.step_of = model, list(rows), StepOfCall(schedule, sigmas)
        self.contexts = list(contexts)

    def step(self, t: Tensor) -> int:
        return min(self.step_of(t), len(self.contexts) - 1)

    def __call__(self, x_t: Tensor, t: Tensor, **cond) -> Tensor:
        n = len(self.rows)
        if x_t.shape[0] == 2 * n and "context" in cond:
            null = self.contexts[self.step(t)][self.rows].to(cond["context"])
            cond = {**cond, "context": torch.cat([cond["context"][:n], null])}
        return self.model(x_t, t, **cond)


def apply_null_text(job: GenerationPlan, null_text: NullText, rows: list[int]) -> GenerationPlan:
    """``job`` with the tuned unconditional contexts of ``null_text`` for the images ``rows`` (one
    batch: the i-th row of the batch is image ``rows[i]`` of the inversion).

    Raises:
        ValueError: a walk other than the inversion's (DDIM, its steps, spacing and guidance scale).
    """
    settings = job.settings
    if (settings.method, settings.steps, settings.spacing) != ("ddim", null_text.steps, null_text.spacing) or \
            job.scale != null_text.guidance_scale or settings.sigmas is not None:
        raise ValueError(f"this null-text inversion was tuned for DDIM, {null_text.steps} steps, {null_text.spacing} "
                         f"spacing and guidance scale {null_text.guidance_scale:g}; sample with exactly those "
                         f"(got {settings.method}, {settings.steps} steps, {settings.spacing}, guidance {job.scale:g})")
    return _install(job, null_text.contexts, rows)[0]


def sample_back(job: GenerationPlan, null_text: NullText) -> GenerationPlan:
    """``job``, whose n images are the n images of ``null_text`` (in one batch), with their contexts.

    Raises:
        ValueError: a plan of another number of images, or another walk (:func:`apply_null_text`).
    """
    n = len(job.seeds)
    if n != len(null_text.noise):
        raise ValueError(f"a null-text inversion of {len(null_text.noise)} images samples exactly those, not {n}")
    return apply_null_text(job, null_text, list(range(n)))


def _install(job: GenerationPlan, contexts, rows: list[int]) -> tuple[GenerationPlan, PerStepNull]:
    """``job`` with a :class:`PerStepNull` between its classifier-free guidance and the network."""
    guided = job.denoiser.model
    if not isinstance(guided, ClassifierFreeGuidance):
        raise ValueError("null-text inversion tunes classifier-free guidance's unconditional branch, and this "
                         "sampling has none (a guidance scale of 1, a distilled student, or another guidance)")
    guided = copy.copy(guided)
    guided.model = per_step = PerStepNull(guided.model, job.model.schedule, job.settings.walk(job.model), contexts,
                                          rows)
    return dataclasses.replace(job, denoiser=job.denoiser.with_model(guided)), per_step


def null_text_inversion(model: DiffusionModel, images: Tensor, prompt: str, *, guidance_scale: float,
                        steps: int | None = None, spacing: str | None = None, inner_steps: int = 10,
                        lr: float = 1e-2, tolerance: float = 1e-5, progress: bool = False) -> NullText:
    """Invert ``images`` (uint8 (N, C, H, W), or float in [−1, 1]) so that DDIM sampling with
    ``prompt`` at ``guidance_scale`` returns them (see the module docstring).

    Args:
        model: a text model whose frozen encoder's states are the context (MiniLM, CLIP, …).
        steps, spacing: the DDIM walk (default: the checkpoint's sample settings).
        inner_steps: N, Adam steps per step (the paper's 10); lr: Adam's learning rate (theirs, 1e-2).
        tolerance: a step stops early once its mean squared miss is below this.
        progress: a progress bar over the steps.

    Raises:
        ValueError: a model without a frozen text encoder, guidance_scale ≤ 1, images of another shape.
    """
    from tqdm.auto import tqdm

    no_encoder = ValueError("null-text inversion tunes the frozen text encoder's states of the empty caption, and "
                            "this model has no frozen text encoder (a class-conditional model, or the trainable "
                            "'small' encoder): use plain `difflab invert` at guidance 1")
    if not model.text_encoder:
        raise no_encoder
    if not guidance_scale > 1.0:
        raise ValueError(f"null-text inversion is for sampling with classifier-free guidance (scale > 1), got "
                         f"{guidance_scale:g}: at scale 1 plain DDIM inversion already reconstructs")
    if inner_steps < 1 or not lr > 0:
        raise ValueError(f"null-text inversion needs inner_steps >= 1 and lr > 0, got {inner_steps} and {lr}")
    pixel_shape = tuple(model.latent.image_shape if model.latent is not None else model.image_shape)
    if images.ndim != 4 or len(images) == 0 or tuple(images.shape[1:]) != pixel_shape:
        raise ValueError(f"inversion needs images of shape (N, {', '.join(map(str, pixel_shape))}) (the model's), "
                         f"got {tuple(images.shape)}")
    n = len(images)
    x0 = (to_float(images) if images.dtype == torch.uint8 else images.float()).to(model.device)
    settings = SamplerSettings.resolve(model, "ddim", steps, spacing)
    sigmas = settings.walk(model)  # descending, ending at 0
    with torch.no_grad():
        if model.latent is not None:
            x0 = model.latent.encode(x0)
        unguided = plan(model, n, settings, guidance=Guidance(scale=1.0), prompts=[prompt])
        if "context" not in unguided.text.null():  # token ids: the encoder trains with the network
            raise no_encoder
        trajectory = [x0]  # z*_0 … z*_T in the sampler's space, ascending σ
        invert(unguided.denoiser, x0, sigmas=sigmas, cond=unguided.cond(range(n)),
               callback=lambda step: trajectory.append(step.x))
    trajectory = trajectory[::-1]  # z*_T … z*_0, the order of sampling
    job = plan(model, n, settings, guidance=Guidance(scale=guidance_scale), prompts=[prompt])
    null = job.text.null()["context"].to(model.device).float()  # (1, L, D), the empty caption's states
    job, tuned = _install(job, [null.expand(n, -1, -1).clone()] * (len(sigmas) - 1), list(range(n)))
    cond = job.cond(range(n))
    network = model.network
    requires = [p.requires_grad for p in network.parameters()]
    for p in network.parameters():
        p.requires_grad_(False)
    losses = []
    x = trajectory[0]
    try:
        for k in tqdm(range(len(sigmas) - 1), desc="null-text", disable=not progress):
            sigma, sigma_next, target = float(sigmas[k]), float(sigmas[k + 1]), trajectory[k + 1]
            # ∅_t starts from ∅_{t+1} (the empty caption's states at the first step)
            context = tuned.contexts[k - 1 if k else 0].detach().clone().requires_grad_(True)
            tuned.contexts[k] = context
            optimizer = torch.optim.Adam([context], lr=lr)
            for _ in range(inner_steps):
                loss = _miss(job, x, sigma, sigma_next, target, cond).mean()
                if not torch.isfinite(loss):
                    raise ValueError(f"null-text inversion diverged at step {k + 1} of {len(sigmas) - 1} (loss "
                                     f"{loss.item()}): lower the learning rate (lr, default 1e-2) or the scale")
                if loss.item() < tolerance:
                    break
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            tuned.contexts[k] = context.detach()
            with torch.no_grad():
                x = _ddim_step(job, x, sigma, sigma_next, cond)
                losses.append(float(((x - target) ** 2).mean()))
    finally:
        for p, flag in zip(network.parameters(), requires):
            p.requires_grad_(flag)
    noise = trajectory[0] / float(model.schedule.prior_std(sigmas[0]))
    return NullText(noise.detach(), torch.stack(tuned.contexts), settings.steps, settings.spacing,
                    float(guidance_scale), torch.tensor(losses))


def _ddim_step(job: GenerationPlan, x: Tensor, sigma: float, sigma_next: float, cond: dict) -> Tensor:
    """One deterministic DDIM step σ → σₙ in the sampler's space: x̂₀ + σₙ/σ·(x − x̂₀)."""
    denoised = job.denoiser(x, sigma, **cond)
    return denoised + (sigma_next / sigma) * (x - denoised)


def _miss(job: GenerationPlan, x: Tensor, sigma: float, sigma_next: float, target: Tensor, cond: dict) -> Tensor:
    """Per image: the mean squared distance of the guided DDIM step's result from the trajectory."""
    return (_ddim_step(job, x, sigma, sigma_next, cond) - target).pow(2).flatten(1).mean(1)
