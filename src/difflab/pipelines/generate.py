"""Load a trained diffusion checkpoint (and a noisy classifier) and generate images from it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..conditioning import TextConditioning
from ..data.convert import to_uint8
from ..denoiser import Denoiser
from ..guidance import guide, null_class_labels
from ..latent import LatentSpace, x0_clip
from ..models import load_frozen
from ..sampling import DEFAULT_METHOD, DEFAULT_SPACING, DEFAULT_STEPS, sample
from ..schedules import NoiseSchedule, schedule_from_config
from ..device import memory_format, precision_autocast
from ..checkpoint import CLASSIFIER_KIND, find_checkpoint, load_state


@dataclass
class DiffusionModel:
    """A network with what sampling needs to know about it (from a checkpoint's config.json)."""

    network: torch.nn.Module
    schedule: NoiseSchedule
    prediction: str
    learned_variance: bool
    image_shape: tuple[int, int, int]
    class_names: list[str]
    config: dict
    latent: LatentSpace | None = None  # latent diffusion: the autoencoder that decodes samples
    path: Path | None = None  # the checkpoint folder it was loaded from

    @classmethod
    def load(cls, path: str | Path, use_ema: bool = True, device: str | torch.device = "cpu") -> "DiffusionModel":
        """Load ``path`` (a run folder or its ``checkpoint/``); the EMA weights by default. The
        autoencoder of a latent model is stored in the same checkpoint."""
        config, tensors, _ = load_state(path)
        # channels-last: oneDNN's and cuDNN's preferred convolution layout (~20% faster sampling
        # of the demo U-Net on 2 CPU cores; the same numbers to float tolerance, tests/test_fast_paths.py)
        network = memory_format(load_frozen(config["model"], tensors["ema" if use_ema else "model"], device), True)
        latent = LatentSpace.from_config(config["latent"], tensors["autoencoder"], device) if config.get("latent") else None
        return cls(network, schedule_from_config(config["schedule"]), config["prediction"],
                   config["learned_variance"], tuple(config["image_shape"]), list(config["class_names"]), config,
                   latent, find_checkpoint(path))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def text_encoder(self) -> dict | None:
        """The text encoder of a caption-conditioned model (None otherwise)."""
        return self.config.get("text_encoder")

    @property
    def device(self) -> torch.device:
        """Where the network's weights are."""
        return next(self.network.parameters()).device

    @property
    def trained_with_label_dropout(self) -> bool:
        """Whether the null label was trained (``diffusion.cond_drop_prob > 0``); CFG needs it."""
        return self.config.get("train_config", {}).get("diffusion", {}).get("cond_drop_prob", 0.0) > 0

    @property
    def sample_defaults(self) -> dict:
        """The checkpoint's ``sample`` section: method, steps, spacing, guidance_scale."""
        return self.config.get("train_config", {}).get("sample", {})

    def sampler_settings(self, method: str | None, steps: int | None, spacing: str | None) -> tuple[str, int, str]:
        """(method, steps, spacing), each from the argument or else the checkpoint's defaults."""
        defaults = self.sample_defaults
        return (method or defaults.get("method", DEFAULT_METHOD), steps or defaults.get("steps", DEFAULT_STEPS),
                spacing or defaults.get("spacing", DEFAULT_SPACING))

    def denoiser(self, clip_x0: float | None = 1.0) -> Denoiser:
        """The model as a denoiser; pixel models clip x̂₀ to [−1, 1], latent models do not (latents
        are not bounded)."""
        return Denoiser(self.network, self.schedule, self.prediction, self.learned_variance,
                        clip_x0=x0_clip(self.latent, clip_x0))


@dataclass
class NoisyClassifierModel:
    """ADM's noisy classifier p(y | xₜ, t), from a ``difflab train-classifier --noisy`` checkpoint."""

    network: torch.nn.Module
    schedule: NoiseSchedule
    image_shape: tuple[int, int, int]
    class_names: list[str]

    @classmethod
    def load(cls, path: str | Path, use_ema: bool = True, device: str | torch.device = "cpu") -> "NoisyClassifierModel":
        config, tensors, _ = load_state(path, kind=CLASSIFIER_KIND)
        network = load_frozen(config["model"], tensors["ema" if use_ema else "model"], device)
        return cls(network, schedule_from_config(config["schedule"]), tuple(config["image_shape"]),
                   list(config["class_names"]))

    def check_matches(self, model: DiffusionModel) -> None:
        """A clear error when this classifier cannot guide ``model``: another noise schedule, image
        shape or set of classes."""
        if self.schedule.to_config() != model.schedule.to_config():
            raise ValueError(f"the classifier was trained with noise schedule {self.schedule} but the diffusion "
                             f"model uses {model.schedule}; train the classifier with the model's schedule")
        if self.image_shape != model.image_shape:
            raise ValueError(f"the classifier takes images of shape {self.image_shape} but the model makes "
                             f"{model.image_shape}; train the classifier at the model's resolution and channels")
        if model.class_names and model.class_names != self.class_names:
            raise ValueError(f"the classifier's classes {self.class_names} differ from the class-conditional "
                             f"model's {model.class_names}")


@dataclass
class Guidance:
    """How to guide sampling (see :mod:`difflab.guidance`).

    Attributes:
        scale: classifier-free guidance weight w (1 = none; None = the checkpoint's default).
        rescale: Lin et al.'s guidance rescale φ (0 = off).
        interval: (σ_lo, σ_hi): apply CFG only at noise levels in this range.
        classifier: a noisy classifier for classifier guidance.
        classifier_scale: its gradient scale s (0 = none).
        classifier_mode: ``"epsilon"`` (ADM Algorithm 2) or ``"mean"`` (Algorithm 1, ddpm only);
            None picks Algorithm 1 for the ddpm sampler and Algorithm 2 otherwise.
    """

    scale: float | None = None
    rescale: float = 0.0
    interval: tuple[float, float] | None = None
    classifier: NoisyClassifierModel | None = None
    classifier_scale: float = 0.0
    classifier_mode: str | None = None


def class_labels_for(class_names: list[str], n: int, class_index: int | None) -> torch.Tensor | None:
    """Labels for n samples: one class, or every class in turn; None without classes (an
    unconditional model with no classifier to guide it)."""
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
    model supports CFG (1 otherwise)."""
    if guidance.scale is not None:
        return guidance.scale
    conditional = model.num_classes > 0 or model.text_encoder is not None
    if conditional and model.trained_with_label_dropout:
        return model.sample_defaults.get("guidance_scale", 1.0)
    return 1.0


def guided_denoiser(model: DiffusionModel, guidance: Guidance, method: str, text_null: dict | None = None) -> Denoiser:
    """The checkpoint's denoiser with classifier-free and/or classifier guidance applied
    (``text_null``: the empty caption's inputs, the unconditional input of a text model)."""
    conditional = model.num_classes > 0 or text_null is not None
    scale = guidance_scale(model, guidance)
    if scale != 1.0:
        if not conditional:
            raise ValueError("classifier-free guidance needs a class- or text-conditional model; this one is "
                             "unconditional (use --classifier for classifier guidance instead)")
        if not model.trained_with_label_dropout:
            raise ValueError("this model was trained without label dropout (diffusion.cond_drop_prob = 0), so its "
                             "unconditional prediction is untrained; retrain with diffusion.cond_drop_prob=0.1 "
                             "or sample with --guidance-scale 1")
    classifier = guidance.classifier
    if classifier is not None:
        classifier.check_matches(model)
    mode = guidance.classifier_mode or ("mean" if method == "ddpm" else "epsilon")
    uncond = (lambda cond: text_null) if text_null is not None else null_class_labels(model.num_classes)
    return guide(model.denoiser(), scale=scale, uncond=uncond,
                 rescale=guidance.rescale, interval=guidance.interval,
                 classifier=classifier.network if classifier is not None else None,
                 classifier_scale=guidance.classifier_scale, classifier_mode=mode,
                 model_takes_labels=model.num_classes > 0)


@dataclass
class Conditioning:
    """What every batch of a sampling run is conditioned on: the (guided) denoiser, the class
    labels and the prompts, from :func:`prepare_conditioning`."""

    denoiser: Denoiser
    labels: torch.Tensor | None  # one per image (None: unconditional and unguided)
    labels_used: bool  # whether the network or an active classifier sees the labels
    text: TextConditioning | None
    prompts: list[str] | None  # one per image
    device: torch.device

    def cond(self, start: int, stop: int) -> dict:
        """The model's keyword arguments for images start … stop − 1."""
        cond = {"class_labels": self.labels[start:stop].to(self.device)} if self.labels_used else {}
        if self.text is not None:
            cond.update(self.text.encode(self.prompts[start:stop]))
        return cond


def prepare_conditioning(model: DiffusionModel, n: int, method: str, *, class_index: int | None = None,
                         guidance: Guidance | None = None, prompts: list[str] | None = None,
                         compile: bool = False) -> Conditioning:
    """Labels, prompts and the guided denoiser for n images (see :func:`generate`); ``compile``:
    the denoiser's step under ``torch.compile`` (:mod:`difflab.sampling.compiled`)."""
    guidance = guidance or Guidance()
    device = model.device
    class_names = model.class_names or (guidance.classifier.class_names if guidance.classifier else [])
    labels = class_labels_for(class_names, n, class_index)
    text = None
    if model.text_encoder:
        if not prompts:
            raise ValueError("this model is text-conditioned: give a prompt (--prompt TEXT or --prompts FILE)")
        text = TextConditioning(model.text_encoder, device)
        prompts = [prompts[i % len(prompts)] for i in range(n)]
    elif prompts:
        raise ValueError("this model is not text-conditioned: it was trained without captions (drop --prompt)")
    denoiser = guided_denoiser(model, guidance, method, text.null() if text else None)
    denoiser = denoiser.compiled() if compile else denoiser
    # An unconditional model sees labels only through an active classifier (s = 0: none at all).
    classifier_active = guidance.classifier is not None and guidance.classifier_scale != 0
    labels_used = labels is not None and (model.num_classes > 0 or classifier_active)
    return Conditioning(denoiser, labels, labels_used, text, prompts, device)


def seeded_noise(shape, seeds) -> torch.Tensor:
    """One standard normal draw of ``shape`` per seed, stacked: image i's noise depends on its
    seed only, not on the batch it is drawn in."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])


def generate(
    model: DiffusionModel,
    n: int,
    *,
    method: str | None = None,
    steps: int | None = None,
    spacing: str | None = None,
    sigmas=None,
    seed: int = 0,
    class_index: int | None = None,
    guidance: Guidance | None = None,
    prompts: list[str] | None = None,
    batch_size: int = 256,
    progress: bool = False,
    precision: str = "auto",
    compile: bool = False,
    **options,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """n samples as uint8 (N, C, H, W), with their class labels (None if unconditional and unguided);
    a latent model's samples are decoded by its autoencoder.

    Sample i uses noise seeded by ``seed + i``, so the images do not depend on the batch size.
    Method, steps, spacing and the guidance scale default to the checkpoint's ``sample`` section;
    ``sigmas`` (e.g. from ``difflab tune-steps``) overrides steps and spacing.
    Classes come from the model, or from the classifier for an unconditional model under
    classifier guidance; without ``class_index`` every class is drawn in turn. A text-conditioned
    model needs ``prompts``; image i gets prompt i mod len(prompts). ``precision``: the network's
    arithmetic, ``auto`` (bf16 autocast on a GPU, float32 on a CPU), ``bf16`` (bf16 autocast on
    either: 1.1–1.8× faster sampling on a CPU with avx512_bf16 or AMX, docs/sampling.md) or
    ``float32``; the solver and the autoencoder's decoding stay in float32.
    ``compile`` runs each step's model call through ``torch.compile`` (CUDA graphs on a GPU;
    :mod:`difflab.sampling.compiled`).
    """
    autocast = precision_autocast(precision, model.device)  # checks the precision before any work
    method, steps, spacing = model.sampler_settings(method, steps, spacing)
    plan = prepare_conditioning(model, n, method, class_index=class_index, guidance=guidance, prompts=prompts,
                                compile=compile)
    device = plan.device
    chunks = []
    batches = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="sample", unit="batch")
    for start in batches:
        seeds = list(range(seed + start, seed + min(n, start + batch_size)))
        noise = seeded_noise(model.image_shape, seeds)
        with autocast:
            x = sample(plan.denoiser, noise.to(device), method=method, steps=steps, spacing=spacing,
                       sigmas=sigmas, cond=plan.cond(start, start + len(seeds)), seeds=seeds, **options)
        if model.latent is not None:
            x = model.latent.decode(x)
        chunks.append(to_uint8(x).cpu())
    return torch.cat(chunks), plan.labels


def is_diffusion_checkpoint(path: str | Path) -> bool:
    try:
        import json

        config = json.loads((find_checkpoint(path) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return config.get("kind") == "diffusion"
