"""Training configuration: typed dataclasses loaded from a YAML file and overridden from the CLI.

A config file has one mapping per section below; every key is optional and defaults as shown.
``--set optim.lr=3e-4`` (values parsed as YAML, so numbers, booleans and lists work) overrides a
key. An unknown section or key, or a value of the wrong type, is one clear error that names it.
The resolved config is saved in every checkpoint's ``config.json``.

:func:`validate` checks every value's range (``RULES``) when a config is loaded and again when
training starts, so a mistake — ``train.steps=0``, ``sample.method=unipc3``,
``diffusion.cond_drop_prob=2`` — is one :class:`ConfigError` naming the key, the value and the
allowed range before any data is loaded, not a traceback (or lost work) later.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from ..image_condition import IMAGE_CONDITIONS, UPSAMPLING
from ..losses import LOSSES, T_SAMPLINGS, WEIGHTINGS, resolve_loss
from ..masks import MAKERS as MASK_KINDS
from ..process import PREDICTION_TYPES
from ..sampling.sample import DEFAULT_METHOD, DEFAULT_SPACING, DEFAULT_STEPS, SAMPLERS
from ..sampling.spacing import SPACINGS
from ..schedules import get_schedule
from .lr_schedule import LR_SCHEDULES


class ConfigError(ValueError):
    """A config file or override is wrong; the message says which key and how to fix it."""


@dataclass
class DataConfig:
    dataset: str = "digits"  # a built-in name (digits, fashion-mnist, emoji) or a folder of images
    split: str = "train"
    resolution: int | None = None  # square side in pixels; None keeps the dataset's
    channels: int | None = None  # 1 or 3; None keeps the dataset's
    hflip: bool = False  # random horizontal flips
    random_crop: int | None = None  # autoencoders: train on random crops of this side (LDM's first stages)
    random_placement: tuple | None = None  # [min, max]: each image shrunk by s ~ U(min, max) and placed at random
                                           # (in pixels, before a latent encoding; ControlNet controls follow)
    class_conditional: bool = False  # condition on the dataset's class labels
    text_conditional: bool = False  # condition on the dataset's captions (model.text_encoder)
    autoencoder: str | None = None  # latent diffusion: a `difflab train-autoencoder` run to train in the latents of
    latent_cache: bool = True  # encode the dataset once (True) or every batch on the fly (False)
    exclude_classes: tuple = ()  # class names left out of training (e.g. [ankle boot]: a class to personalise later)
    # each image this many times per epoch: batches larger than a handful of pictures (personalisation;
    # diffusers' --repeats, kohya's "10_sks" folders), each copy with its own noise and flips
    repeats: int = 1


@dataclass
class ModelConfig:
    name: str = "unet"
    preset: str | None = None  # a preset of the model; options override its fields
    options: dict = field(default_factory=dict)
    # For data.text_conditional: {"name": "minilm"} (frozen all-MiniLM-L6-v2) or {"name": "small",
    # "dim": 256, "layers": 4, "heads": 4, "max_length": 77} (trained with the model; its
    # vocabulary is built from the training captions). See difflab.conditioning.
    text_encoder: dict = field(default_factory=lambda: {"name": "minilm", "max_length": 32})


@dataclass
class DiffusionConfig:
    schedule: str = "cosine"
    schedule_options: dict = field(default_factory=dict)
    prediction: str = "epsilon"  # epsilon | x0 | v
    weighting: str = "uniform"  # uniform | min_snr | p2
    min_snr_gamma: float = 5.0
    learned_variance: bool = False  # improved DDPM's learned Σ (2×C output channels)
    vlb_weight: float = 0.001  # λ of the hybrid loss
    # simple | hybrid | vlb (losses.diffusion_loss); null: hybrid with learned_variance, else simple
    loss: str | None = None
    # uniform | importance: t drawn ∝ √E[L_t²] of the last 10 values per t (improved DDPM §3.3;
    # the history is saved with checkpoints; a discrete schedule; meant for loss: vlb) | lognormal:
    # EDM's log-normal noise levels, ln σ ~ N(−1.2, 1.2²), on any schedule (losses.sample_lognormal_t)
    t_sampling: str = "uniform"
    cond_drop_prob: float = 0.0  # classifier-free guidance: drop the class / caption this often
    # An image concatenated to the network's input (difflab.image_condition): "inpaint" trains a
    # mask-conditioned inpainting model on random masks, drawn with the weights of inpaint_masks
    # (null: box 0.35, strokes 0.35, border 0.2, full 0.1; difflab.masks).
    image_condition: str | None = None
    inpaint_masks: dict | None = None
    # image_condition: low_res (super-resolution): the low-resolution side the training pairs are
    # area-downsampled to, how it is upsampled to the network's grid, and the largest level of
    # noise-conditioning augmentation (0: off; Ho et al. use up to ~0.5-ish levels).
    low_res: int | None = None
    low_res_upsample: str = "bicubic"
    aug_max: float = 0.0


@dataclass
class AutoencoderLossConfig:
    """The autoencoders' objective (model.name autoencoder_kl / autoencoder_vq; docs/autoencoders.md):
    l1_weight·|x − x̂| + l2_weight·(x − x̂)² averaged over pixels, + kl_weight·KL/(C·H·W) (KL) or
    + the commitment loss (VQ; β is the model's). Per pixel, so kl_weight means what LDM's does."""

    l1_weight: float = 1.0
    l2_weight: float = 0.0
    kl_weight: float = 1e-6  # LDM's KL autoencoders
    scale_images: int = 1024  # training images for the latent scale 1/std(z), estimated after training
    eval_split: str = "test"  # held-out images for the final reconstruction PSNR
    eval_images: int = 1024


@dataclass
class OptimConfig:
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    warmup_steps: int = 0
    # after warm-up: constant | cosine | linear decay to min_lr_fraction·lr at train.steps
    lr_schedule: str = "constant"
    min_lr_fraction: float = 0.0
    grad_clip: float | None = 1.0
    batch_size: int = 128  # global batch per optimizer step, over all processes
    grad_accum: int = 1  # micro-batches per step (memory, not maths)


@dataclass
class TrainConfig:
    steps: int = 1000
    # stop early after this much training time (the clock starts after step 1: compilation excluded)
    max_seconds: float | None = None
    seed: int = 0
    ema_decay: float = 0.9999
    ema_warmup: bool = True  # decay min(ema_decay, (1 + step)/(10 + step))
    # post-hoc EMA (Karras et al. 2024; training/posthoc_ema.py): every this many steps, save
    # power-function averages of these relative widths, from which `difflab posthoc-ema` makes the
    # average of any other width afterwards. 0: off
    posthoc_ema_every: int = 0
    posthoc_ema_sigma_rels: tuple = (0.05, 0.10)
    bf16: bool = True  # bf16 autocast on GPU
    bf16_cpu: bool = False  # bf16 autocast on CPU too (~1.3x faster with avx512_bf16 or AMX, slower without)
    compile: bool = False  # torch.compile the model
    channels_last: bool = True  # channels-last (NHWC) memory format (training/fast_paths.py)
    log_every: int = 50
    sample_every: int = 1000  # preview grids from the EMA weights; 0 disables
    checkpoint_every: int = 1000
    num_preview: int = 64
    out_dir: str = "runs/run"
    device: str = "auto"  # auto | cpu | cuda
    # After training, fit the sampler's noise levels to the model at these step counts (as
    # `difflab tune-steps`; sample/eval/Pipeline use them). null: sample.steps and 10; []: off
    tune_steps: tuple | None = None
    # the tuning's wall-clock budget; null: a tenth of the training's time, skipped under 20 s
    tune_seconds: float | None = None


@dataclass
class SampleConfig:
    """How previews (and, by default, ``difflab sample``) draw samples."""

    method: str = DEFAULT_METHOD
    steps: int = DEFAULT_STEPS
    spacing: str = DEFAULT_SPACING
    guidance_scale: float = 1.0  # classifier-free guidance weight (needs diffusion.cond_drop_prob > 0)
    aug_level: float = 0.0  # a super-resolution model's noise-conditioning augmentation level at sampling
    image_guidance_scale: float = 1.5  # an instruct-pix2pix model's image guidance s_I


@dataclass
class ControlNetSection:
    """A ControlNet run (``difflab train-controlnet CONFIG --base RUN``; docs/controlnet.md)."""

    base: str | None = None  # the frozen base run (a difflab diffusion run with a U-Net); --base sets it
    control: dict = field(default_factory=lambda: {"kind": "canny"})  # difflab.controls: kind and its options
    hint_widths: tuple = (16, 32, 64)  # the hint encoder's widths
    prompt_drop: float = 0.5  # the paper's 50% empty prompts (the null label for a class-conditional base)
    unlock_decoder: bool = False  # the reference's sd_locked: false: also train a copy of the base's decoder
    copy_depth: int = 0  # a DiT base's blocks copied into the control branch (0: half its depth)
    control_scale: float = 1.0  # the sampling default of the checkpoint (and of the previews)


@dataclass
class LoraSection:
    """A LoRA run (``difflab train-lora CONFIG --base RUN --images DIR --prompt TEXT``; docs/personalisation.md)."""

    base: str | None = None  # the frozen base run; --base sets it
    prompt: str | None = None  # the caption of every training image (a text model); --prompt sets it
    class_name: str | None = None  # the class of every training image (a class-conditional model); --class
    rank: int = 4
    alpha: float | None = None  # null: alpha = rank (scale 1)
    targets: tuple = ("*.attn.qkv", "*.attn.proj", "*.cross.q", "*.cross.kv", "*.cross.proj")
    dropout: float = 0.0
    rslora: bool = False  # scale alpha / sqrt(rank)


@dataclass
class DreamBoothSection:
    """A DreamBooth run (``difflab train-dreambooth CONFIG --base RUN --images DIR --instance-prompt ...
    --class-prompt ...``; docs/personalisation.md)."""

    base: str | None = None  # the base run; --base sets it
    instance_prompt: str | None = None  # the subject's prompt with its rare token, e.g. "a photo of a sks boot"
    class_prompt: str | None = None  # the prior's prompt, e.g. "a photo of a boot" (null: no prior preservation)
    class_name: str | None = None  # a class-conditional base: the subject's class
    prior_images: int = 100  # class images the frozen base generates (once; cached in train.out_dir/class-images)
    prior_weight: float = 1.0  # lambda of mse_instance + lambda * mse_prior
    lora: bool = False  # train LoRA adapters (the lora section's rank, alpha, targets) instead of the whole model


@dataclass
class EmbeddingSection:
    """A textual-inversion run (``difflab train-embedding CONFIG --base RUN --images DIR --prompt ... --word ...``;
    docs/personalisation.md)."""

    base: str | None = None  # the frozen base run (a text model); --base sets it
    prompt: str | None = None  # the training images' prompt, holding the new word, e.g. "a photo of a sks boot"
    word: str = "sks"  # the new word (lowercase letters and digits, not in the vocabulary)
    initializer: str | None = None  # a known word whose embedding starts the vectors, e.g. "boot"
    num_vectors: int = 1  # vectors (tokens) the new word stands for


DISTILL_METHODS = ("progressive", "consistency", "adversarial")  # distill.method, and difflab distill --method
DISCRIMINATORS = ("pixel", "teacher")  # distill.discriminator, and difflab distill --discriminator


@dataclass
class DistillSection:
    """One round of progressive distillation, or consistency distillation (``difflab distill RUN
    --steps N [--method consistency]``; docs/distillation.md)."""

    teacher: str | None = None  # the frozen teacher run (a difflab diffusion run, or the previous round's student)
    method: str = "progressive"  # progressive (Salimans & Ho 2022) | consistency (Song et al. 2023)
    # progressive: the student's DDIM steps (the teacher takes two for each); consistency: the student's
    # default number of sampling steps (any of 1..levels works)
    steps: int = 4
    spacing: str = "trailing"  # the teacher's grid when it is not itself distilled (its own grid otherwise)
    levels: int = 40  # consistency: the N noise levels of the teacher's ODE discretisation (CM's N)
    target_ema: float = 0.95  # consistency: the target network's EMA rate μ (Song et al. 2023, CD)
    huber_c: float | None = None  # consistency: the pseudo-Huber loss's c (null: 0.00054·√dims, Song & Dhariwal 2023)
    # the guidance weights w the student learns as an input, drawn uniformly (a class-conditional teacher
    # trained with label dropout; null: distil the unguided sampler)
    guidance_range: tuple | None = (1.0, 5.0)
    # adversarial: the student's w input is 1 outside these noise levels (sigma_lo, sigma_hi] as it samples
    # with gradients (a guidance interval, Kynkäänniemi et al. 2024), and the result samples so by default
    guidance_interval: tuple | None = None
    # adversarial (a progressive student refined against real images; training/objectives/adversarial.py)
    adversarial_weight: float = 0.1  # λ of the generator's adversarial term, beside the regression to the student
    # weight of the auxiliary classifier's cross-entropy on generated images, times (w − 1): the guidance tilt
    classifier_weight: float = 0.1
    instance_noise: float = 0.0  # std of the noise added to the discriminator's real and generated inputs
    # pixel: a projection discriminator trained from scratch on the images; teacher: projection heads on the
    # frozen student's encoder features at a random noise level (LADD, Sauer et al. 2024)
    discriminator: str = "pixel"
    discriminator_channels: int = 64  # pixel: its first width (it doubles, up to 4x); teacher: its heads' width
    discriminator_lr: float = 2e-4  # its Adam learning rate (β = (0, 0.99))
    regression_weight: float = 1.0  # of the regression to the frozen student's samples (0: DMD2, no regression)
    # of DMD's distribution-matching term (Yin et al. 2024): the teacher's guided denoiser against a "fake"
    # denoiser trained online on the generator's samples (0: off)
    distribution_weight: float = 0.0
    fake_score_lr: float = 1e-4  # the fake denoiser's Adam learning rate
    fake_score_steps: int = 1  # its optimizer steps per generator step (DMD2's two time-scale rule: 5)
    distribution_warmup: int = 0  # F's own steps on G's samples before G's first step (F starts at the teacher)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    autoencoder: AutoencoderLossConfig = field(default_factory=AutoencoderLossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    controlnet: ControlNetSection = field(default_factory=ControlNetSection)
    lora: LoraSection = field(default_factory=LoraSection)
    dreambooth: DreamBoothSection = field(default_factory=DreamBoothSection)
    embedding: EmbeddingSection = field(default_factory=EmbeddingSection)
    distill: DistillSection = field(default_factory=DistillSection)

    def to_dict(self) -> dict:
        return asdict(self)


def _is_float_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _accepts(annotation, value) -> tuple[bool, object]:
    """Whether ``value`` fits the annotation. Ints are accepted for floats, and so are strings
    like ``1e-3`` (YAML 1.1 reads a float without a dot as a string)."""
    hint = eval(annotation, vars(typing), {}) if isinstance(annotation, str) else annotation
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for option in options:
        if option is type(None) and value is None:
            return True, value
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if option is float and isinstance(value, str) and _is_float_text(value):
            return True, float(value)
        if option is tuple and isinstance(value, (list, tuple)):
            return True, tuple(value)
        if option in (int, str, bool, dict) and type(value) is option:
            return True, value
    return False, value


def _build(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"config section {where!r} must be a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"unknown config key '{where}.{key}'; valid keys in {where}: {', '.join(fields)}")
        ok, value = _accepts(fields[key].type, value)
        if not ok:
            raise ConfigError(f"config key '{where}.{key}' must be of type {fields[key].type}, got {value!r}")
        kwargs[key] = value
    return cls(**kwargs)


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


def config_from_dict(raw: dict) -> Config:
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError("a config file must hold a mapping of sections "
                          "(data, model, diffusion, optim, train, sample)")
    unknown = [k for k in raw if k not in SECTIONS]
    if unknown:
        raise ConfigError(f"unknown config section {unknown[0]!r}; valid sections: {', '.join(SECTIONS)}")
    classes = {name: globals()[t] if isinstance(t, str) else t for name, t in SECTIONS.items()}
    return validate(Config(**{name: _build(classes[name], raw.get(name) or {}, name) for name in SECTIONS}))


# -- ranges ------------------------------------------------------------------------------------
def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _text(v) -> bool:
    return isinstance(v, str) and bool(v.strip()) and "\0" not in v  # a NUL cannot be in a path


def _at_least(low: int) -> Callable[[object], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _between(low: float, high: float, *, open_high: bool = False, open_low: bool = False):
    return lambda v: _number(v) and (v > low if open_low else v >= low) and (v < high if open_high else v <= high)


def _optional(check):
    return lambda v: v is None or check(v)


def _scale_range(v) -> bool:
    numbers = len(v) == 2 and all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in v)
    return numbers and 0 < v[0] <= v[1] <= 1


def _mask_mix(mix) -> bool:
    weights = list(mix.values())
    valid = bool(mix) and set(mix) <= set(MASK_KINDS) and all(_number(w) and w >= 0 for w in weights)
    return valid and sum(weights) > 0


_MAX_SIDE = 4096  # pixels: a larger square is a typo, and would be allocated for every image before training

# key → (check, the allowed values in words). Types are checked first (the dataclass annotations).
RULES: dict[str, tuple[Callable[[object], bool], str]] = {
    "data.dataset": (_text, "a built-in name (digits, fashion-mnist, emoji) or a folder"),
    "data.split": (_text, "a split name such as train or test"),
    "data.resolution": (_optional(_between(1, _MAX_SIDE)), f"between 1 and {_MAX_SIDE}, or null (the dataset's own)"),
    "data.channels": (lambda v: v in (None, 1, 3) and not isinstance(v, bool), "1, 3 or null (the dataset's own)"),
    "data.exclude_classes": (lambda v: all(isinstance(name, str) for name in v), "a list of class names"),
    "data.repeats": (_between(1, 100_000), "a whole number >= 1"),
    "data.random_crop": (_optional(_between(1, _MAX_SIDE)), f"between 1 and {_MAX_SIDE}, or null (no crops)"),
    "data.random_placement": (_optional(_scale_range), "two scales [min, max] with 0 < min <= max <= 1, or null"),
    "data.autoencoder": (_optional(_text), "the folder of a `difflab train-autoencoder` run, or null"),
    "model.name": (_text, "a model name (unet, dit, noisy_classifier, autoencoder_kl, autoencoder_vq)"),
    "model.preset": (_optional(_text), "a preset name of the model, or null"),
    "diffusion.prediction": (lambda v: v in PREDICTION_TYPES, "one of " + ", ".join(PREDICTION_TYPES)),
    "diffusion.weighting": (lambda v: v in WEIGHTINGS, "one of " + ", ".join(WEIGHTINGS)),
    "diffusion.min_snr_gamma": (_between(0, math.inf, open_low=True, open_high=True), "a finite number > 0"),
    "diffusion.vlb_weight": (_between(0, math.inf, open_high=True), "a finite number >= 0"),
    "diffusion.loss": (lambda v: v is None or v in LOSSES, "null or one of " + ", ".join(LOSSES)),
    "diffusion.t_sampling": (lambda v: v in T_SAMPLINGS, "one of " + ", ".join(T_SAMPLINGS)),
    "diffusion.cond_drop_prob": (_between(0, 1, open_high=True), "in [0, 1)"),
    "diffusion.image_condition": (lambda v: v is None or v in IMAGE_CONDITIONS,
                                  "null or one of " + ", ".join(IMAGE_CONDITIONS)),
    "diffusion.low_res": (_optional(_between(1, _MAX_SIDE)), f"between 1 and {_MAX_SIDE}, or null"),
    "diffusion.low_res_upsample": (lambda v: v in UPSAMPLING, "one of " + ", ".join(UPSAMPLING)),
    "diffusion.aug_max": (_between(0, 1), "in [0, 1] (0: no noise-conditioning augmentation)"),
    "sample.aug_level": (_between(0, 1), "in [0, 1]"),
    "sample.image_guidance_scale": (_number, "a finite number"),
    "diffusion.inpaint_masks": (lambda v: v is None or _mask_mix(v), "null or weights >= 0 (not all 0) of some of "
                                + ", ".join(MASK_KINDS) + ", e.g. {box: 1, strokes: 1}"),
    "autoencoder.l1_weight": (_between(0, math.inf, open_high=True), "a finite number >= 0"),
    "autoencoder.l2_weight": (_between(0, math.inf, open_high=True), "a finite number >= 0"),
    "autoencoder.kl_weight": (_between(0, math.inf, open_high=True), "a finite number >= 0"),
    "autoencoder.scale_images": (_at_least(1), "an integer >= 1"),
    "autoencoder.eval_split": (_text, "a split name such as test"),
    "autoencoder.eval_images": (_at_least(1), "an integer >= 1"),
    # 0 is allowed: it keeps the weights (tests/test_init_from.py copies weights with one step at lr 0)
    "optim.lr": (_between(0, math.inf, open_high=True), "a finite number >= 0"),
    "optim.weight_decay": (_between(0, math.inf, open_high=True), "a finite number >= 0"),
    "optim.betas": (lambda v: len(v) == 2 and all(_between(0, 1, open_high=True)(b) for b in v),
                    "two numbers in [0, 1), e.g. [0.9, 0.999]"),
    "optim.warmup_steps": (_at_least(0), "an integer >= 0"),
    "optim.lr_schedule": (lambda v: v in LR_SCHEDULES, "one of " + ", ".join(LR_SCHEDULES)),
    "optim.min_lr_fraction": (_between(0, 1), "in [0, 1]"),
    "optim.grad_clip": (_optional(_between(0, math.inf, open_high=True)), "a finite number >= 0, or null (0 or "
                        "null: no clipping)"),
    "optim.batch_size": (_at_least(1), "an integer >= 1 (and at most the number of training images)"),
    "optim.grad_accum": (_at_least(1), "an integer >= 1"),
    "train.steps": (_at_least(1), "an integer >= 1"),
    "train.max_seconds": (_optional(_between(0, math.inf, open_low=True, open_high=True)),
                          "a finite number > 0, or null (no time budget)"),
    "train.seed": (lambda v: _at_least(0)(v) and v < 2**32, "an integer in [0, 2**32)"),
    "train.ema_decay": (_between(0, 1, open_high=True), "in [0, 1)"),
    "train.posthoc_ema_every": (_at_least(0), "an integer >= 0 (0: no post-hoc EMA snapshots)"),
    "train.posthoc_ema_sigma_rels": (lambda v: len(v) >= 1 and all(_between(0, 12 ** -0.5, open_low=True,
                                                                             open_high=True)(s) for s in v),
                                     "a list of relative widths in (0, 0.289), e.g. [0.05, 0.10]"),
    "train.log_every": (_at_least(1), "an integer >= 1"),
    "train.sample_every": (_at_least(0), "an integer >= 0 (0: no previews)"),
    "train.checkpoint_every": (_at_least(1), "an integer >= 1"),
    "train.num_preview": (_at_least(1), "an integer >= 1"),
    "train.out_dir": (_text, "a folder"),
    "train.device": (_text, "auto, cpu, cuda or cuda:N"),
    "train.tune_steps": (_optional(lambda v: all(_at_least(2)(c) for c in v)),
                         "a list of step counts >= 2 ([]: no tuning), or null (sample.steps and 10)"),
    "train.tune_seconds": (_optional(_between(0, math.inf, open_low=True, open_high=True)),
                           "a finite number of seconds > 0, or null (a tenth of the training time)"),
    "sample.method": (lambda v: v in SAMPLERS, "a sampler: " + ", ".join(SAMPLERS)),
    "sample.steps": (_at_least(1), "an integer >= 1"),
    "sample.spacing": (lambda v: v in SPACINGS, "a step spacing: " + ", ".join(SPACINGS)),
    "sample.guidance_scale": (_number, "a finite number"),
    "controlnet.hint_widths": (lambda v: len(v) >= 1 and all(_at_least(1)(w) for w in v),
                               "a list of integer widths >= 1, e.g. [16, 32, 64]"),
    "controlnet.prompt_drop": (_between(0, 1), "in [0, 1]"),
    "controlnet.copy_depth": (_at_least(0), "an integer >= 0 (0: half the DiT's depth)"),
    "lora.rank": (_at_least(1), "an integer >= 1"),
    "dreambooth.prior_images": (_at_least(1), "an integer >= 1"),
    "embedding.num_vectors": (_at_least(1), "an integer >= 1"),
    "dreambooth.prior_weight": (_between(0, math.inf, open_high=True), "a finite number >= 0"),
    "lora.dropout": (_between(0, 1, open_high=True), "in [0, 1)"),
    "lora.targets": (lambda v: len(v) > 0 and all(isinstance(p, str) for p in v),
                     "a list of module-name patterns, e.g. ['*.attn.qkv', '*.cross.kv']"),
    "controlnet.control_scale": (_number, "a finite number"),
    "distill.steps": (_at_least(1), "an integer >= 1"),
    "distill.method": (lambda v: v in DISTILL_METHODS, "progressive, consistency or adversarial"),
    "distill.adversarial_weight": (_between(0, math.inf, open_high=True), "a number >= 0"),
    "distill.instance_noise": (_between(0, math.inf, open_high=True), "a number >= 0"),
    "distill.classifier_weight": (_between(0, math.inf, open_high=True), "a number >= 0"),
    "distill.discriminator": (lambda v: v in DISCRIMINATORS, "pixel or teacher"),
    "distill.discriminator_channels": (_at_least(1), "an integer >= 1"),
    "distill.discriminator_lr": (_between(0, math.inf, open_low=True, open_high=True), "a number > 0"),
    "distill.regression_weight": (_between(0, math.inf, open_high=True), "a number >= 0"),
    "distill.distribution_weight": (_between(0, math.inf, open_high=True), "a number >= 0"),
    "distill.fake_score_lr": (_between(0, math.inf, open_low=True, open_high=True), "a number > 0"),
    "distill.fake_score_steps": (_at_least(1), "an integer >= 1"),
    "distill.distribution_warmup": (_at_least(0), "an integer >= 0"),
    "distill.levels": (_at_least(2), "an integer >= 2"),
    "distill.target_ema": (_between(0, 1, open_high=True), "in [0, 1)"),
    "distill.huber_c": (_optional(_between(0, math.inf, open_low=True, open_high=True)), "null or a number > 0"),
    "distill.spacing": (lambda v: v in SPACINGS, "a step spacing: " + ", ".join(SPACINGS)),
    "distill.guidance_range": (lambda v: v is None or (len(v) == 2 and all(_number(w) for w in v) and v[0] <= v[1]),
                               "null or two numbers lo <= hi, e.g. [1, 5]"),
    "distill.guidance_interval": (lambda v: v is None or (len(v) == 2 and all(_number(s) for s in v)
                                                          and 0 <= v[0] < v[1]),
                                  "null or two noise levels 0 <= sigma_lo < sigma_hi, e.g. [0, 10]"),
}


def _field_type(section, name: str):
    return {f.name: f.type for f in dataclasses.fields(section)}[name]


def validate(config: Config) -> Config:
    """Check every key's type and range (``RULES``) and that the noise schedule can be built;
    returns ``config``. Raises one :class:`ConfigError` naming the first wrong key, its value and
    what is allowed. The checks that need the data (``optim.batch_size`` at most the number of
    images, a crop that fits) run in the trainer once the data is loaded, before the first step."""
    for section_name in SECTIONS:
        section = getattr(config, section_name)
        for f in dataclasses.fields(section):
            key, value = f"{section_name}.{f.name}", getattr(section, f.name)
            ok, value = _accepts(f.type, value)
            if not ok:
                raise ConfigError(f"config key '{key}' must be of type {f.type}, got {value!r}")
            setattr(section, f.name, value)  # ints given for floats become floats, lists for tuples tuples
    for key, (check, allowed) in RULES.items():
        section_name, name = key.split(".")
        value = getattr(getattr(config, section_name), name)
        try:
            ok = bool(check(value))
        except TypeError:  # e.g. betas that are not a pair of numbers
            ok = False
        if not ok:
            raise ConfigError(f"config key '{key}' must be {allowed}, got {value!r}")
    config.optim.betas = tuple(float(b) for b in config.optim.betas)  # torch's AdamW refuses a pair of ints
    if config.optim.lr * config.optim.weight_decay >= 1:
        raise ConfigError(f"config keys 'optim.lr' x 'optim.weight_decay' must be below 1 (AdamW multiplies the "
                          f"weights by 1 - lr x weight_decay every step), got {config.optim.lr:g} x "
                          f"{config.optim.weight_decay:g}")
    if config.data.random_placement and config.data.autoencoder and config.data.latent_cache:
        raise ConfigError("data.random_placement moves pixels, and data.latent_cache encodes them once: set "
                          "data.latent_cache: false to place a latent model's images (encoded every step)")
    if config.distill.guidance_interval is not None and config.distill.method != "adversarial":
        raise ConfigError(f"config key 'distill.guidance_interval' trains whole trajectories, which only the "
                          f"adversarial refinement samples (distill.method: adversarial); a {config.distill.method} "
                          "student takes an interval at sampling time (difflab sample --guidance-interval)")
    d = config.diffusion
    try:
        schedule = get_schedule(d.schedule, **d.schedule_options)
    except Exception as err:  # any failure to build it from the user's settings is a config mistake
        raise ConfigError(f"config keys 'diffusion.schedule' / 'diffusion.schedule_options' "
                          f"({d.schedule!r}, {d.schedule_options!r}) do not make a noise schedule: {err}") from None
    _check_loss(d, schedule)
    return config


def _check_loss(d: DiffusionConfig, schedule) -> None:
    """The loss, the variance and the time sampling fit each other and the schedule."""
    try:
        loss = resolve_loss(d.loss, d.learned_variance)
    except ValueError as err:
        raise ConfigError(f"config keys 'diffusion.loss' / 'diffusion.learned_variance' ({d.loss!r}, "
                          f"{d.learned_variance}): {err}") from None
    needs = [what for what, used in [(f"diffusion.loss: {loss}", loss != "simple"),
                                     ("diffusion.t_sampling: importance", d.t_sampling == "importance")] if used]
    if needs and not schedule.is_discrete:
        raise ConfigError(f"config key '{needs[0].split(':')[0]}': {needs[0].split(': ')[1]} needs a discrete schedule "
                          f"(the variational bound's terms, or one history per timestep), and {d.schedule!r} is "
                          "continuous: use linear, cosine, scaled_linear or sigmoid")
    if loss == "vlb" and d.weighting != "uniform":
        raise ConfigError(f"config key 'diffusion.weighting' must be uniform with diffusion.loss: vlb (the bound has "
                          f"its own weights), got {d.weighting!r}")


def apply_override(raw: dict, assignment: str) -> None:
    """Apply one ``section.key[.subkey]=value`` override to a raw config dict, in place."""
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {assignment!r} must look like section.key=value (e.g. optim.lr=3e-4)")
    path = key.strip().split(".")
    if len(path) < 2:
        raise ConfigError(f"override {assignment!r} must name a section and a key, e.g. train.steps=500")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {assignment!r}: cannot parse the value: {err}") from None
    node = raw
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {assignment!r}: {part!r} is not a section")
    node[path[-1]] = value


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (None: all defaults) and apply ``--set`` overrides."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist (see configs/ for examples)")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    for assignment in overrides or []:
        apply_override(raw, assignment)
    return config_from_dict(raw)
