"""Images concatenated to a diffusion network's input (``concat``, see
:mod:`difflab.models.conditioning`): what each kind holds, built the same way for training and
sampling.

``inpaint`` (Stable Diffusion's inpainting model; Rombach et al. 2022, §4.5): the network sees,
beside xₜ, the mask m (1 = repaint) and the masked image x₀·(1 − m), the repainted region set to
0 (mid-grey). A latent model gets the masked *image* encoded by its autoencoder (posterior mean)
and the mask area-averaged down to the latent grid, so 1 + c channels either way (c = the
model's channels). Trained with random masks (:func:`difflab.masks.random_masks`), fully masked
images included, the model also generates from nothing: an all-ones mask and a zero image.

``low_res`` (super-resolution: SR3, Saharia et al. 2021; ADM's upsamplers, Dhariwal & Nichol
2021 §4.2; Cascaded Diffusion Models, Ho et al. 2022): the network sees the low-resolution image
upsampled to its grid (bicubic by default). Training pairs come from the high-resolution images
by area downsampling (:func:`downsample`). With noise-conditioning augmentation (Ho et al. 2022,
§4.2) the low-resolution image is first noised to a random level a ∈ [0, a_max] along a cosine
path, cos(aπ/2)·x + sin(aπ/2)·ε (:func:`noise_augment`: a = 0 clean, a = 1 pure noise), and the
network is told a (``aug_level``); sampling picks one level. A latent model gets the low-resolution
*pixels* resized to its latent grid, as Stable Diffusion's ×4 upscaler does.

``source`` (instruct-pix2pix, Brooks et al. 2023): the image to edit, beside a written
instruction (cross-attention). A latent model gets the source's latents as the reference code
makes them: the posterior mean, *without* the latent scale. Unlike the others this condition is
dropped in training and guided at sampling (:class:`difflab.guidance.InstructPix2PixGuidance`):
its null is the zero image.

The inpainting and super-resolution conditions are never dropped for classifier-free guidance:
both branches see the image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IMAGE_CONDITIONS = ("inpaint", "low_res", "source")
UPSAMPLING = ("bicubic", "bilinear", "nearest")


def check_image_condition(kind: str | None) -> None:
    if kind is not None and kind not in IMAGE_CONDITIONS:
        raise ValueError(f"unknown image condition {kind!r}; choose one of: {', '.join(IMAGE_CONDITIONS)} (or null)")


def concat_channels(kind: str | None, channels: int, pixel_channels: int | None = None) -> int:
    """The channels the condition adds to a network whose images (or latents) have ``channels``
    (``pixel_channels``: a latent model's image channels)."""
    check_image_condition(kind)
    if kind is None:
        return 0
    if kind == "source":
        return channels
    return 1 + channels if kind == "inpaint" else (pixel_channels or channels)


@torch.no_grad()
def inpaint_condition(mask: Tensor, pixels: Tensor, latent=None) -> Tensor:
    """The ``concat`` input of an inpainting model: (N, 1 + c, h, w) in the model's space.

    Args:
        mask: (N, 1, H, W) in [0, 1] at pixel size, > 0 where the image is repainted (a feathered
            mask counts as repainted wherever it is above 0).
        pixels: the images (N, C, H, W) in [−1, 1].
        latent: a latent model's :class:`~difflab.latent.LatentSpace` (None for a pixel model).
    """
    mask = (mask > 0).to(pixels.dtype)
    masked = pixels * (1 - mask)
    if latent is None:
        return torch.cat([mask, masked], dim=1)
    z = latent.encode(masked, mean=True)
    return torch.cat([F.interpolate(mask, size=tuple(z.shape[-2:]), mode="area"), z], dim=1)


def downsample(pixels: Tensor, side: int) -> Tensor:
    """The low-resolution images of a super-resolution pair: area averaging to ``side`` × ``side``."""
    if side >= pixels.shape[-1]:
        raise ValueError(f"the low resolution {side} must be below the images' {pixels.shape[-1]}")
    return F.interpolate(pixels, size=(side, side), mode="area")


def noise_augment(low: Tensor, level: Tensor, noise: Tensor) -> Tensor:
    """cos(aπ/2)·low + sin(aπ/2)·ε for each image's level a (N,) in [0, 1] (variance preserving)."""
    angle = level.to(low.dtype).view(-1, 1, 1, 1) * (torch.pi / 2)
    return torch.cos(angle) * low + torch.sin(angle) * noise


def upsample(low: Tensor, size: tuple[int, int], mode: str = "bicubic") -> Tensor:
    """The low-resolution images resized to the network's grid ``size`` (H, W)."""
    if mode not in UPSAMPLING:
        raise ValueError(f"unknown upsampling {mode!r}; choose one of: {', '.join(UPSAMPLING)}")
    if tuple(low.shape[-2:]) == tuple(size):
        return low
    corners = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(low, size=tuple(size), mode=mode, **corners)


def low_res_condition(low: Tensor, level: Tensor, noise: Tensor, size: tuple[int, int],
                      mode: str = "bicubic") -> Tensor:
    """The ``concat`` input of a super-resolution model: the low-resolution images (N, C, h, w) in
    [−1, 1], noise-augmented to ``level`` (N,) with ``noise`` like them, upsampled to ``size``."""
    return upsample(noise_augment(low, level, noise), size, mode)


@torch.no_grad()
def source_condition(pixels: Tensor, latent=None) -> Tensor:
    """The ``concat`` input of an instruct-pix2pix model: the source images (N, C, H, W) in
    [−1, 1], or for a latent model their unscaled posterior-mean latents."""
    return pixels if latent is None else latent.encode(pixels, mean=True) / latent.scale


def three_way_dropout(u: Tensor, p: float) -> tuple[Tensor, Tensor]:
    """instruct-pix2pix's conditioning dropout from one uniform draw u (N,) per image: the text
    alone is dropped for u < p, both for p ≤ u < 2p, the image alone for 2p ≤ u < 3p (so each
    case has probability p). Returns (drop_text, drop_image) as bool (N,)."""
    return u < 2 * p, (u >= p) & (u < 3 * p)
