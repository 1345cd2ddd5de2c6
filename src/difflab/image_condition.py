"""Images concatenated to a diffusion network's input (``concat``, see
:mod:`difflab.models.conditioning`): what each kind holds, built the same way for training and
sampling.

``inpaint`` (Stable Diffusion's inpainting model; Rombach et al. 2022, §4.5): the network sees,
beside xₜ, the mask m (1 = repaint) and the masked image x₀·(1 − m), the repainted region set to
0 (mid-grey). A latent model gets the masked *image* encoded by its autoencoder (posterior mean)
and the mask area-averaged down to the latent grid, so 1 + c channels either way (c = the
model's channels). Trained with random masks (:func:`difflab.masks.random_masks`), fully masked
images included, the model also generates from nothing: an all-ones mask and a zero image.
The condition is never dropped for classifier-free guidance: both branches see it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IMAGE_CONDITIONS = ("inpaint",)


def check_image_condition(kind: str | None) -> None:
    if kind is not None and kind not in IMAGE_CONDITIONS:
        raise ValueError(f"unknown image condition {kind!r}; choose one of: {', '.join(IMAGE_CONDITIONS)} (or null)")


def concat_channels(kind: str | None, channels: int) -> int:
    """The channels the condition adds to a network whose images (or latents) have ``channels``."""
    check_image_condition(kind)
    return 0 if kind is None else 1 + channels


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
