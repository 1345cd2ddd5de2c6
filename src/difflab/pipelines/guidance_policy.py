"""Which guidance a sampling run uses, decided once: the class labels, the CFG weight and its
unconditional input (the null label, the empty caption or a negative prompt), classifier guidance.

The mechanisms themselves are in :mod:`difflab.guidance`; this module is the policy a loaded
checkpoint needs: what its defaults are, what it supports, and the one clear error otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..conditioning import TextConditioning
from ..denoiser import Denoiser
from ..guidance import GuidanceInputInterval, InstructPix2PixGuidance, guide, null_class_labels
from .loading import DiffusionModel, NoisyClassifierModel


@dataclass
class Guidance:
    """How to guide sampling (see :mod:`difflab.guidance`).

    Attributes:
        scale: classifier-free guidance weight w (1 = none; None = the checkpoint's default).
        rescale: Lin et al.'s guidance rescale φ (0 = off).
        interval: (σ_lo, σ_hi): apply CFG only at noise levels in this range (a guidance-distilled
            student: its w input is 1 outside it); None = the run's default (a student refined
            with an interval samples with it, every other run guides at every level).
        classifier: a noisy classifier for classifier guidance.
        classifier_scale: its gradient scale s (0 = none).
        classifier_mode: ``"epsilon"`` (ADM Algorithm 2) or ``"mean"`` (Algorithm 1, ddpm only);
            None picks Algorithm 1 for the ddpm sampler and Algorithm 2 otherwise.
        negative_prompt: a text model's unconditional input for CFG instead of the empty caption
            (None or ``""``: the empty caption the model was trained with).
        image_scale: an instruct-pix2pix model's image guidance s_I (None = the checkpoint's
            ``sample.image_guidance_scale``); ``scale`` is then its text guidance s_T.
    """

    scale: float | None = None
    rescale: float = 0.0
    interval: tuple[float, float] | None = None
    classifier: NoisyClassifierModel | None = None
    classifier_scale: float = 0.0
    classifier_mode: str | None = None
    negative_prompt: str | None = None
    image_scale: float | None = None


def class_names_of(model: DiffusionModel, guidance: Guidance) -> list[str]:
    """The classes a run draws: the model's, or for an unconditional model under classifier
    guidance, the classifier's."""
    return model.class_names or (guidance.classifier.class_names if guidance.classifier else [])


def class_labels_for(class_names: list[str], n: int, class_index: int | None,
                     labels: torch.Tensor | None = None) -> torch.Tensor | None:
    """Labels for n samples: one class, or every class in turn, or ``labels`` (one per sample);
    None without classes (an unconditional model with no classifier to guide it)."""
    if labels is not None:
        if class_index is not None:
            raise ValueError("give one class for all images (class_index) or one per image (labels), not both")
        labels = torch.as_tensor(labels, dtype=torch.long).cpu()
        if labels.shape != (n,) or not class_names or labels.min() < 0 or labels.max() >= len(class_names):
            raise ValueError(f"labels must be {n} class indices in 0..{len(class_names) - 1}" if class_names else
                             "this model is unconditional: it takes no class labels")
        return labels
    if not class_names:
        if class_index is not None:
            raise ValueError("this model is unconditional: it was not trained with class labels (drop --class, "
                             "or give a noisy classifier with --classifier to guide it)")
        return None
    if class_index is None:
        return torch.arange(n) % len(class_names)
    if not 0 <= class_index < len(class_names):
        raise ValueError(f"--class must be in 0..{len(class_names) - 1} ({', '.join(class_names)})")
    return torch.full((n,), class_index)


def guidance_scale(model: DiffusionModel, guidance: Guidance) -> float:
    """The CFG weight w sampling uses: ``guidance.scale``, or the checkpoint's default where the
    model supports CFG or takes w as an input (1 otherwise)."""
    if guidance.scale is not None:
        return guidance.scale
    record = model.record
    if record.takes_guidance_scale or (record.conditional and record.trained_with_label_dropout):
        return model.record.sample_defaults.get("guidance_scale", 1.0)
    return 1.0


def guidance_interval(model: DiffusionModel, guidance: Guidance) -> tuple[float, float] | None:
    """The guidance interval sampling uses: ``guidance.interval``, or the one a distilled student was
    refined with (``distill.guidance_interval``, recorded in its checkpoint)."""
    if guidance.interval is not None:
        return tuple(guidance.interval)
    recorded = (model.record.distilled or {}).get("guidance_interval")
    return tuple(recorded) if recorded is not None else None


def unconditional_text(text: TextConditioning | None, guidance: Guidance, scale: float) -> dict | None:
    """The text inputs of CFG's unconditional branch: the negative prompt's, else the empty
    caption's (batch 1; None for a model without text)."""
    negative = guidance.negative_prompt
    if text is None:
        if negative:
            raise ValueError("a negative prompt needs a text-conditioned model; this one has no text encoder")
        return None
    if negative and scale == 1.0:
        raise ValueError("a negative prompt acts through classifier-free guidance, which is off at guidance scale 1: "
                         "set --guidance-scale above 1")
    return text.encode([negative]) if negative else text.null()


def check_guidance(guidance: Guidance, scale: float) -> None:
    """One clear error for settings no guidance can use, whether or not CFG is on."""
    if not math.isfinite(scale):
        raise ValueError(f"the guidance scale must be a finite number, got {scale}")
    if not 0.0 <= guidance.rescale <= 1.0:
        raise ValueError(f"the guidance rescale must be in [0, 1] (0 = off, 0.7 is usual), got {guidance.rescale}")
    if guidance.interval is not None and not 0 <= guidance.interval[0] < guidance.interval[1]:
        raise ValueError(f"the guidance interval SIGMA_LO SIGMA_HI needs 0 <= lo < hi, got {guidance.interval}")
    if not math.isfinite(guidance.classifier_scale):
        raise ValueError(f"the classifier scale must be a finite number, got {guidance.classifier_scale}")


def uncontrolled_branch(uncond):
    """``uncond`` that also marks its rows as classifier-free guidance's unconditional branch for
    ControlNets in guess mode (``control_branch`` 0: no control there; :mod:`.controlnet`)."""

    def mapped(cond: dict) -> dict:
        out = uncond(cond)
        if "control_branch" in cond:
            out = {**out, "control_branch": torch.zeros_like(cond["control_branch"])}
        return out

    return mapped


def guided_denoiser(model: DiffusionModel, guidance: Guidance, method: str, text_uncond: dict | None = None,
                    threshold: float | None = None) -> Denoiser:
    """The checkpoint's denoiser with classifier-free and/or classifier guidance applied
    (``text_uncond``: the unconditional input of a text model, from :func:`unconditional_text`)."""
    scale = guidance_scale(model, guidance)
    check_guidance(guidance, scale)
    if model.record.distilled is not None:
        return distilled_denoiser(model, guidance, scale, threshold)
    if scale != 1.0:
        if not model.record.conditional:
            raise ValueError("classifier-free guidance needs a class- or text-conditional model; this one is "
                             "unconditional (use --classifier for classifier guidance instead)")
        if not model.record.trained_with_label_dropout:
            raise ValueError("this model was trained without label dropout (diffusion.cond_drop_prob = 0), so its "
                             "unconditional prediction is untrained; retrain with diffusion.cond_drop_prob=0.1 "
                             "or sample with --guidance-scale 1")
    if model.image_condition == "source":
        return instruct_pix2pix_denoiser(model, guidance, scale, text_uncond, threshold)
    if guidance.image_scale is not None:
        raise ValueError("image guidance (--image-guidance) steers an instruct-pix2pix model (trained with "
                         "diffusion.image_condition: source); this model has no image to guide by")
    classifier = guidance.classifier
    if classifier is not None:
        classifier.check_matches(model)
    mode = guidance.classifier_mode or ("mean" if method == "ddpm" else "epsilon")
    # the caption swapped for the unconditional one; any other input (an inpainting model's image) kept
    uncond = (lambda cond: {**cond, **text_uncond}) if text_uncond is not None else null_class_labels(model.num_classes)
    uncond = uncontrolled_branch(uncond)
    return guide(model.denoiser(threshold=threshold), scale=scale, uncond=uncond,
                 rescale=guidance.rescale, interval=guidance.interval,
                 classifier=classifier.network if classifier is not None else None,
                 classifier_scale=guidance.classifier_scale, classifier_mode=mode,
                 model_takes_labels=model.num_classes > 0)


def distilled_denoiser(model: DiffusionModel, guidance: Guidance, scale: float,
                       threshold: float | None = None) -> Denoiser:
    """A distilled student's denoiser (``difflab distill``): no guidance wrapper. A student distilled
    for guided sampling takes w as an input (:meth:`~.generate.GenerationPlan.cond` passes it), in
    the range it was trained on; one distilled without guidance samples at w = 1. A guidance
    interval sets the w input to 1 outside it (:class:`~difflab.guidance.GuidanceInputInterval`),
    where the student has learned w = 1: its range holds 1, or it was refined with an interval."""
    if guidance.classifier is not None or guidance.rescale:
        raise ValueError("a distilled run learned one guidance rule (its w input): drop --classifier and "
                         "--guidance-rescale")
    distilled = model.record.distilled
    bounds = distilled.get("guidance_range")
    if bounds is None and scale != 1.0:
        raise ValueError(f"this run was distilled without guidance (difflab distill without a guidance range): "
                         f"sample it at --guidance-scale 1, got {scale:g}")
    if bounds is not None and not bounds[0] <= scale <= bounds[1]:
        raise ValueError(f"this run was distilled for guidance scales in [{bounds[0]:g}, {bounds[1]:g}] (its w "
                         f"input): pick --guidance-scale in that range, got {scale:g}")
    denoiser = model.denoiser(threshold=threshold)
    if guidance.interval is None:
        return denoiser
    if bounds is None:
        raise ValueError("this run was distilled without guidance, so it has none to switch off: drop "
                         "--guidance-interval")
    if bounds[0] > 1 and distilled.get("guidance_interval") is None:
        raise ValueError(f"a guidance interval samples this student at w = 1 outside it, and it learned w in "
                         f"[{bounds[0]:g}, {bounds[1]:g}] only: drop --guidance-interval, or refine it with one "
                         "(difflab distill --method adversarial --guidance-interval SIGMA_LO SIGMA_HI)")
    return denoiser.with_model(GuidanceInputInterval(denoiser.model, guidance.interval, denoiser.schedule))


def instruct_pix2pix_denoiser(model: DiffusionModel, guidance: Guidance, text_scale: float, text_uncond: dict | None,
                              threshold: float | None = None) -> Denoiser:
    """An instruct-pix2pix model's denoiser under its two guidance scales (s_T = ``text_scale``,
    s_I = ``guidance.image_scale`` or the checkpoint's): :class:`~difflab.guidance.InstructPix2PixGuidance`."""
    if guidance.classifier is not None or guidance.rescale or guidance.interval:
        raise ValueError("an instruct-pix2pix model is guided by its image and text scales only: drop the classifier, "
                         "--guidance-rescale and --guidance-interval")
    if text_uncond is None:
        raise ValueError("an instruct-pix2pix model needs its instruction as text: it has no text encoder")
    image_scale = guidance.image_scale
    if image_scale is None:
        image_scale = model.record.sample_defaults.get("image_guidance_scale", 1.5)
    denoiser = model.denoiser(threshold=threshold)

    def image_uncond(cond: dict) -> dict:
        return {**cond, "concat": torch.zeros_like(cond["concat"])}

    guided = InstructPix2PixGuidance(denoiser.model, text_scale, image_scale,
                                     uncontrolled_branch(lambda cond: {**cond, **text_uncond}),
                                     uncontrolled_branch(image_uncond), learned_variance=model.learned_variance)
    return denoiser.with_model(guided)
