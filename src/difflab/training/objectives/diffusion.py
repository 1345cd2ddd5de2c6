"""The diffusion objective: a denoiser trained on xₜ ~ q(xₜ | x₀) at random t (DDPM, Ho et al.
2020, Alg. 1), with the prediction, weighting and hybrid loss of :func:`difflab.losses.diffusion_loss`,
conditioned on class labels or captions that are dropped with ``diffusion.cond_drop_prob`` for
classifier-free guidance (Ho & Salimans 2022). Previews are samples from the EMA weights."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ... import losses
from ...checkpoint import DIFFUSION_KIND, ModelRecord
from ...conditioning import TextConditioning, select
from ...data.convert import to_uint8
from ...denoiser import Denoiser
from ...guidance import guide, null_class_labels
from ...images import save_grid
from ...latent import LatentSpace, x0_clip
from ...sampling import sample
from ...schedules import get_schedule
from ..config import Config, ConfigError
from .base import Inputs, Objective, StepLoss, TrainingData


def text_encoder_config(config: Config, dataset) -> dict | None:
    """The text encoder of a caption-conditioned run, completed from the data (the trainable
    encoder's vocabulary is built from the training captions); None without text conditioning."""
    if not config.data.text_conditional:
        return None
    if dataset.captions is None:
        raise ConfigError(f"data.text_conditional is true but dataset {dataset.name!r} has no captions; use a "
                          "captioned dataset (emoji, fashion-mnist, an image folder with metadata.jsonl or .txt files)")
    encoder = dict(config.model.text_encoder)
    if encoder.get("name") == "small" and "vocab" not in encoder:
        from ...text import WordTokenizer

        encoder["vocab"] = WordTokenizer.build(dataset.captions).vocab
    return encoder


def preview_conditioning(config: Config, spec: dict, text=None, captions=None) -> tuple[dict, object]:
    """(cond, uncond) of the preview grids: every class in turn, or the first training captions;
    uncond (for classifier-free guidance) is None when the model was trained without dropout."""
    n = config.train.num_preview
    if text is not None:
        cond = text.encode(list(captions[:n]) * (n // max(1, len(captions[:n])) + 1))
        cond = {k: v[:n] for k, v in cond.items()}
        null = text.null()
        uncond = (lambda c: null) if config.diffusion.cond_drop_prob > 0 else None
        return cond, uncond
    if spec.get("num_classes"):
        uncond = null_class_labels(spec["num_classes"]) if config.diffusion.cond_drop_prob > 0 else None
        return {"class_labels": torch.arange(n) % spec["num_classes"]}, uncond
    return {}, None


@torch.no_grad()
def preview(model, schedule, config: Config, spec: dict, device, path: Path, cond: dict, uncond,
            latent: LatentSpace | None = None) -> Path:
    """A grid of samples from ``model`` (the EMA weights), fixed noise so grids are comparable;
    with the configured classifier-free guidance scale when the model supports it, decoded to
    pixels for a latent model."""
    n = config.train.num_preview
    g = torch.Generator().manual_seed(config.train.seed)
    noise = torch.randn(n, spec["in_channels"], spec["image_size"], spec["image_size"], generator=g).to(device)
    cond = {k: v.to(device) for k, v in cond.items()}
    denoiser = Denoiser(model, schedule, config.diffusion.prediction, config.diffusion.learned_variance,
                        clip_x0=x0_clip(latent))  # as `difflab sample` clips
    if uncond is not None:
        denoiser = guide(denoiser, scale=config.sample.guidance_scale, uncond=uncond)
    x = sample(denoiser, noise, method=config.sample.method, steps=config.sample.steps,
               spacing=config.sample.spacing, cond=cond, generator=config.train.seed)
    nrow = spec["num_classes"] if spec.get("num_classes") else None
    if latent is not None:
        x = latent.decode(x)
    return save_grid(to_uint8(x), path, nrow=nrow, upscale=max(1, 64 // x.shape[-1]))


class DiffusionObjective(Objective):
    """A diffusion model (U-Net or DiT, in pixels or latents, unconditional, class- or
    caption-conditional); the default objective of ``difflab train``."""

    kind = DIFFUSION_KIND
    missing_labels = "data.class_conditional is true but dataset {name!r} has no class labels"

    def __init__(self, config: Config, data: TrainingData):
        super().__init__(config, data)
        if config.data.random_crop:  # autoencoders are convolutional; the rest see whole images
            raise ConfigError("data.random_crop trains autoencoders on crops; a diffusion model or classifier "
                              "sees whole images: remove data.random_crop or set data.resolution instead")
        dataset = data.dataset
        self.schedule = get_schedule(config.diffusion.schedule, **config.diffusion.schedule_options)
        self.labels = None
        if self.uses_labels():
            if not dataset.class_names or dataset.labels is None:
                raise ConfigError(self.missing_labels.format(name=dataset.name) + "; put each class's images in "
                                  "their own sub-folder (FOLDER/CLASS/image.png)")
            self.labels = dataset.labels.to(data.device)
        self.text_config = self.text_encoder_config()
        self.text = TextConditioning(self.text_config, data.device) if self.text_config else None
        if self.text is not None:  # every distinct caption encoded once; rows gathered per step
            self.caption_table, self.caption_rows = self.text.table(dataset.captions)
            self.null_caption = self.text.null()

    def uses_labels(self) -> bool:
        """Whether the network takes (or, for a classifier, predicts) the dataset's class labels."""
        return self.config.data.class_conditional

    def text_encoder_config(self) -> dict | None:
        return text_encoder_config(self.config, self.data.dataset)

    def model_spec(self) -> dict:
        cfg, text = self.config, self.text_config
        channels, _, side = self.data.shape  # a latent's, in latent diffusion
        return {
            "name": cfg.model.name,
            "preset": cfg.model.preset,
            **cfg.model.options,
            "in_channels": channels,
            "image_size": side,
            "learned_sigma": cfg.diffusion.learned_variance,
            "num_classes": len(self.data.dataset.class_names) if self.labels is not None else 0,
            **({"context_dim": self.text.dim} if text else {}),
            **({"text_encoder": text} if text and text.get("name") == "small" else {}),
        }

    def attach(self, model) -> None:
        super().attach(model)
        self.preview_cond, self.preview_uncond = preview_conditioning(
            self.config, self.spec, self.text, self.data.dataset.captions)

    def draw_t_and_noise(self, x0: Tensor, step: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """t (float64, CPU; its own generator seeded by seed + step) and ε ~ N(0, I) like x0."""
        n = x0.shape[0]
        t = losses.sample_training_t(self.schedule, n, torch.Generator().manual_seed(self.config.train.seed + step))
        return t, torch.randn(x0.shape, generator=generator, device=x0.device)

    def draw(self, x0: Tensor, idx: Tensor, step: int, generator: torch.Generator) -> Inputs:
        cfg, n = self.config, x0.shape[0]
        t, noise = self.draw_t_and_noise(x0, step, generator)
        cond = {}
        if self.labels is not None:
            y = self.labels[idx]
            if cfg.diffusion.cond_drop_prob > 0:  # the null label (index num_classes) trains the unconditional model
                drop = torch.rand(n, generator=generator, device=x0.device) < cfg.diffusion.cond_drop_prob
                y = torch.where(drop, torch.full_like(y, self.spec["num_classes"]), y)
            cond["class_labels"] = y
        if self.text is not None:  # caption dropout: the empty caption is the null condition
            drop_text = torch.rand(n, generator=generator, device=x0.device) < cfg.diffusion.cond_drop_prob
            cond.update(select(self.caption_table, self.caption_rows[idx], self.null_caption, drop_text))
        return {"x0": x0, "t": t, "noise": noise, "cond": cond}

    def loss(self, net, inputs: Inputs) -> StepLoss:
        d = self.config.diffusion
        out = losses.diffusion_loss(
            net, inputs["x0"], self.schedule, prediction=d.prediction, weighting=d.weighting,
            min_snr_gamma=d.min_snr_gamma, learned_variance=d.learned_variance, vlb_weight=d.vlb_weight,
            cond=inputs["cond"], t=inputs["t"], noise=inputs["noise"],
        )
        return StepLoss(out.loss)

    def preview(self, model, path: Path) -> Path:
        return preview(model, self.schedule, self.config, self.spec, self.data.device, path,
                       self.preview_cond, self.preview_uncond, self.data.latent)

    def checkpoint_config(self, init_from: dict | None = None) -> dict:
        cfg, latent = self.config, self.data.latent
        return ModelRecord(
            kind=self.kind, model=self.spec, schedule=self.schedule.to_config(), image_shape=self.data.shape,
            prediction=cfg.diffusion.prediction, learned_variance=cfg.diffusion.learned_variance,
            class_names=list(self.data.dataset.class_names) if self.labels is not None else [],
            text_encoder=self.text_config, latent=latent.to_config() if latent is not None else None,
            train_config=cfg.to_dict(), init_from=init_from,
        ).to_dict()
