"""The autoencoders' objective (``model.name: autoencoder_kl | autoencoder_vq``): the shared
trainer's loop with LDM's first-stage loss, reconstruction grids as previews, and, once trained,
the latent scale and held-out PSNR stored in the checkpoint's ``config.json``.

The loss is LDM's (Rombach et al. 2022, appendix G; ``LPIPSWithDiscriminator`` /
``VQLPIPSWithDiscriminator`` of the CompVis code) without the perceptual and adversarial terms,
averaged over the D = C·H·W pixels of an image::

    KL:  L = l1·mean|x − x̂| + l2·mean (x − x̂)² + kl_weight · KL(q(z|x) ‖ N(0, I)) / D
    VQ:  L = l1·mean|x − x̂| + l2·mean (x − x̂)² + β·mean ‖z_e − sg[z_q]‖²

LDM sums the reconstruction and KL terms over pixels; dividing both by D leaves their ratio, so
``kl_weight`` = 10⁻⁶ means what it means there, while the loss stays at pixel scale for the
trainer's gradient clipping. The VQ term is the mean over latent elements, as in taming.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ...checkpoint import AUTOENCODER_KIND
from ...data.convert import to_float, to_uint8
from ...data.load import load_dataset
from ...images import save_grid
from ...models.autoencoder import estimate_latent_scale, psnr, reconstruction_psnr
from ..config import Config, ConfigError
from .base import Inputs, Objective, StepLoss, TrainingData


def autoencoder_spec(config: Config, dataset) -> dict:
    """The autoencoder's model config: the preset and options of ``config.model``, with the
    image channels and size taken from the data."""
    if config.data.class_conditional or getattr(config.data, "text_conditional", False):
        raise ConfigError("an autoencoder is not conditioned on classes or captions: set "
                          "data.class_conditional=false and data.text_conditional=false")
    return {"name": config.model.name, "preset": config.model.preset, **config.model.options,
            "in_channels": dataset.channels, "image_size": dataset.resolution}


def check_random_crop(config: Config, model) -> None:
    """``data.random_crop`` must fit the images and be a multiple of the autoencoder's factor f."""
    crop = config.data.random_crop
    side, factor = model.config.image_size, model.config.factor
    if crop is not None and not (0 < crop <= side and crop % factor == 0):
        raise ConfigError(f"data.random_crop={crop} must be a multiple of the autoencoder's factor f={factor} "
                          f"between {factor} and the image side {side}")


def autoencoder_loss(net, x0: Tensor, config: Config, noise: Tensor | None = None) -> StepLoss:
    """The step loss of an autoencoder on images x0 in [−1, 1] (see the module docstring).

    ``noise`` is the ε of the KL posterior sample z = μ + σ·ε (drawn by the trainer from the
    step's generator, so resumed and DDP runs repeat it); the VQ autoencoder ignores it.
    Logged: ``recon_l1``, ``recon_l2``, ``psnr`` (dB, of the clamped reconstruction), and ``kl``
    (nats per image) or ``commitment``, ``perplexity`` and ``codebook_usage``.
    """
    weights = config.autoencoder
    out = net(x0, noise)
    x_hat = out.reconstruction.float()
    l1 = (x_hat - x0).abs().mean()
    l2 = (x_hat - x0).square().mean()
    loss = weights.l1_weight * l1 + weights.l2_weight * l2
    metrics = {"recon_l1": l1.detach(), "recon_l2": l2.detach(), "psnr": psnr(x_hat.detach(), x0).mean()}
    if out.kl is not None:
        kl = out.kl.mean()
        loss = loss + weights.kl_weight * kl / x0[0].numel()
        metrics["kl"] = kl.detach()
    if out.commitment is not None:
        loss = loss + out.commitment
        metrics.update(commitment=out.commitment.detach(), perplexity=out.perplexity, codebook_usage=out.usage)
    return StepLoss(loss, metrics)


def preview_images(images: Tensor, n: int) -> Tensor:
    """``n`` training images spread evenly over the set: the fixed inputs of the grids."""
    return images[torch.linspace(0, len(images) - 1, min(n, len(images))).round().long()]


@torch.no_grad()
def reconstruction_grid(model, images: Tensor, path: Path) -> Path:
    """A grid of uint8 ``images`` and their reconstructions by ``model`` (the EMA weights):
    rows of up to 8 inputs, each followed by the row of their reconstructions."""
    x = to_float(images)
    x_hat = torch.cat([model.reconstruct(x[i : i + 64]) for i in range(0, len(x), 64)])
    per_row = min(8, len(x))
    rows = []
    for start in range(0, len(x), per_row):
        rows += [x[start : start + per_row], x_hat[start : start + per_row]]
    grid = torch.cat([F.pad(r, (0, 0, 0, 0, 0, 0, 0, per_row - len(r)), value=-1.0) for r in rows])
    return save_grid(to_uint8(grid), path, nrow=per_row, upscale=max(1, 64 // images.shape[-1]))


def held_out_images(images: Tensor, config: Config) -> tuple[Tensor, str]:
    """The first ``autoencoder.eval_images`` images of ``autoencoder.eval_split`` at the training
    images' size and channels (the training images when the dataset has no such split), and the
    split's name; a split the dataset cannot have is a ConfigError."""
    weights = config.autoencoder
    try:
        held_out = load_dataset(config.data.dataset, weights.eval_split, images.shape[-1], images.shape[1]).images
        split = weights.eval_split
    except FileNotFoundError:
        held_out, split = images, f"{config.data.split} (no {weights.eval_split} split)"
    except ValueError as err:
        raise ConfigError(f"config key 'autoencoder.eval_split' ({weights.eval_split!r}): {err}") from None
    return held_out[: weights.eval_images], split


@torch.no_grad()
def evaluate(model, images: Tensor, config: Config, held_out: tuple[Tensor, str] | None = None) -> dict:
    """LDM's latent scale 1/std(z) over ``autoencoder.scale_images`` random training images and
    the mean reconstruction PSNR on ``autoencoder.eval_images`` images of ``autoencoder.eval_split``
    (``held_out``: those images and their split's name, else :func:`held_out_images`), for the
    checkpoint's config.json."""
    weights, seed = config.autoencoder, config.train.seed
    chosen = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[: weights.scale_images]
    scale = estimate_latent_scale(model, images[chosen.to(images.device)], seed=seed)
    held_out, split = held_out or held_out_images(images, config)
    return {"latent_scale": scale, "latent_scale_images": len(chosen),
            "psnr": reconstruction_psnr(model, held_out), "psnr_split": split, "psnr_images": len(held_out)}


class AutoencoderObjective(Objective):
    """A KL or VQ autoencoder on the run's pixels (optionally random crops of them)."""

    kind = AUTOENCODER_KIND

    def __init__(self, config: Config, data: TrainingData):
        super().__init__(config, data)
        if data.latent is not None:
            raise ConfigError("data.autoencoder trains a diffusion model in an autoencoder's latents; an "
                              "autoencoder trains on pixels: remove data.autoencoder")
        self.held_out = held_out_images(data.images, config)  # now: a wrong eval_split fails before training

    def model_spec(self) -> dict:
        return autoencoder_spec(self.config, self.data.dataset)

    def attach(self, model) -> None:
        super().attach(model)
        check_random_crop(self.config, model)
        self.latent_shape, self.factor = tuple(model.latent_shape), model.config.factor

    def draw(self, x0: Tensor, idx: Tensor, step: int, generator: torch.Generator) -> Inputs:
        # the noise is the ε of the posterior sample z = μ + σ·ε: latent-shaped
        shape = (x0.shape[0], self.latent_shape[0], *(n // self.factor for n in x0.shape[-2:]))
        return {"x0": x0, "noise": torch.randn(shape, generator=generator, device=x0.device)}

    def loss(self, net, inputs: Inputs) -> StepLoss:
        return autoencoder_loss(net, inputs["x0"], self.config, noise=inputs["noise"])

    def preview(self, model, path: Path) -> Path:  # inputs and their reconstructions
        return reconstruction_grid(model, preview_images(self.data.images, self.config.train.num_preview), path)

    def checkpoint_config(self, init_from: dict | None = None) -> dict:
        record = {"model": self.spec, "image_shape": [self.spec["in_channels"], self.spec["image_size"],
                                                      self.spec["image_size"]],
                  "latent_shape": list(self.latent_shape), "train_config": self.config.to_dict()}
        return {**record, "init_from": init_from} if init_from is not None else record

    def finalize(self, model) -> dict:  # LDM's latent scale and the held-out PSNR
        return evaluate(model, self.data.images, self.config, self.held_out)
