"""The ControlNet objective (Zhang et al. 2023): the base run frozen, only the control branch
trained, on the base's own diffusion loss.

``difflab train-controlnet CONFIG --base RUN`` loads the base run's EMA weights (frozen, eval
mode), copies its encoder and middle block into a :class:`~difflab.models.controlnet.ControlNet`
(``attach``), and trains that copy, its hint encoder and zero convolutions on

    L = E ‖ε − ε_θ(xₜ, t, c_text, c_control)‖²   (paper eq. 5, in the base's prediction type)

with the base's schedule and prediction; the control images are made once from the data
(``controlnet.control``, :mod:`difflab.controls`); prompts are dropped with
``controlnet.prompt_drop`` (the paper's 50%: the empty caption, or the null label for a
class-conditional base), which teaches the branch to read the control image alone. The
checkpoint (kind ``controlnet``) holds the control branch only, with the base's path, step and
weights' SHA-256, so sampling detects a changed base.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ... import losses
from ...checkpoint import CONTROLNET_KIND, weights_sha256
from ...conditioning import select
from ...controls import PIXEL_KINDS, ControlSpec, make_controls, to_hint
from ...data.convert import to_uint8
from ...images import save_grid
from ...models import CONTROLNET_NAMES, DiT
from ...pipelines.controlnet import Control, ControlNetModel, controlnet_inputs
from ...pipelines.generate import SamplerSettings, plan, run
from ...pipelines.img2img import InitImages
from ...pipelines.png_info import png_text
from ..config import Config, ConfigError
from .base import Inputs, StepLoss, TrainingData
from .diffusion import DiffusionObjective
from .frozen_base import load_base


class ControlNetObjective(DiffusionObjective):
    """A ControlNet on a frozen base run; ``difflab train-controlnet``."""

    kind = CONTROLNET_KIND
    ships_tuned_levels = False  # it samples with a control image (and its base's levels)

    def __init__(self, config: Config, data: TrainingData):
        self.base = load_base(config.controlnet.base, "controlnet.base", "--base RUN", data)
        if isinstance(self.base.network, DiT) and config.controlnet.unlock_decoder:
            raise ConfigError("controlnet.unlock_decoder trains a copy of a U-Net's decoder; a DiT has none: set it "
                              "false")
        if config.data.hflip:
            raise ConfigError("data.hflip would flip the images without their control images: set data.hflip: false")
        if config.diffusion.image_condition is not None:
            raise ConfigError("diffusion.image_condition does not apply to a ControlNet run: remove it")
        super().__init__(config, data)
        dataset, base = data.dataset, self.base
        if (self.labels is not None) != (base.num_classes > 0):
            raise ConfigError(f"data.class_conditional must be {base.num_classes > 0}, as for the base "
                              f"{config.controlnet.base}")
        if self.labels is not None and list(dataset.class_names) != list(base.class_names):
            raise ConfigError(f"the data's classes {dataset.class_names} differ from the base's {base.class_names}")
        self.schedule = base.schedule  # the base's diffusion: schedule, prediction, variance
        self.base_hash = weights_sha256(base.network.state_dict())
        try:
            self.control = ControlSpec.from_config(config.controlnet.control)
            controls = make_controls(self.control, dataset)
        except (ValueError, OSError) as err:
            raise ConfigError(f"config key 'controlnet.control' ({config.controlnet.control}): {err}") from None
        if tuple(controls.shape[-2:]) != tuple(dataset.images.shape[-2:]):
            raise ConfigError(f"the control images are {controls.shape[-1]} pixels a side, the images "
                              f"{dataset.images.shape[-1]}: give control images of the data's size")
        self.controls = controls.to(data.device)
        self.placed = config.data.random_placement is not None  # controls made from each placed batch
        if self.placed and self.control.kind not in PIXEL_KINDS:
            raise ConfigError(f"data.random_placement moves the images, and the {self.control.kind} control images "
                              f"are given, not made from the pixels: use a {', '.join(PIXEL_KINDS)} control, or set "
                              "data.random_placement: null")
        self.needs_pixels = self.placed and data.latent is not None
        self.network = None  # the trained ControlNet (attach)

    def text_encoder_config(self) -> dict | None:
        base = self.base.record.text_encoder
        if (base is not None) != bool(self.config.data.text_conditional):
            raise ConfigError(f"data.text_conditional must be {base is not None}, as for the base "
                              f"{self.config.controlnet.base}")
        if base is not None and self.data.dataset.captions is None:
            raise ConfigError(f"the base is text-conditioned and dataset {self.data.dataset.name!r} has no captions")
        return base  # the base's encoder (a trainable one's vocabulary included)

    def model_spec(self) -> dict:
        cn = self.config.controlnet
        base = self.base.record.model
        return {"name": CONTROLNET_NAMES[base["name"]], "base": base, "hint_channels": self.controls.shape[1],
                "hint_factor": self.controls.shape[-1] // self.data.shape[-1], "hint_widths": cn.hint_widths,
                "unlock_decoder": cn.unlock_decoder, "copy_depth": cn.copy_depth}

    def attach(self, model) -> None:
        super().attach(model)
        model.copy_base(self.base.network)  # the trainable copy starts as the base's encoder
        self.network = model

    def draw(self, x0: Tensor, idx: Tensor, step: int, generator: torch.Generator,
             pixels: Tensor | None = None) -> Inputs:
        n = x0.shape[0]
        t, noise = self.draw_t_and_noise(x0, step, generator)
        drop = torch.rand(n, generator=generator, device=x0.device) < self.config.controlnet.prompt_drop
        cond = {}
        if self.labels is not None:  # the null label is the "empty prompt" of a class-conditional base
            y = self.labels[idx]
            cond["class_labels"] = torch.where(drop, torch.full_like(y, self.base.num_classes), y)
        if self.text is not None:
            cond.update(select(self.caption_table, self.caption_rows[idx], self.null_caption, drop))
        if self.placed:  # the control of the image as placed (data.random_placement)
            placed = make_controls(self.control, to_uint8(x0 if pixels is None else pixels))
            cond["control_image"] = to_hint(placed.to(x0.device))
        else:
            cond["control_image"] = to_hint(self.controls[idx])
        return {"x0": x0, "t": t, "noise": noise, "cond": cond}

    def loss(self, net, inputs: Inputs) -> StepLoss:
        base, d = self.base, self.config.diffusion
        decoder = {"decoder": self.network} if self.config.controlnet.unlock_decoder else {}

        def controlled(x_t: Tensor, t: Tensor, control_image: Tensor, **cond) -> Tensor:
            residuals = net(x_t, t, control_image, **controlnet_inputs(base.network, cond))
            return base.network(x_t, t, **cond, control=residuals, **decoder)

        out = losses.diffusion_loss(
            controlled, inputs["x0"], self.schedule, prediction=base.prediction, weighting=d.weighting,
            min_snr_gamma=d.min_snr_gamma, learned_variance=base.learned_variance, vlb_weight=d.vlb_weight,
            cond=inputs["cond"], t=inputs["t"], noise=inputs["noise"],
        )
        return StepLoss(out.loss)

    @torch.no_grad()
    def preview(self, model, path: Path) -> Path:
        """The first ``train.num_preview`` training control images (top rows) and the base's
        samples under them (bottom rows), with those images' classes or captions, at the base's
        sample settings and ``controlnet.control_scale``."""
        n, dataset = min(self.config.train.num_preview, len(self.controls)), self.data.dataset
        was_training = model.training
        model.eval()
        try:
            net = ControlNetModel(model, self.checkpoint_config())
            images = InitImages(self.controls[:n].cpu(), [None] * n)
            control = Control(net, images, self.config.controlnet.control_scale)
            labels = dataset.labels[:n] if self.labels is not None else None
            prompts = list(dataset.captions[:n]) if self.text is not None else None
            job = plan(self.base, n, SamplerSettings.resolve(self.base), seed=self.config.train.seed, labels=labels,
                       prompts=prompts, controls=[control], force_controls=True)
            out = run(job, batch_size=n)
        finally:
            model.train(was_training)
        controls, images = self.controls[:n].cpu(), out.images
        if controls.shape[1] != images.shape[1]:  # grey beside colour: both as RGB
            controls, images = (x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x for x in (controls, images))
        nrow = min(8, n)
        rows = [torch.cat([controls[i : i + nrow], images[i : i + nrow]]) for i in range(0, n, nrow)]
        return save_grid(torch.cat(rows), path, nrow=nrow, upscale=max(1, 64 // images.shape[-1]),
                         pnginfo=png_text(out.grid_record()))

    def checkpoint_config(self, init_from: dict | None = None) -> dict:
        cfg = self.config
        return {
            "model": self.spec,
            "base": {"path": str(cfg.controlnet.base), "step": self.base.record.step,
                     "weights_sha256": self.base_hash},
            "control": self.control.to_config(),
            "image_shape": list(self.data.shape),
            "sample": {"control_scale": cfg.controlnet.control_scale},
            "train_config": cfg.to_dict(),
            **({"init_from": init_from} if init_from else {}),
        }
