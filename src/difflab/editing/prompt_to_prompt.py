"""Prompt-to-prompt editing (Hertz et al. 2022): a source prompt and its edit sampled together.

Each pair (source i, edit i) shares its starting noise (seed i's, or a DDIM inversion's) and the
sampler's noise; the n sources and n edits run in one batch ``[sources; edits]`` through the
plan's guided denoiser, with :class:`~difflab.editing.PromptToPromptControl` installed on the
network for that call only (and, for the first τ_f of the steps, the source's features of one U-Net
decoder block: :mod:`.feature_injection`). The controller learns the step from the noise level each model call
gets (any sampler; τ·T counts solver steps), through a thin wrapper around the model function:
nothing in the sampling path changes.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from ..models.unet import UNet
from ..pipelines.generate import SamplerSettings, batches, plan
from ..pipelines.guidance_policy import Guidance
from ..pipelines.loading import DiffusionModel
from ..pipelines.null_text import NullText, apply_null_text
from ..sampling.common import StepOfCall
from .attention_control import PromptToPromptControl, attention_controller, has_cross_attention
from .attention_maps import AttentionStore
from .feature_injection import feature_injection
from .local_blend import LocalBlend
from .tokens import prompt_tokens, token_map, word_positions

MODES = ("replace", "refine", "reweight")
DEFAULT_FEATURE_REPLACE = 0.2  # τ_f on a U-Net: the edit's layout held, its class still drawn (docs/editing.md)


class _StepTracker:
    """The model function, telling the controller the solver step of each call's noise level."""

    def __init__(self, model, schedule, sigmas: Tensor, control: PromptToPromptControl):
        self.model, self.control, self.step_of = model, control, StepOfCall(schedule, sigmas)

    def __call__(self, x_t: Tensor, t: Tensor, **cond) -> Tensor:
        self.control.step = self.step_of(t)
        return self.model(x_t, t, **cond)


def _on_step(callback, blend):
    """The sampler callback: the caller's, then local blend's (either may be None)."""
    if callback is None or blend is None:
        return callback or blend

    def both(step):
        replaced = callback(step)
        if replaced is not None:
            step = dataclasses.replace(step, x=replaced)
        blended = blend(step)
        return blended if blended is not None else replaced
    return both


def prompt_to_prompt(model: DiffusionModel, prompt: str, edit: str | None = None, *, mode: str = "replace",
                     reweight: dict[str, float] | None = None, cross_replace: float = 0.8, self_replace: float = 0.4,
                     feature_replace: float | None = None, n: int = 1, seed: int = 0, seeds: list[int] | None = None,
                     method: str = "ddim",
                     steps: int | None = None, spacing: str | None = None, guidance: Guidance | None = None,
                     noise: Tensor | None = None, blend_words: list[str] | None = None, blend_threshold: float = 0.3,
                     null_text: NullText | None = None, callback=None, attention_maps: bool = False,
                     **options) -> tuple[Tensor, Tensor, PromptToPromptControl]:
    """Sources and edits as uint8 (n, C, H, W) each, and the controller (its ``calls`` counts; its
    ``run``: the resolved settings, :func:`~difflab.editing.records.pair_records`'s arguments).

    Args:
        model: a text model with cross-attention (U-Net with ``context_dim``, DiT with cross-attention).
        prompt: the source prompt P; edit: the edited prompt P* (default: P, for reweighting).
        mode: ``replace`` (word swap, equal token counts), ``refine`` (added words: the aligned
            tokens take the source's maps) or ``reweight`` (refine's alignment, for use with ``reweight``).
        reweight: ``{word: scale}`` for words of the edit prompt (any mode).
        cross_replace, self_replace: the fractions τ_c, τ_s of the steps with the source's maps.
        feature_replace: the fraction τ_f of the steps in which the edit takes the source's
            decoder features (:mod:`.feature_injection`, beyond the paper); None: 0.2 on a U-Net
            (measured: docs/editing.md), 0 on a DiT; 0: the paper's prompt-to-prompt.
        n, seed, seeds: n pairs (default with ``noise``: one per noise), pair i from seed ``seed + i``
            (or ``seeds[i]``).
        method, steps, spacing, guidance, options: the sampler and guidance, as for ``generate``.
        noise: (n, C, H, W) starting noise for the pairs, e.g. ``invert_images`` of real images.
        blend_words: local blend (:mod:`.local_blend`): the edit changes only where these words
            (looked up in both prompts) are drawn; blend_threshold: its mask's threshold.
        null_text: edit real images under guidance: a
            :func:`~difflab.pipelines.null_text.null_text_inversion` of them (with ``prompt``); its
            noise starts the pairs and both rows of pair i take image i's tuned unconditional
            contexts. Steps, spacing and guidance default to its own (DDIM).
        attention_maps: keep every token's average cross-attention map (sources' and edits' rows)
            in ``control.store`` (:mod:`.attention_maps`; ``control.store.maps()``).
        callback: ``callback(step)`` after each sampler step (progress, cancellation by raising),
            as for ``generate``; a returned tensor replaces the state (before local blend).

    Raises:
        ValueError: a model without cross-attention or text conditioning, an unknown mode, replace
            with different token counts, a reweighted word not in the edit prompt, a fraction
            outside [0, 1], feature injection on a DiT.
    """
    if not has_cross_attention(model.network) or not model.text_encoder:
        kind = "class-conditional" if model.num_classes else "unconditional"
        raise ValueError(f"prompt-to-prompt edits the cross-attention to a prompt, and this model has none "
                         f"({kind}, no text encoder): train a text model (model.text_encoder, e.g. "
                         "configs with data.text_conditional=true)")
    if mode not in MODES:
        raise ValueError(f"unknown prompt-to-prompt mode {mode!r}; choose one of: {', '.join(MODES)}")
    edit = prompt if edit is None else edit
    if null_text is not None:
        method, steps, spacing, guidance, noise = null_text.fill(method, steps, spacing, guidance, noise)
    if seeds is None:
        seeds = list(range(seed, seed + (len(noise) if noise is not None else n)))
    n = len(seeds)
    settings = SamplerSettings.resolve(model, method, steps, spacing, **options)
    job = plan(model, 2 * n, settings, seeds=seeds + seeds, guidance=guidance, prompts=[prompt] * n + [edit] * n)
    if null_text is not None:
        job = apply_null_text(job, null_text, list(range(n)) * 2)
    tokens = token_map(job.text, prompt, edit, mode, reweight)
    if feature_replace is None:
        feature_replace = DEFAULT_FEATURE_REPLACE if isinstance(model.network, UNet) else 0.0
    control = PromptToPromptControl(n, tokens, settings.steps, cross_replace, self_replace, feature_replace)
    if blend_words:
        control.blend = LocalBlend(n, word_positions(job.text, prompt, blend_words),
                                   word_positions(job.text, edit, blend_words), settings.steps, blend_threshold)
    if attention_maps:
        control.store = AttentionStore(2 * n, tuple(model.image_shape[-2:]),
                                       [prompt_tokens(job.text, prompt), prompt_tokens(job.text, edit)])
    sigmas = settings.walk(model)
    denoiser = job.denoiser
    job = dataclasses.replace(job, denoiser=denoiser.with_model(_StepTracker(denoiser.model, denoiser.schedule,
                                                                              sigmas, control)))
    if noise is not None:
        if tuple(noise.shape) != (n, *model.image_shape):
            raise ValueError(f"the noise must have shape {(n, *model.image_shape)} (one per pair), "
                             f"got {tuple(noise.shape)}")
        noise = torch.cat([noise, noise])
    # what the pairs were made with: their PNG records (:func:`.records.pair_records`)
    control.run = dict(prompt=prompt, edit=edit, seeds=seeds, method=settings.method, steps=settings.steps,
                       spacing=settings.spacing, guidance_scale=job.scale, mode=mode, reweight=reweight,
                       cross_replace=cross_replace, self_replace=self_replace, feature_replace=feature_replace,
                       blend_words=blend_words, blend_threshold=blend_threshold, real_image=noise is not None)
    with attention_controller(model.network, control), feature_injection(model.network, control):
        images = torch.cat([images for _, images in batches(job, batch_size=2 * n, noise=noise,
                                                             callback=_on_step(callback, control.blend))])
    return images[:n], images[n:], control
