"""The diffusion objective: a denoiser trained on xₜ ~ q(xₜ | x₀) at random t (DDPM, Ho et al.
2020, Alg. 1), with the prediction, weighting and loss (``diffusion.loss``: simple, hybrid or the
variational bound) of :func:`difflab.losses.diffusion_loss`, t uniform or importance-sampled
(``diffusion.t_sampling``, :class:`difflab.losses.ImportanceSampler`, its history checkpointed),
conditioned on class labels or captions that are dropped with ``diffusion.cond_drop_prob`` for
classifier-free guidance (Ho & Salimans 2022), and optionally on an image concatenated to the input
(``diffusion.image_condition``, :mod:`difflab.image_condition`: ``inpaint``, a random mask per
image and the masked image; ``low_res``, the image area-downsampled to ``diffusion.low_res``,
noise-augmented up to ``diffusion.aug_max`` and upsampled again: super-resolution). Previews
are samples from the EMA weights."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ... import losses
from ...checkpoint import DIFFUSION_KIND, ModelRecord
from ...conditioning import TextConditioning, select
from ...data.convert import to_float, to_uint8
from ...image_condition import (
    concat_channels,
    downsample,
    inpaint_condition,
    low_res_condition,
    source_condition,
    three_way_dropout,
)
from ...masks import random_masks
from ...pipelines.img2img import InitImages
from ...pipelines.preview import preview_grid
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
        self.t_sampler = self.importance_sampler()
        self.labels = None
        if self.uses_labels():
            if not dataset.class_names or dataset.labels is None:
                raise ConfigError(self.missing_labels.format(name=dataset.name) + "; put each class's images in "
                                  "their own sub-folder (FOLDER/CLASS/image.png)")
            self.labels = dataset.labels.to(data.device)
        self.image_condition = config.diffusion.image_condition
        # a latent model's conditioning image is made from the batch's pixels
        self.needs_pixels = self.image_condition in ("inpaint", "low_res") and data.latent is not None
        low_res, side = config.diffusion.low_res, data.images.shape[-1]
        if self.image_condition == "low_res" and not (low_res and low_res < side):
            raise ConfigError(f"diffusion.image_condition: low_res needs diffusion.low_res, the low-resolution side "
                              f"below the images' {side} (e.g. {side // 2}), got {low_res}")
        self.sources = None
        if self.image_condition == "source":
            self.sources = self.check_source_data(config, data.dataset).to(data.device)
        self.text_config = self.text_encoder_config()
        self.text = TextConditioning(self.text_config, data.device) if self.text_config else None
        if self.text is not None:  # every distinct caption encoded once; rows gathered per step
            self.caption_table, self.caption_rows = self.text.table(dataset.captions)
            self.null_caption = self.text.null()

    @staticmethod
    def check_source_data(config: Config, dataset) -> Tensor:
        """An instruct-pix2pix run's source images, after checking what the recipe needs."""
        if getattr(dataset, "sources", None) is None:
            raise ConfigError(f"diffusion.image_condition: source trains on an image-editing dataset with source "
                              f"images; {dataset.name!r} has none: use data.dataset: edits-fashion-mnist, edits-emoji "
                              "or edits-digits")
        if not config.data.text_conditional:
            raise ConfigError("diffusion.image_condition: source edits by written instructions: set "
                              "data.text_conditional: true (the instructions are the captions)")
        if config.data.hflip:
            raise ConfigError("data.hflip would flip targets without their sources (and 'flip it horizontally' "
                              "edits would mean nothing): set data.hflip: false")
        if not 0 <= 3 * config.diffusion.cond_drop_prob <= 1:
            raise ConfigError(f"diffusion.cond_drop_prob={config.diffusion.cond_drop_prob} is the probability of each "
                              "of instruct-pix2pix's three dropouts (text, both, image): it must be at most 1/3")
        return dataset.sources

    def importance_sampler(self) -> losses.ImportanceSampler | None:
        """``diffusion.t_sampling: importance``'s sampler (None for uniform t). Only this class's
        own loss applies its weights; a subclass with a loss of its own (ControlNet, LoRA, a
        distilled student, ...) refuses a non-default ``diffusion.loss`` or ``t_sampling``, which
        it would silently ignore."""
        d = self.config.diffusion
        if type(self).loss is not DiffusionObjective.loss and (d.loss is not None or d.t_sampling != "uniform"):
            key = "diffusion.loss" if d.loss is not None else "diffusion.t_sampling"
            raise ConfigError(f"config key '{key}' applies to `difflab train` of a diffusion model; "
                              f"{type(self).__name__} trains with its own loss: remove {key}")
        if d.t_sampling != "importance":
            return None
        return losses.ImportanceSampler(self.schedule.num_steps)

    @property
    def ships_tuned_levels(self) -> bool:
        """Tune the sampler after training unless generating needs an input image (inpainting,
        super-resolution and instruct-pix2pix models), which tuning has none of."""
        return self.image_condition is None

    def calibration_prompts(self, n: int) -> list[str] | None:
        """n training captions spread over the dataset."""
        if self.text is None:
            return None
        captions = self.data.dataset.captions
        return [captions[i * len(captions) // n] for i in range(n)]

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
            **({"concat_channels": concat_channels(self.image_condition, channels, self.data.images.shape[1])}
               if self.image_condition else {}),
            **({"aug_level": True} if self.image_condition == "low_res" and cfg.diffusion.aug_max > 0 else {}),
        }

    def draw_t_and_noise(self, x0: Tensor, step: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """t (float64, CPU; its own generator seeded by seed + step; importance-sampled with
        ``diffusion.t_sampling: importance``, at EDM's log-normal noise levels with ``lognormal``)
        and ε ~ N(0, I) like x0."""
        n, t_generator = x0.shape[0], torch.Generator().manual_seed(self.config.train.seed + step)
        if self.t_sampler is not None:
            t = self.t_sampler.sample(n, t_generator)
        elif self.config.diffusion.t_sampling == "lognormal":
            t = losses.sample_lognormal_t(self.schedule, n, t_generator)
        else:
            t = losses.sample_training_t(self.schedule, n, t_generator)
        return t, torch.randn(x0.shape, generator=generator, device=x0.device)

    def draw(self, x0: Tensor, idx: Tensor, step: int, generator: torch.Generator,
             pixels: Tensor | None = None) -> Inputs:
        cfg, n = self.config, x0.shape[0]
        t, noise = self.draw_t_and_noise(x0, step, generator)
        cond = {}
        if self.labels is not None:
            y = self.labels[idx]
            if cfg.diffusion.cond_drop_prob > 0:  # the null label (index num_classes) trains the unconditional model
                drop = torch.rand(n, generator=generator, device=x0.device) < cfg.diffusion.cond_drop_prob
                y = torch.where(drop, torch.full_like(y, len(self.data.dataset.class_names)), y)
            cond["class_labels"] = y
        drop_image = None
        if self.sources is not None:  # instruct-pix2pix: text, both or the image dropped, from one draw
            u = torch.rand(n, generator=generator, device=x0.device)
            drop_text, drop_image = three_way_dropout(u, cfg.diffusion.cond_drop_prob)
        elif self.text is not None:
            drop_text = torch.rand(n, generator=generator, device=x0.device) < cfg.diffusion.cond_drop_prob
        if self.text is not None:  # caption dropout: the empty caption is the null condition
            cond.update(select(self.caption_table, self.caption_rows[idx], self.null_caption, drop_text))
        if drop_image is not None:  # the null image is zero
            source = source_condition(to_float(self.sources[idx]), self.data.latent)
            cond["concat"] = source * (~drop_image).to(source.dtype).view(-1, 1, 1, 1)
        if self.image_condition == "inpaint":  # never dropped: CFG's two branches see the same image
            cond["concat"] = self.inpaint_inputs(x0 if pixels is None else pixels, step)
        elif self.image_condition == "low_res":
            cond.update(self.low_res_inputs(x0 if pixels is None else pixels, tuple(x0.shape[-2:]), generator))
        inputs = {"x0": x0, "t": t, "noise": noise, "cond": cond}
        if self.t_sampler is not None:  # 1/(T·pₜ): keeps the importance-sampled loss unbiased
            inputs["t_weight"] = self.t_sampler.weights(t)
        return inputs

    def low_res_inputs(self, pixels: Tensor, size: tuple[int, int], generator: torch.Generator) -> dict:
        """The low-resolution images of the batch, noised to random levels in [0, aug_max]
        (noise-conditioning augmentation) and upsampled to the network's grid ``size``; with the
        levels as ``aug_level`` when augmenting."""
        d = self.config.diffusion
        low = downsample(pixels, d.low_res)
        level = torch.rand(len(low), generator=generator, device=low.device) * d.aug_max
        noise = torch.randn(low.shape, generator=generator, device=low.device)
        concat = low_res_condition(low, level, noise, size, d.low_res_upsample)
        return {"concat": concat, **({"aug_level": level} if d.aug_max > 0 else {})}

    def inpaint_inputs(self, pixels: Tensor, step: int) -> Tensor:
        """Random masks (their own CPU generator, seeded by seed and step) and the masked images,
        as the network's ``concat`` input."""
        masks_g = torch.Generator().manual_seed(0x5A5C_0000 + 1_000_003 * self.config.train.seed + step)
        masks = random_masks(len(pixels), tuple(pixels.shape[-2:]), masks_g, self.config.diffusion.inpaint_masks)
        return inpaint_condition(masks.to(pixels.device), pixels, self.data.latent)

    def loss(self, net, inputs: Inputs) -> StepLoss:
        d = self.config.diffusion
        out = losses.diffusion_loss(
            net, inputs["x0"], self.schedule, prediction=d.prediction, weighting=d.weighting,
            min_snr_gamma=d.min_snr_gamma, learned_variance=d.learned_variance, vlb_weight=d.vlb_weight,
            loss=d.loss, cond=inputs["cond"], t=inputs["t"], noise=inputs["noise"], t_weight=inputs.get("t_weight"),
        )
        return StepLoss(out.loss, per_sample=out.per_sample if self.t_sampler is not None else None)

    def observe(self, inputs: Inputs, per_sample: Tensor) -> None:
        """Each sample's loss (before its weight) joins the history of its t."""
        self.t_sampler.update(inputs["t"], per_sample)

    def state_dict(self) -> dict[str, Tensor]:
        if self.t_sampler is None:
            return {}
        return {f"t_sampler.{key}": value for key, value in self.t_sampler.state_dict().items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """The importance sampler's history (a checkpoint of uniform t has none: it starts empty)."""
        if self.t_sampler is not None and state:
            prefix = "t_sampler."
            self.t_sampler.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})

    def preview(self, model, path: Path) -> Path:
        """``train.num_preview`` samples of the EMA weights at seed ``train.seed``: every class in
        turn, or the first training captions; what ``difflab sample`` makes from the checkpoint
        with the same seed and prompts, to the bit (:mod:`difflab.pipelines.preview`)."""
        n = self.config.train.num_preview
        prompts = list(self.data.dataset.captions[:n]) if self.text is not None else None
        cond_images = None
        if self.image_condition == "low_res":  # the first training images, downsampled
            low = downsample(to_float(self.data.images[:n]), self.config.diffusion.low_res)
            cond_images = InitImages(to_uint8(low).cpu(), [None] * len(low))
        elif self.sources is not None:  # the first training sources, edited by their instructions
            cond_images = InitImages(self.sources[:n].cpu(), [None] * min(n, len(self.sources)))
        return preview_grid(model, ModelRecord.from_dict(self.checkpoint_config()), path, n=n,
                            seed=self.config.train.seed, prompts=prompts, latent=self.data.latent,
                            cond_images=cond_images)

    def checkpoint_config(self, init_from: dict | None = None) -> dict:
        cfg, latent = self.config, self.data.latent
        return ModelRecord(
            kind=self.kind, model=self.spec, schedule=self.schedule.to_config(), image_shape=self.data.shape,
            prediction=cfg.diffusion.prediction, learned_variance=cfg.diffusion.learned_variance,
            class_names=list(self.data.dataset.class_names) if self.labels is not None else [],
            text_encoder=self.text_config, image_condition=self.image_condition,
            latent=latent.to_config() if latent is not None else None,
            train_config=cfg.to_dict(), init_from=init_from,
        ).to_dict()
