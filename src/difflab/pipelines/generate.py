"""Generate images from a loaded model: settings resolved once, then the one sampling path.

:func:`plan` resolves everything a run needs before any sampling — the sampler settings
(:class:`SamplerSettings`: arguments, else the checkpoint's defaults), the guidance (CFG weight,
its unconditional input, classifier guidance: :mod:`.guidance_policy`), the class labels, prompts
and seeds of every image — into a :class:`GenerationPlan`; :func:`generate` runs it batch by
batch. Every image i has its own seed and noise stream (:class:`~difflab.sampling.NoiseSource`:
its starting noise, then a stochastic sampler's noise), so it comes out the same in any batch, and
:meth:`GenerationPlan.image_record` is everything needed to make it again (the PNG text chunk,
``difflab sample --from-png``).

The application hooks (DESIGN.md, "How the applications plug in") are arguments of
:func:`generate`: ``x_start`` with ``strength`` or ``sigmas`` (start from data noised part way:
img2img, inversion round trips, cascades), ``noise`` (given starting noise, e.g. inverted), and
``callback`` (sees every step and may replace x: inpainting, editing, previews).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .. import __version__
from ..conditioning import TextConditioning
from ..data.convert import to_float, to_uint8
from ..denoiser import Denoiser
from ..device import precision_autocast
from ..image_condition import inpaint_condition, low_res_condition, source_condition
from ..sampling import (
    DEFAULT_METHOD,
    DEFAULT_STEPS,
    SPACINGS,
    NoiseSource,
    check_options,
    get_sigmas,
    sample,
    strength_tail,
)
from ..sampling.compiled import compile_denoiser
from ..sampling.consistency import consistency_levels
from ..sampling.repaint import repaint, repaint_sigmas
from ..sampling.spacing import default_spacing, fixed_strength_walk
from .controlnet import Control, ControlledNetwork, control_inputs, controlled_model
from .guidance_policy import (
    Guidance,
    class_labels_for,
    class_names_of,
    guidance_interval,
    guidance_scale,
    guided_denoiser,
    unconditional_text,
)
from .img2img import InitImages, check_strength, encode, pixel_shape
from .inpaint import Inpainting, blend_callback
from .inpaint_area import MaskedArea
from .loading import DiffusionModel
from .lora import lora_records


@dataclass
class SamplerSettings:
    """Method, steps, spacing (or explicit sigmas) and sampler options of a run, resolved once
    (:meth:`resolve`): each from the argument, else the checkpoint's ``sample`` section, else the
    library default; ``ddpm`` on a learned-variance model samples with its learned σ. A distilled
    student (``difflab distill``) has one setting: DDIM (η = 0) on the noise levels it was trained
    on (:func:`distilled_settings`)."""

    method: str
    steps: int
    spacing: str
    sigmas: Tensor | None = None
    options: dict = field(default_factory=dict)

    @classmethod
    def resolve(cls, model: DiffusionModel, method: str | None = None, steps: int | None = None,
                spacing: str | None = None, sigmas=None, **options) -> SamplerSettings:
        options = {key: value for key, value in options.items() if value is not None}
        if model.record.distilled is not None:  # before the defaults: they are the distilled grid's
            return distilled_settings(model.record.distilled, method, steps, spacing, sigmas, options)
        defaults = model.record.sample_defaults
        method = method or defaults.get("method", DEFAULT_METHOD)
        if method == "ddpm" and model.learned_variance:
            options.setdefault("variance", "learned")  # the variance the model was trained to predict
        check_options(method, options)
        if sigmas is not None:
            sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
            steps = len(sigmas) - 1
        steps = steps if steps is not None else defaults.get("steps", DEFAULT_STEPS)
        if steps < 1:
            raise ValueError(f"the number of steps must be at least 1, got {steps}")
        # The flag, else the run's config, else the measured rule for this schedule and step count.
        spacing = spacing or defaults.get("spacing") or default_spacing(model.schedule, steps)
        if spacing not in SPACINGS and not callable(spacing):
            raise ValueError(f"unknown step spacing {spacing!r}; choose one of: {', '.join(SPACINGS)}")
        return cls(method, steps, spacing, sigmas, options)

    def walk(self, model: DiffusionModel, strength: float | None = None, mode: str = "diffusers") -> Tensor:
        """The noise levels the solver walks; for img2img's ``strength`` in (0, 1] the tail of them:
        ``mode="diffusers"`` the last ⌊steps·strength⌋ steps of the walk
        (:func:`~difflab.sampling.strength_tail`), ``"fixed"`` exactly ``steps`` steps, the tail of
        a walk of ⌊steps/strength⌋ (:func:`~difflab.sampling.spacing.fixed_strength_walk`)."""
        check_strength(strength, mode)
        if strength is not None and mode == "fixed":
            if self.sigmas is not None:
                raise ValueError("the fixed strength convention needs a spacing to stretch, not explicit sigmas: "
                                 "use strength_mode='diffusers' (--strength-steps diffusers) with --sigmas")
            return fixed_strength_walk(model.schedule, self.steps, self.spacing, strength)
        sigmas = self.sigmas if self.sigmas is not None else get_sigmas(model.schedule, self.steps, self.spacing)
        return strength_tail(sigmas, strength) if strength is not None else sigmas


def distilled_settings(distilled: dict, method: str | None, steps: int | None, spacing, sigmas,
                       options: dict) -> SamplerSettings:
    """The only settings of a distilled student (``ModelRecord.distilled``). A progressive student:
    DDIM, η = 0, on exactly the noise levels it learned to jump between. A consistency student:
    multistep consistency sampling with any k of its N training levels (``--steps k``, k ≤ N;
    :func:`~difflab.sampling.consistency_levels`). Asking for the same (a PNG
    record's sigmas, the method by name, a step count it takes) is fine; anything else is one error
    naming what the run was distilled for."""
    consistency = distilled["method"] == "consistency"
    n, asked = distilled["steps"], []
    if steps is None and sigmas is not None:
        steps = len(sigmas) - 1  # a PNG record's levels say how many steps it took
    if steps is not None and steps != n:
        if consistency and 1 <= steps < len(distilled["levels"]):
            n = steps
        else:
            asked.append(f"--steps {steps}")
    grid = (torch.tensor(distilled["sigmas"], dtype=torch.float64) if n == distilled["steps"]
            else consistency_levels(distilled["levels"], n))
    if method not in (None, distilled["method"]):
        asked.append(f"--method {method}")
    if spacing not in (None, distilled["spacing"]):
        asked.append(f"--spacing {spacing}")
    if sigmas is not None and not torch.equal(torch.as_tensor(sigmas, dtype=torch.float64).cpu(), grid):
        asked.append("other noise levels (--sigmas)")
    asked += [f"{key}={value}" for key, value in options.items() if (key, value) != ("eta", 0) or consistency]
    if asked:
        if consistency:
            raise ValueError(f"this run was consistency-distilled on {len(distilled['levels']) - 1} noise levels "
                             "(difflab distill --method consistency): sample it with --method consistency and "
                             f"--steps 1 to {len(distilled['levels']) - 1}, or without sampler flags; got "
                             f"{', '.join(asked)}")
        teacher = distilled.get("teacher") or {}
        more = f"; its teacher {teacher['path']} samples with {teacher['steps']}" if teacher.get("path") else ""
        raise ValueError(f"this run was distilled for DDIM with {n} step{'s' * (n != 1)} on its own noise levels "
                         f"(difflab distill{more}): sample it with --method ddim --steps {n}, or without sampler "
                         f"flags; got {', '.join(asked)}")
    return SamplerSettings(distilled["method"], n, distilled["spacing"], grid, {})


@dataclass
class Edit:
    """What makes a run an edit of given images (docs/editing.md): the ``init`` images (img2img's
    start, inpainting's original), img2img's ``strength`` in [0, 1] with its step convention
    ``strength_mode`` (diffusers | fixed), and an :class:`~.inpaint.Inpainting` mask. Without a
    strength an inpainting starts from pure noise (strength 1). ``area``: inpainting only the
    masked area of larger images (:mod:`.inpaint_area`): ``init`` and the mask are then the crops
    at the model's size, and the results are pasted into ``area``'s full-size originals."""

    init: InitImages
    strength: float | None = None
    strength_mode: str = "diffusers"
    inpaint: Inpainting | None = None
    area: MaskedArea | None = None

    def __post_init__(self):
        check_strength(self.strength, self.strength_mode)
        if self.strength is None and self.inpaint is None:
            raise ValueError("an image-to-image run needs a strength in [0, 1] (--strength S)")
        if self.inpaint is not None and self.inpaint.mode == "repaint" and self.strength not in (None, 1, 1.0):
            raise ValueError("RePaint starts from pure noise: drop the strength (or give 1) with --inpaint repaint")

    def repeat_to(self, n: int) -> Edit:
        """The edit of n images: image i edits input i mod N (with mask i mod N)."""
        if len(self.init) != n and n % len(self.init) and len(self.init) > 1:
            raise ValueError(f"{len(self.init)} init images for {n} images: give one, or one per image")
        inpaint = self.inpaint.repeat_to(n) if self.inpaint is not None else None
        if inpaint is not None and len(self.inpaint.mask) not in (1, len(self.init), n):
            raise ValueError(f"{len(self.inpaint.mask)} masks for {len(self.init)} init images: give one, or one each")
        area = self.area.repeat_to(n) if self.area is not None else None
        return Edit(self.init.repeat_to(n), self.strength, self.strength_mode, inpaint, area)

    @property
    def level(self) -> float:
        return 1.0 if self.strength is None else float(self.strength)

    def record(self, i: int) -> dict:
        record = {"init_image": self.init.paths[i], "strength": self.strength,
                  "strength_mode": self.strength_mode if self.level not in (0.0, 1.0) else None}
        if self.inpaint is not None:
            record.update(self.inpaint.record())
        if self.area is not None:
            record.update(inpaint_area="masked", inpaint_padding=self.area.padding, mask_blur=self.area.blur or None)
        return record


@dataclass
class GenerationPlan:
    """Everything a run of n images needs, resolved before sampling: :func:`plan`."""

    model: DiffusionModel
    settings: SamplerSettings
    guidance: Guidance
    scale: float  # the CFG weight w in use
    denoiser: Denoiser  # guided (and compiled, if asked)
    labels: Tensor | None  # one per image (None: unconditional and unguided)
    labels_used: bool  # whether the network or an active classifier sees the labels
    text: TextConditioning | None
    prompts: list[str] | None  # one per image
    seeds: list[int]  # one per image
    threshold: float | None = None
    precision: str = "auto"
    edit: Edit | None = None  # img2img / inpainting (one init image per image)
    cond_images: InitImages | None = None  # a super-resolution model's low-resolution inputs, one per image
    aug_level: float = 0.0  # their noise-conditioning augmentation level
    controls: list[Control] = field(default_factory=list)  # ControlNets, each with one control image per image

    @property
    def device(self) -> torch.device:
        return self.model.device

    def cond(self, indices) -> dict:
        """The model's keyword arguments for the images of these indices (a list or a range)."""
        indices = list(indices)
        cond = {"class_labels": self.labels[indices].to(self.device)} if self.labels_used else {}
        if self.text is not None:
            cond.update(self.text.encode([self.prompts[i] for i in indices]))
        if self.model.image_condition == "inpaint":
            cond["concat"] = self.inpaint_inputs(indices)
        elif self.model.image_condition == "low_res":
            cond.update(self.low_res_inputs(indices))
        elif self.model.image_condition == "source":  # instruct-pix2pix: the images to edit
            pixels = to_float(self.cond_images.images[indices].to(self.device))
            cond["concat"] = source_condition(pixels, self.model.latent)
        if self.controls:
            cond.update(control_inputs(self.controls, indices, self.device))
        if self.model.record.takes_guidance_scale:  # a guidance-distilled student: w is an input, not CFG's 2 passes
            cond["guidance_scale"] = torch.full((len(indices),), float(self.scale), device=self.device)
        return cond

    def low_res_inputs(self, indices: list[int]) -> dict:
        """A super-resolution model's inputs for these images: each low-resolution image noised to
        the plan's augmentation level (ε from the image's own stream, seeded by its seed) and
        upsampled to the model's grid; the level as ``aug_level`` when the model takes it."""
        low_res = self.model.record.low_res
        low = to_float(self.cond_images.images[indices].to(self.device))
        noise = NoiseSource(seeds=[aug_seed(self.seeds[i]) for i in indices])(low)
        level = torch.full((len(indices),), float(self.aug_level), device=self.device)
        concat = low_res_condition(low, level, noise, tuple(self.model.image_shape[-2:]), low_res["upsample"])
        return {"concat": concat, **({"aug_level": level} if low_res["aug_max"] > 0 else {})}

    def inpaint_inputs(self, indices: list[int]) -> Tensor:
        """A mask-conditioned model's mask and masked image for these images: the edit's, or for
        generation without one an all-ones mask (everything repainted) and an empty image."""
        inpaint = self.edit.inpaint if self.edit is not None else None
        c, h, w = pixel_shape(self.model)
        if inpaint is not None:
            mask, pixels = inpaint.mask[indices], to_float(self.edit.init.images[indices])
        else:
            mask, pixels = torch.ones(len(indices), 1, h, w), torch.zeros(len(indices), c, h, w)
        return inpaint_condition(mask.to(self.device), pixels.to(self.device), self.model.latent)

    def image_record(self, i: int) -> dict:
        """The generation parameters of image i: what ``difflab sample --from-png`` needs to make
        it again (stored in every saved PNG's text chunk)."""
        model, settings, guidance = self.model, self.settings, self.guidance
        class_names = class_names_of(model, guidance)
        record = {
            "checkpoint": str(model.path) if model.path else None, "checkpoint_step": model.record.step,
            "prompt": self.prompts[i] if self.prompts else None,
            "negative_prompt": guidance.negative_prompt or None,
            "class": int(self.labels[i]) if self.labels is not None else None,
            "class_name": class_names[int(self.labels[i])] if self.labels is not None else None,
            "seed": self.seeds[i], "method": settings.method, "steps": settings.steps, "spacing": settings.spacing,
            "sigmas": settings.sigmas.tolist() if settings.sigmas is not None else None,
            "options": settings.options, "guidance_scale": self.scale, "guidance_rescale": guidance.rescale,
            "guidance_interval": list(guidance.interval) if guidance.interval else None,
            "classifier": str(guidance.classifier.path) if guidance.classifier and guidance.classifier.path else None,
            "classifier_scale": guidance.classifier_scale if guidance.classifier else None,
            "classifier_mode": guidance.classifier_mode, "threshold": self.threshold, "precision": self.precision,
            "size": list(model.record.image_shape), "difflab": __version__,
            "cond_image": self.cond_images.paths[i] if self.cond_images is not None else None,
            "aug_level": self.aug_level if self.model.image_condition == "low_res" else None,
            "image_guidance_scale": guidance.image_scale if self.model.image_condition == "source" else None,
            **(self.edit.record(i) if self.edit is not None else {}),
            "controlnets": [c.record(i) for c in self.controls] or None,
            "loras": lora_records(self.model),
            "embeddings": list(dict.fromkeys(str(e.path) for e in self.model.embeddings)) or None,
        }
        return {key: value for key, value in record.items() if value is not None}


def plan(model: DiffusionModel, n: int, settings: SamplerSettings, *, seed: int = 0, seeds: list[int] | None = None,
         class_index: int | None = None, guidance: Guidance | None = None, prompts: list[str] | None = None,
         threshold: float | None = None, precision: str = "auto", compile: bool = False,
         edit: Edit | None = None, cond_images: InitImages | None = None,
         aug_level: float | None = None, labels: Tensor | None = None, controls: list[Control] | None = None,
         force_controls: bool = False) -> GenerationPlan:
    """Resolve labels, prompts, seeds and the guided denoiser of n images (see :func:`generate`)."""
    if n < 1:
        raise ValueError(f"the number of images must be at least 1, got {n}")
    guidance = guidance or Guidance()
    guidance = dataclasses.replace(guidance, interval=guidance_interval(model, guidance))
    seeds = list(seeds) if seeds is not None else list(range(seed, seed + n))
    if len(seeds) != n:
        raise ValueError(f"got {len(seeds)} seeds for {n} images: give one seed per image")
    labels = class_labels_for(class_names_of(model, guidance), n, class_index, labels)
    text = None
    if model.text_encoder:
        if not prompts:
            raise ValueError("this model is text-conditioned: give a prompt (--prompt TEXT or --prompts FILE)")
        text = TextConditioning(model.text_encoder, model.device, [e.token for e in model.embeddings])
        prompts = [prompts[i % len(prompts)] for i in range(n)]
        for prompt, count in text.truncated(prompts).items():
            warnings.warn(f"the prompt {prompt!r} is {count} tokens and the text encoder reads {text.max_length}: "
                          f"the last {count - text.max_length} are cut off (shorten it)", stacklevel=2)
    elif prompts:
        raise ValueError("this model is not text-conditioned: it was trained without captions (drop --prompt)")
    controls = [c.repeat_to(n) for c in controls or []]
    if controls and model.record.distilled is not None:
        raise ValueError("this run is a distilled student (difflab distill), which no ControlNet was trained beside: "
                         "control its teacher instead")
    if controls:  # the base with its ControlNets, checked against them
        model = controlled_model(model, controls, text.null() if text is not None else None, force_controls)
    scale = guidance_scale(model, guidance)
    denoiser = guided_denoiser(model, guidance, settings.method, unconditional_text(text, guidance, scale), threshold)
    denoiser = compile_denoiser(denoiser) if compile else denoiser
    # An unconditional model sees labels only through an active classifier (s = 0: none at all).
    classifier_active = guidance.classifier is not None and guidance.classifier_scale != 0
    labels_used = labels is not None and (model.num_classes > 0 or classifier_active)
    edit = edit.repeat_to(n) if edit is not None else None
    if edit is not None and edit.inpaint is not None and edit.inpaint.mode == "model" and \
            model.image_condition != "inpaint":
        raise ValueError("this model was not trained for inpainting (diffusion.image_condition: inpaint): "
                         "use --inpaint blend or --inpaint repaint")
    if edit is not None:
        settings.walk(model, edit.strength if edit.level not in (0.0, 1.0) else None, edit.strength_mode)
    cond_images, aug_level = check_cond_images(model, n, cond_images, aug_level)
    return GenerationPlan(model, settings, guidance, scale, denoiser, labels, labels_used, text, prompts, seeds,
                          threshold, precision, edit, cond_images, aug_level, controls)


def aug_seed(seed: int) -> int:
    """The seed of image ``seed``'s noise-conditioning augmentation: its own stream."""
    return (int(seed) * 0x2545F491 + 0xA06) % (2**63)


def check_cond_images(model: DiffusionModel, n: int, cond_images: InitImages | None,
                      aug_level: float | None) -> tuple[InitImages | None, float]:
    """The conditioning images of n images (image i gets image i mod N) and the augmentation
    level (default: the checkpoint's ``sample.aug_level``); one clear error for a model that
    needs none or one that needs them."""
    if model.image_condition not in ("low_res", "source"):
        if cond_images is not None or aug_level is not None:
            raise ValueError("this model takes no conditioning image (it was trained without "
                             "diffusion.image_condition: low_res or source): drop --cond-image / --aug-level")
        return None, 0.0
    if model.image_condition == "source":
        if cond_images is None:
            raise ValueError("this is an instruct-pix2pix model: give the image to edit (--image IMG_OR_DIR, or "
                             "cond_image=...)")
        if aug_level is not None:
            raise ValueError("--aug-level is for super-resolution models; drop it")
        if len(cond_images) != n and (n % len(cond_images) and len(cond_images) > 1):
            raise ValueError(f"{len(cond_images)} images to edit for {n} images: give one, or one per image")
        return cond_images.repeat_to(n), 0.0
    if cond_images is None:
        raise ValueError(f"this is a super-resolution model: give the {model.record.low_res['size']}-pixel "
                         "low-resolution images to upsample (--cond-image IMG_OR_DIR, or cond_image=...)")
    if len(cond_images) != n and (n % len(cond_images) and len(cond_images) > 1):
        raise ValueError(f"{len(cond_images)} conditioning images for {n} images: give one, or one per image")
    level = model.record.sample_defaults.get("aug_level", 0.0) if aug_level is None else float(aug_level)
    if not 0.0 <= level <= 1.0:
        raise ValueError(f"the augmentation level must be in [0, 1] (0 = clean), got {level}")
    if level > 0 and not model.record.low_res["aug_max"]:
        raise ValueError("this model was trained without noise-conditioning augmentation (diffusion.aug_max = 0): "
                         "drop --aug-level")
    return cond_images.repeat_to(n), level


@dataclass
class Generated:
    """What :func:`run` returns: uint8 images (N, C, H, W), their class labels (None if
    unconditional and unguided) and, per image, its generation record (the PNG text chunk)."""

    images: Tensor
    labels: Tensor | None
    records: list[dict]

    def grid_record(self) -> dict:
        """The record of a grid of these images (see :func:`grid_record`)."""
        return grid_record(self.records[0], [r["seed"] for r in self.records])


# what differs between the images of one run
PER_IMAGE_KEYS = ("seed", "prompt", "class", "class_name", "init_image", "cond_image")


def grid_record(first: dict, seeds: list[int]) -> dict:
    """The record of a grid: the first image's record less what differs per image, and every
    shown image's seed."""
    return {**{key: value for key, value in first.items() if key not in PER_IMAGE_KEYS}, "seeds": list(seeds)}


def batches(job: GenerationPlan, *, batch_size: int = 256, indices: list[int] | None = None, progress: bool = False,
            noise: Tensor | None = None, x_start: Tensor | None = None, strength: float | None = None,
            strength_mode: str = "diffusers", callback=None) -> Iterator[tuple[list[int], Tensor]]:
    """Sample the plan's images batch by batch: yields (image indices, their uint8 images) as each
    batch finishes, so a caller can write them before the next one (``difflab sample`` streams
    them to disk and resumes by skipping the indices it has). ``indices``: which of the plan's
    images to make (default: all); ``noise`` and ``x_start`` are given for all of the plan's
    images. See :func:`generate` for the rest.

    A plan with an :class:`Edit` uses these same hooks: its init images (encoded) are ``x_start``,
    its strength and convention choose the walk, and its mask adds the blend callback (or runs
    :func:`~difflab.sampling.repaint.repaint` instead of the solver) and the paste-back."""
    model, n, edit = job.model, len(job.seeds), job.edit
    if batch_size < 1:
        raise ValueError(f"the batch size must be at least 1, got {batch_size}")
    autocast = precision_autocast(job.precision, model.device)  # checks the precision before any work
    if edit is not None:
        if x_start is not None or strength is not None:
            raise ValueError("give the init images and strength once: in the plan's edit or as x_start/strength")
        strength, strength_mode = edit.level, edit.strength_mode
    check_strength(strength, strength_mode)
    # strength 1 is text-to-image (pure noise, the whole walk); 0 is the input, no step at all
    partial = strength is not None and 0.0 < strength < 1.0
    inpaint = edit.inpaint if edit is not None else None
    if inpaint is not None and inpaint.mode == "repaint":
        if job.settings.sigmas is not None:
            raise ValueError("RePaint walks its own up-and-down schedule: drop --sigmas")
        sigmas = repaint_sigmas(model.schedule, job.settings.steps, inpaint.jump_length, inpaint.resample)
    elif strength != 0.0:
        sigmas = job.settings.walk(model, strength if partial else None, strength_mode)
    if isinstance(model.network, ControlledNetwork) and strength != 0.0:  # the walk its windows count steps in
        model.network.walk = job.settings.walk(model) if inpaint is not None and inpaint.mode == "repaint" else sigmas
    if x_start is not None and strength is None and job.settings.sigmas is None:
        raise ValueError("x_start needs the level to start from: give strength (img2img) or sigmas")
    for name, given in (("noise", noise), ("x_start", x_start)):
        if given is not None and tuple(given.shape) != (n, *model.image_shape):
            raise ValueError(f"{name} must have shape {(n, *model.image_shape)} (the model's), "
                             f"got {tuple(given.shape)}")
    indices = list(range(n)) if indices is None else list(indices)
    starts = range(0, len(indices), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="sample", unit="batch")
    for start in starts:
        chunk = indices[start : start + batch_size]
        originals = edit.init.images[chunk] if edit is not None else None
        if strength == 0.0 or (inpaint is not None and not bool((inpaint.mask[chunk] > 0).any())):
            if edit is not None and edit.area is not None:
                originals = edit.area.originals[chunk]  # the full-size inputs
            yield chunk, _unchanged(model, originals, x_start, chunk)  # the input itself: no step runs
            continue
        source = NoiseSource(seeds=[job.seeds[i] for i in chunk])
        like = torch.empty((len(chunk), *model.image_shape), device=model.device)
        x_T = source(like)  # each image's first draw is its start, drawn even when `noise` replaces it,
        if noise is not None:  # so its stochastic noise is the same either way
            x_T = noise[chunk].to(model.device)
        if edit is not None:
            x0 = encode(model, originals)
        else:
            x0 = x_start[chunk].to(model.device) if x_start is not None else None
        step_callback, mask = callback, None
        if inpaint is not None:
            mask = inpaint.model_mask(model, chunk)
            if inpaint.mode == "blend":
                step_callback = blend_callback(x0, mask, [job.seeds[i] for i in chunk], callback)
        with autocast:
            if inpaint is not None and inpaint.mode == "repaint":
                x = x_T * float(model.schedule.prior_std(sigmas[0]))
                x = repaint(job.denoiser.bind(**job.cond(chunk)), x, sigmas, known=x0, mask=mask, eta=inpaint.eta,
                            noise_source=source, callback=callback)
            else:
                x = sample(job.denoiser, x_T, sigmas=sigmas, method=job.settings.method, cond=job.cond(chunk),
                           noise_source=source, x_start=x0 if partial or strength is None else None,
                           callback=step_callback, **job.settings.options)
        if model.latent is not None:
            x = model.latent.decode(x)
        images = to_uint8(x).cpu()
        if inpaint is not None and inpaint.paste_back:
            images = inpaint.paste(images, originals, chunk)
        if edit is not None and edit.area is not None:
            images = edit.area.paste(images, chunk)  # the crops back into the full-size images
        yield chunk, images


def _unchanged(model, originals: Tensor | None, x_start: Tensor | None, chunk: list[int]) -> Tensor:
    """Strength 0 (or an empty mask): the input images as they are (for ``x_start`` alone, decoded)."""
    if originals is not None:
        return originals.clone()
    x = x_start[chunk].to(model.device)
    return to_uint8(model.latent.decode(x) if model.latent is not None else x).cpu()


def run(job: GenerationPlan, **options) -> Generated:
    """All the plan's images at once (:func:`batches`' keyword arguments)."""
    images = torch.cat([images for _, images in batches(job, **options)])
    return Generated(images, job.labels, [job.image_record(i) for i in range(len(job.seeds))])


def generate(
    model: DiffusionModel,
    n: int,
    *,
    method: str | None = None,
    steps: int | None = None,
    spacing: str | None = None,
    sigmas=None,
    seed: int = 0,
    seeds: list[int] | None = None,
    class_index: int | None = None,
    labels: Tensor | None = None,
    guidance: Guidance | None = None,
    prompts: list[str] | None = None,
    negative_prompt: str | None = None,
    batch_size: int = 256,
    progress: bool = False,
    precision: str = "auto",
    compile: bool = False,
    threshold: float | None = None,
    noise: Tensor | None = None,
    x_start: Tensor | None = None,
    strength: float | None = None,
    strength_mode: str = "diffusers",
    callback=None,
    edit: Edit | None = None,
    cond_images: InitImages | None = None,
    aug_level: float | None = None,
    controls: list[Control] | None = None,
    force_controls: bool = False,
    null_text=None,
    **options,
) -> tuple[Tensor, Tensor | None]:
    """n samples as uint8 (N, C, H, W), with their class labels (None if unconditional and unguided);
    a latent model's samples are decoded by its autoencoder.

    Sample i uses its own seed, ``seed + i`` (or ``seeds[i]``), for its starting noise and any
    noise a stochastic sampler adds, so the images do not depend on the batch size.
    Method, steps, spacing and the guidance scale default to the checkpoint's ``sample`` section;
    ``sigmas`` (e.g. from ``difflab tune-steps``) overrides steps and spacing; ``**options`` are
    the sampler's (``eta`` for ddim, ``variance`` for ddpm — learned by default where the model
    learned it —, ``order`` …), ``threshold`` Imagen's dynamic thresholding of x̂₀ (pixel models).
    Classes come from the model, or from the classifier for an unconditional model under
    classifier guidance; without ``class_index`` every class is drawn in turn, and ``labels`` gives
    each image its own class (e.g. the true classes of images to upsample). A text-conditioned
    model needs ``prompts``; image i gets prompt i mod len(prompts); ``negative_prompt`` replaces
    the empty caption as CFG's unconditional input. ``precision``: the network's arithmetic,
    ``auto`` (bf16 autocast on a GPU, float32 on a CPU), ``bf16`` (bf16 autocast on either: 1.1–1.8×
    faster sampling on a CPU with avx512_bf16 or AMX, docs/sampling.md) or ``float32``; the solver
    and the autoencoder's decoding stay in float32. ``compile`` runs each step's model call through
    ``torch.compile`` (CUDA graphs on a GPU; :mod:`difflab.sampling.compiled`).

    Hooks: ``noise`` gives the starting noise (unit scale, e.g. from DDIM inversion);
    ``x_start`` (in the model's space: latents for a latent model) starts from data noised to the
    first level of the walk, ``strength`` in [0, 1] choosing the last ⌊steps·strength⌋ steps
    (img2img, diffusers' convention; ``strength_mode="fixed"``: exactly ``steps`` steps; 0 returns
    the input, 1 starts from pure noise); ``edit`` (:class:`Edit`) gives init images, strength and
    an inpainting mask instead (:mod:`.img2img`, :mod:`.inpaint`); ``callback(step)`` sees each
    :class:`~difflab.sampling.Step` of each batch and may return a replacement for ``step.x``.

    A super-resolution model needs ``cond_images`` (:func:`~.super_resolution.load_cond_images`:
    image i upsamples image i mod N) and takes ``aug_level``, the noise-conditioning augmentation
    level (default: the checkpoint's ``sample.aug_level``).

    ``controls``: ControlNets (:class:`~.controlnet.Control`: network, control images, scale,
    window, guess mode) whose residuals add up in the base U-Net; ``force_controls`` applies one
    whose recorded base weights differ from ``model``'s.

    ``null_text`` (:class:`~.null_text.NullText`, from :func:`~.null_text.null_text_inversion`)
    samples its images back under guidance: its noise (unless ``noise`` is given) and tuned
    unconditional contexts, in one batch; method, steps, spacing and scale must be its own.
    """
    if negative_prompt is not None:
        guidance = dataclasses.replace(guidance or Guidance(), negative_prompt=negative_prompt)
    settings = SamplerSettings.resolve(model, method, steps, spacing, sigmas, **options)
    job = plan(model, n, settings, seed=seed, seeds=seeds, class_index=class_index, labels=labels, guidance=guidance,
               prompts=prompts, threshold=threshold, precision=precision, compile=compile, edit=edit,
               cond_images=cond_images, aug_level=aug_level, controls=controls, force_controls=force_controls)
    if null_text is not None:
        from .null_text import sample_back

        job, batch_size, noise = sample_back(job, null_text), n, null_text.noise if noise is None else noise
    out = run(job, batch_size=batch_size, progress=progress, noise=noise, x_start=x_start, strength=strength,
              strength_mode=strength_mode, callback=callback)
    return out.images, out.labels
