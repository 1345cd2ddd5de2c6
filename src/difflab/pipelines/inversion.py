"""DDIM inversion of images to the noise that DDIM sampling maps back to them.

DDIM's deterministic update (Song et al. 2021, eq. 12 with η = 0) is an ODE step, so running it
from x₀ towards σ_max with the model's x̂₀ at each level gives the starting noise x_T whose DDIM
sample is (up to the discretisation error) the image again (Dhariwal & Nichol 2021, appendix F;
the starting point of prompt-to-prompt editing of real images, Mokady et al. 2023). The solver is
:func:`difflab.sampling.invert`; this module composes it with a loaded model: the images are
encoded (latent models), the conditioning is the run's (class or prompt), and there is no
guidance (w = 1), so ``generate(..., noise=noise, method="ddim", guidance=Guidance(scale=1))``
with the same steps, spacing and conditioning maps the noise back.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..data import to_float
from ..sampling import invert
from .generate import SamplerSettings, plan
from .guidance_policy import Guidance
from .loading import DiffusionModel


def invert_images(model: DiffusionModel, images: Tensor, *, steps: int | None = None, spacing: str | None = None,
                  class_index: int | None = None, prompt: str | None = None) -> Tensor:
    """The unit-scale DDIM noise (N, C, H, W) of ``images``, in the model's space (latents for a latent model).

    Args:
        model: the loaded diffusion model.
        images: uint8 (N, C, H, W) in [0, 255], or float in [−1, 1], at the model's pixel size.
        steps, spacing: the DDIM walk (default: the checkpoint's sample settings); sample back with the same.
        class_index: the class of a class-conditional model (default: every class in turn, as sampling does).
        prompt: the caption of a text-conditioned model (every image gets it).

    Raises:
        ValueError: images of another shape than the model's, no images, or a missing prompt.
    """
    pixel_shape = tuple(model.latent.image_shape if model.latent is not None else model.image_shape)
    if images.ndim != 4 or len(images) == 0 or tuple(images.shape[1:]) != pixel_shape:
        raise ValueError(f"inversion needs images of shape (N, {', '.join(map(str, pixel_shape))}) (the model's), "
                         f"got {tuple(images.shape)}")
    x0 = (to_float(images) if images.dtype == torch.uint8 else images.float()).to(model.device)
    if model.latent is not None:
        x0 = model.latent.encode(x0)
    settings = SamplerSettings.resolve(model, "ddim", steps, spacing)
    job = plan(model, len(x0), settings, class_index=class_index, guidance=Guidance(scale=1.0),
               prompts=[prompt] if prompt is not None else None)
    with torch.no_grad():
        return invert(job.denoiser, x0, steps=settings.steps, spacing=settings.spacing,
                      cond=job.cond(range(len(x0))))
