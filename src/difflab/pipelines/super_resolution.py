"""Super-resolution sampling: the low-resolution inputs of an upsampler, and cascades.

A super-resolution model (``diffusion.image_condition: low_res``, :mod:`difflab.image_condition`)
samples like any other with its low-resolution images given (``difflab sample RUN --cond-image
IMG_OR_DIR``, ``pipe(cond_image=...)``). A *cascade* (Ho et al. 2022) samples a base model and
hands its images, stage by stage, to upsamplers, each stage getting the same class labels,
prompts and seeds as the base: :func:`cascade`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from torch import Tensor

from .generate import generate
from .guidance_policy import Guidance
from .img2img import InitImages, load_init_images_at
from .loading import DiffusionModel


def load_cond_images(source, model: DiffusionModel) -> InitImages:
    """A super-resolution model's low-resolution inputs from ``source`` (what
    :func:`~.img2img.load_init_images` takes: paths, a folder, PIL images, uint8 tensors), at its
    low-resolution size — resized (bicubic) with a warning where they differ — and its channels."""
    low_res = model.record.low_res
    if low_res is None and model.image_condition != "source":
        raise ValueError("this model takes no conditioning image (it was trained without "
                         "diffusion.image_condition: low_res or source): drop --cond-image")
    pixels = model.latent.image_shape if model.latent is not None else model.image_shape
    channels = model.record.train_config.get("data", {}).get("channels")
    side = low_res["size"] if low_res is not None else pixels[-1]  # an instruct-pix2pix model's: its own size
    channels = channels or pixels[0]
    native = load_init_images_at(source, channels, None, what="conditioning image")
    sizes = sorted({tuple(image.shape[-2:]) for image in native.images})
    if sizes != [(side, side)]:
        warnings.warn(f"the conditioning images are {', '.join(f'{w}x{h}' for h, w in sizes)}, the model takes "
                      f"{side}x{side} images: resized", stacklevel=2)
    return load_init_images_at(source, channels, (side, side), what="conditioning image")


@dataclass
class CascadeStage:
    """One stage's images (uint8 (N, C, H, W)) and the run that made them."""

    run: str
    images: Tensor


def cascade(base: DiffusionModel, upsamplers: list[DiffusionModel], n: int, *, seed: int = 0,
            class_index: int | None = None, prompts: list[str] | None = None, aug_level: float | None = None,
            guidance_scale: float | None = None, steps: int | None = None, method: str | None = None,
            batch_size: int = 256, progress: bool = False) -> list[CascadeStage]:
    """Sample n images of ``base`` and upsample them through ``upsamplers`` in turn; every stage
    uses the same seeds, class labels (every class in turn, or ``class_index``) and prompts.
    ``aug_level``, ``guidance_scale``, ``steps`` and ``method`` apply to every stage (None: each
    checkpoint's own). Returns every stage's images, the base's first."""
    guidance = Guidance(scale=guidance_scale)
    images, labels = generate(base, n, seed=seed, class_index=class_index, prompts=prompts, guidance=guidance,
                              steps=steps, method=method, batch_size=batch_size, progress=progress)
    stages = [CascadeStage(str(base.path), images)]
    for upsampler in upsamplers:
        low_res = upsampler.record.low_res
        if low_res is None:
            raise ValueError(f"{upsampler.path} is not a super-resolution model (diffusion.image_condition: low_res)")
        if low_res["size"] != images.shape[-1]:
            raise ValueError(f"{upsampler.path} upsamples {low_res['size']}-pixel images, the stage before makes "
                             f"{images.shape[-1]}-pixel ones: order the stages by resolution")
        same_classes = upsampler.num_classes and labels is not None  # each image under its base class
        images, _ = generate(upsampler, n, seed=seed, labels=labels if same_classes else None, prompts=prompts,
                             cond_images=InitImages(images, [None] * n), aug_level=aug_level, guidance=guidance,
                             steps=steps, method=method, batch_size=batch_size)
        stages.append(CascadeStage(str(upsampler.path), images))
    return stages
