"""Latent diffusion's first stage: pixels ↔ the scaled latents the diffusion model runs in.

Latent diffusion (Rombach et al. 2022, §3) trains the diffusion model on z = scale · E(x), the
latents of a frozen autoencoder (a posterior sample for a KL autoencoder, as LDM's
``get_first_stage_encoding``; the pre-quantization latent for a VQ one, whose quantization is
part of its decoder), with scale = 1/std(z) estimated when the autoencoder was trained, and
decodes samples with D(z / scale).

A diffusion checkpoint trained this way stores the autoencoder's config in ``config.json``
(``latent``) and its weights as ``autoencoder.safetensors``, so sampling needs one path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .checkpoint import AUTOENCODER_KIND, load_state
from .data.convert import to_float


def x0_clip(latent: LatentSpace | None, pixel_limit: float | None = 1.0) -> float | None:
    """The x̂₀ clipping of a model sampled in this space: ``pixel_limit`` for a pixel model
    (images live in [−1, 1]), none in a latent space (latents are not bounded)."""
    return None if latent is not None else pixel_limit


@dataclass
class AutoencoderInfo:
    """What a trained autoencoder checkpoint says besides its weights.

    Attributes:
        latent_scale: LDM's scale factor 1/std(z) (diffusion sees z · latent_scale); None if the
            run stopped before it was estimated.
        image_shape: (C, H, W) of the training images.
        latent_shape: (z_channels, H/f, W/f).
        psnr: reconstruction PSNR (dB) on held-out images, and ``psnr_split`` the images it used.
        config: the whole ``config.json`` (model, training config, …).
    """

    latent_scale: float | None
    image_shape: tuple[int, int, int]
    latent_shape: tuple[int, int, int]
    psnr: float | None
    psnr_split: str | None
    config: dict


def load_autoencoder(path: str | Path, device: str | torch.device = "cpu", use_ema: bool = True
                     ) -> tuple[nn.Module, AutoencoderInfo]:
    """(model in eval mode, :class:`AutoencoderInfo`) of a checkpoint of ``difflab train-autoencoder``
    (the run folder or its ``checkpoint/``); the EMA weights unless ``use_ema=False``."""
    from .models import load_frozen

    config, tensors, _ = load_state(path, kind=AUTOENCODER_KIND, map_location=device, with_extra=False)
    model = load_frozen(config["model"], tensors["ema" if use_ema else "model"], device, source=path)
    info = AutoencoderInfo(latent_scale=config.get("latent_scale"), image_shape=tuple(config["image_shape"]),
                           latent_shape=tuple(config["latent_shape"]), psnr=config.get("psnr"),
                           psnr_split=config.get("psnr_split"), config=config)
    return model, info



@dataclass
class LatentSpace:
    """A frozen autoencoder with its latent scale.

    Attributes:
        autoencoder: a KL or VQ autoencoder (``encode``, ``decode``), in eval mode.
        scale: multiplies the latents the diffusion model sees.
        image_shape: (C, H, W) of the pixels; latent_shape: (c, h, w) of the latents.
        model_config: the autoencoder's model dictionary (rebuilds it with ``build_model``).
        source: where it was loaded from (for the record).
    """

    autoencoder: nn.Module
    scale: float
    image_shape: tuple[int, int, int]
    latent_shape: tuple[int, int, int]
    model_config: dict
    source: str = ""

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu") -> LatentSpace:
        """The autoencoder of a ``difflab train-autoencoder`` run (its EMA weights)."""
        autoencoder, info = load_autoencoder(path, device=device)
        if info.latent_scale is None:
            raise ValueError(f"{path} has no latent_scale: the autoencoder run did not finish; resume it with "
                             "difflab train-autoencoder CONFIG --resume RUN")
        return cls(autoencoder, float(info.latent_scale), info.image_shape, info.latent_shape,
                   info.config["model"], str(path))

    @classmethod
    def from_config(cls, config: dict, tensors: dict[str, Tensor], device: str | torch.device = "cpu") -> LatentSpace:
        """Rebuild from a diffusion checkpoint's ``latent`` section and ``autoencoder`` weights."""
        from .models import load_frozen

        autoencoder = load_frozen(config["model"], tensors, device)
        return cls(autoencoder, float(config["latent_scale"]), tuple(config["image_shape"]),
                   tuple(config["latent_shape"]), config["model"], config.get("source", ""))

    def to_config(self) -> dict:
        return {"model": self.model_config, "latent_scale": self.scale, "image_shape": list(self.image_shape),
                "latent_shape": list(self.latent_shape), "source": self.source}

    @torch.no_grad()
    def encode(self, images: Tensor, generator: torch.Generator | None = None, mean: bool = False) -> Tensor:
        """scale · E(x) for images (uint8, or float in [−1, 1]) of shape (N, C, H, W): a posterior
        sample (what diffusion trains on), or with ``mean`` a KL autoencoder's posterior mean (the
        same image always gives the same latents: img2img's start, an inpainting model's input)."""
        from .models.autoencoder import DiagonalGaussian, encode_latents

        x = to_float(images) if images.dtype == torch.uint8 else images
        if tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"the autoencoder takes images of shape {self.image_shape}, got {tuple(x.shape[1:])}; "
                             "set data.resolution / data.channels to match it")
        if mean:
            encoded = self.autoencoder.encode(x)
            latents = encoded.mean if isinstance(encoded, DiagonalGaussian) else encoded
        else:
            latents = encode_latents(self.autoencoder, x, generator)
        return latents.float() * self.scale

    @torch.no_grad()
    def encode_all(self, images: Tensor, batch_size: int = 256, generator: torch.Generator | None = None,
                   progress: bool = False) -> Tensor:
        """The latents of a whole uint8 dataset, batch by batch (the latent cache)."""
        starts = range(0, len(images), batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="encode latents", unit="batch")
        return torch.cat([self.encode(images[s : s + batch_size], generator) for s in starts])

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """D(z / scale): images in [−1, 1] (N, C, H, W)."""
        return self.autoencoder.decode(z / self.scale).float().clamp(-1, 1)
