"""Inpainting: masks, and the two ways of filling them with any model.

A mask is float (N, 1, H, W) in [0, 1] at the model's pixel size, 1 (white in a PNG) where the
image is repainted. It comes from a PNG, a box (``--mask-box x0,y0,x1,y1``, pixels, end
exclusive) or a named shape (:data:`difflab.masks.MASK_SHAPES`); one of another size is resized, with a warning.

* **blend** (any sampler): after each step the known region is replaced by the original noised to
  the step's new level, x = m·x + (1 − m)·(x₀ + σₙ·ε) (ε from the image's own blend stream,
  :func:`blend_seed`), through the sampler's callback (:func:`blend_callback`);
* **repaint**: :func:`difflab.sampling.repaint.repaint` (Lugmayr et al. 2022), which goes up and
  down in noise.

Both end with the original pasted back in pixel space (:meth:`Inpainting.paste`): pixels where
the mask is 0 are the input's, bit for bit — for a latent model too, whose decoded latents would
otherwise blur them (``paste_back=False`` keeps the decoded output as it is, as diffusers' SD
inpainting pipeline returns it). ``blur`` feathers the mask inward (so the outside stays exact).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UserError
from ..sampling.common import NoiseSource

INPAINT_MODES = ("blend", "repaint", "model")


def read_mask(path, size: tuple[int, int]) -> Tensor:
    """A mask PNG (white = repaint; grey = partly), as (1, H, W), resized with a warning if needed."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"mask {path} does not exist: give a PNG, white where the image is repainted")
    try:
        with Image.open(path) as image:
            image = image.convert("L")
            image.load()
    except (UnidentifiedImageError, OSError) as error:
        raise UserError(f"mask {path} cannot be read as an image ({error}); give a PNG, white = repaint") from None
    return as_mask(image, size, what=f"mask {path}")


def as_mask(mask, size: tuple[int, int], what: str = "the mask") -> Tensor:
    """A PIL image or a tensor (H, W), (1, H, W) or (N, 1, H, W) — bool, uint8 0..255 or float in
    [0, 1] — as float (N or 1, 1, H, W) at ``size`` (resized bilinearly, with a warning)."""
    import numpy as np

    if hasattr(mask, "convert") and hasattr(mask, "size"):
        mask = torch.from_numpy(np.asarray(mask.convert("L"), dtype=np.uint8).copy())
    if not isinstance(mask, Tensor):
        raise ValueError(f"{what} must be a path, a PIL image or a tensor, got {type(mask).__name__}")
    if mask.dtype == torch.uint8:
        mask = mask.float() / 255
    mask = mask.float()
    mask = mask[None] if mask.ndim == 2 else mask
    mask = mask[None] if mask.ndim == 3 else mask
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"{what} must have one channel: (H, W), (1, H, W) or (N, 1, H, W), got {tuple(mask.shape)}")
    if not torch.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
        raise ValueError(f"{what} must hold values in [0, 1] (float) or 0..255 (uint8)")
    if tuple(mask.shape[-2:]) != tuple(size):
        warnings.warn(f"{what} is {mask.shape[-1]}x{mask.shape[-2]}, the images {size[1]}x{size[0]}: resized",
                      stacklevel=2)
        mask = F.interpolate(mask, size=tuple(size), mode="bilinear", align_corners=False).clamp(0, 1)
    return mask


def feather(mask: Tensor, pixels: float) -> Tensor:
    """The mask feathered inward by a Gaussian of std ``pixels``/2: 1 deep inside, falling towards
    the border, and still exactly 0 outside (so paste-back keeps those pixels bit-exact)."""
    if pixels <= 0:
        return mask
    std = pixels / 2
    radius = max(1, int(3 * std + 0.5))
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / std) ** 2)
    taps = taps / taps.sum()
    outside = F.pad(1 - mask, (radius,) * 4, mode="replicate")
    outside = F.conv2d(outside, taps.view(1, 1, 1, -1))
    outside = F.conv2d(outside, taps.view(1, 1, -1, 1))
    return mask * (1 - outside).clamp(0, 1)


def blend_seed(seed: int) -> int:
    """The seed of image ``seed``'s blend noise: its own stream, apart from the sampler's."""
    return (int(seed) * 0x9E3779B1 + 0x5EED) % (2**63)


@dataclass
class Inpainting:
    """What to repaint and how: ``mask`` (N, 1, H, W) in [0, 1] at pixel size, 1 = repaint;
    ``mode`` blend or repaint; RePaint's ``jump_length`` and ``resample`` (``jump_n_sample``)
    and DDIM η of its steps down; ``source``: how the mask was given (the PNG record);
    ``paste_back``: whether the known pixels of the output are the input's (:meth:`paste`)."""

    mask: Tensor
    mode: str = "blend"
    jump_length: int = 10
    resample: int = 10
    eta: float = 1.0
    blur: float = 0.0
    source: str | None = None
    paste_back: bool = True

    def __post_init__(self):
        if self.mode not in INPAINT_MODES:
            raise ValueError(f"unknown inpainting mode {self.mode!r}; choose one of: {', '.join(INPAINT_MODES)}")
        if self.blur < 0:
            raise ValueError(f"the mask blur must be >= 0 pixels, got {self.blur}")
        self.mask = feather(self.mask.float(), self.blur)

    def repeat_to(self, n: int) -> Inpainting:
        """One mask per image (mask i mod N)."""
        mask = self.mask[[i % len(self.mask) for i in range(n)]]
        copy = Inpainting(mask, self.mode, self.jump_length, self.resample, self.eta, 0.0, self.source,
                          self.paste_back)
        copy.blur = self.blur
        return copy

    def model_mask(self, model, chunk: list[int]) -> Tensor:
        """The masks of these images in the model's space (area-averaged down to a latent model's size)."""
        mask = self.mask[chunk].to(model.device)
        if tuple(mask.shape[-2:]) != tuple(model.image_shape[-2:]):
            mask = F.interpolate(mask, size=tuple(model.image_shape[-2:]), mode="area")
        return mask

    def paste(self, images: Tensor, originals: Tensor, chunk: list[int]) -> Tensor:
        """uint8 images with the originals pasted back where the mask is below 1 (exactly where it is 0)."""
        mask = self.mask[chunk].cpu()
        mixed = mask * images.float() + (1 - mask) * originals.float()
        return mixed.round().clamp(0, 255).to(torch.uint8)

    def record(self) -> dict:
        record = {"inpaint": self.mode, "mask": self.source, "mask_blur": self.blur or None,
                  **({} if self.paste_back else {"paste_back": False})}
        if self.mode == "repaint":
            record.update(repaint_jumps=self.jump_length, repaint_resample=self.resample)
        return record


def blend_callback(known: Tensor, mask: Tensor, seeds: list[int], inner=None):
    """The sampler callback of blend inpainting: after each step the known region (mask 0) becomes
    the original ``known`` (in the sampler's space) noised to the step's new level, with ε from each
    image's blend stream; ``inner``, a user's callback, runs first."""
    source = NoiseSource(seeds=[blend_seed(s) for s in seeds])

    def callback(step):
        x = step.x
        if inner is not None:
            replacement = inner(step)
            x = replacement if replacement is not None else x
        level = known + step.sigma_next * source(x) if step.sigma_next > 0 else known
        return mask * x + (1 - mask) * level

    return callback
