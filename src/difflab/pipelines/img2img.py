"""Image-to-image (SDEdit, Meng et al. 2022): the starting images of an edit.

An img2img run is text-to-image with another start: the input, resized to the model's size (and
encoded by a latent model's autoencoder), noised to the first level of the truncated walk
(:func:`~difflab.sampling.spacing.strength_walk`), then sampled from there by the same
:func:`~difflab.pipelines.generate.batches`. This module only turns what the user gives — paths,
a folder, PIL images, uint8 tensors — into uint8 (N, C, H, W) images at the model's pixel size,
remembering where each came from (the PNG record's ``init_image``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..data.image_folder import IMAGE_EXTENSIONS
from ..errors import UserError

STRENGTH_MODES = ("diffusers", "fixed")


@dataclass
class InitImages:
    """uint8 (N, C, H, W) images at the model's pixel size, and the file each came from (None for
    an image given in memory)."""

    images: Tensor
    paths: list[str | None]

    def __len__(self) -> int:
        return len(self.images)

    def repeat_to(self, n: int) -> InitImages:
        """Image i of n is input i mod N (one input, many seeds: n variations of it)."""
        index = [i % len(self) for i in range(n)]
        return InitImages(self.images[index], [self.paths[i] for i in index])


def pixel_shape(model) -> tuple[int, int, int]:
    """(C, H, W) of the model's images (a latent model's autoencoder's pixels)."""
    return tuple(model.latent.image_shape) if model.latent is not None else tuple(model.image_shape)


def check_strength(strength: float | None, mode: str = "diffusers") -> None:
    """One clear error for a strength outside [0, 1] or an unknown step convention."""
    if mode not in STRENGTH_MODES:
        raise ValueError(f"unknown strength step convention {mode!r}; choose one of: {', '.join(STRENGTH_MODES)}")
    if strength is not None and not (isinstance(strength, (int, float)) and 0.0 <= strength <= 1.0):
        raise ValueError(f"strength must be in [0, 1] (0 = the input unchanged, 1 = from pure noise), got {strength}")


def _read(path: Path, channels: int, size: tuple[int, int] | None, what: str = "init image") -> Tensor:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise UserError(f"{what} {path} does not exist: give an image file or a folder of images")
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            return _resize(image, size)
    except (UnidentifiedImageError, OSError) as error:
        raise UserError(f"{what} {path} cannot be read as an image ({error}); give a PNG, JPEG or WebP") from None


def _resize(image, size: tuple[int, int] | None) -> Tensor:
    from PIL import Image

    height, width = size if size is not None else image.size[::-1]
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BICUBIC)
    array = np.asarray(image, dtype=np.uint8)
    array = array[:, :, None] if array.ndim == 2 else array
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def load_init_images(source, model, native: bool = False) -> InitImages:
    """The init images of ``source`` — a path to an image or a folder of images (sorted by name), a
    PIL image, a uint8 tensor (C, H, W) or (N, C, H, W), or a list of these — at the model's pixel
    size and channels (resized bicubically where they differ); with ``native`` at their own size,
    which they must share (inpainting only the masked area, :mod:`.inpaint_area`)."""
    channels, height, width = pixel_shape(model)
    if native:
        return _same_size(load_init_images_at(source, channels, None))
    return load_init_images_at(source, channels, (height, width))


def _same_size(images: InitImages) -> InitImages:
    sizes = sorted({tuple(image.shape[-2:]) for image in images.images})
    if len(sizes) > 1:
        raise UserError(f"the init images have different sizes ({', '.join(f'{w}x{h}' for h, w in sizes)}): "
                        "inpainting only the masked area keeps each image's size, so give images of one size")
    return InitImages(torch.stack(list(images.images)), images.paths)


def load_init_images_at(source, channels: int, size: tuple[int, int] | None,
                        what: str = "init image") -> InitImages:
    """:func:`load_init_images` at ``size`` (H, W), or each image's own size for None (a list of
    (C, H, W) tensors then: they may differ)."""
    items = source if isinstance(source, (list, tuple)) else [source]
    images, paths = [], []
    for item in items:
        if isinstance(item, (str, Path)):
            path = Path(item)
            if path.is_dir():
                files = sorted(p for p in path.rglob("*") if p.name.lower().endswith(IMAGE_EXTENSIONS))
                if not files:
                    raise UserError(f"{what} folder {path} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
                images += [_read(f, channels, size, what) for f in files]
                paths += [str(f) for f in files]
            else:
                images.append(_read(path, channels, size, what))
                paths.append(str(path))
        elif isinstance(item, Tensor):
            batch = item[None] if item.ndim == 3 else item
            if batch.dtype != torch.uint8 or batch.ndim != 4 or batch.shape[1] != channels:
                raise ValueError(f"a tensor given as {what} must be uint8 (N, {channels}, H, W) or ({channels}, H, W), "
                                 f"got {batch.dtype} {tuple(item.shape)}")
            if size is not None and tuple(batch.shape[2:]) != tuple(size):
                batch = torch.nn.functional.interpolate(batch.float(), tuple(size), mode="bicubic",
                                                        align_corners=False).round().clamp(0, 255).to(torch.uint8)
            images += list(batch.cpu())
            paths += [None] * len(batch)
        elif hasattr(item, "convert") and hasattr(item, "size"):  # a PIL image
            images.append(_resize(item.convert("L" if channels == 1 else "RGB"), size))
            paths.append(None)
        else:
            raise ValueError(f"each {what} must be a path, a PIL image or a uint8 tensor, got {type(item).__name__}")
    return InitImages(torch.stack(images) if size is not None else images, paths)


def encode(model, images: Tensor) -> Tensor:
    """The images (uint8) in the model's space: [−1, 1] pixels, or a latent model's latents (the
    autoencoder's mean, so the same image gives the same latents)."""
    from ..data.convert import to_float

    x = to_float(images.to(model.device))
    return x if model.latent is None else model.latent.encode(x, mean=True)
