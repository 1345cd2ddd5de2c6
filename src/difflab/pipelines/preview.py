"""Training previews: a grid from the weights in memory, made by the same path as ``difflab sample``.

A preview at seed s is the grid ``difflab sample RUN --seed s --n N`` (with the same prompts)
gives from the checkpoint written at that step, to the bit (tests/test_pipeline.py): the trainer
hands its EMA network and the checkpoint's record to :func:`preview_grid`, which runs
:func:`~difflab.pipelines.generate.plan` and :func:`~difflab.pipelines.generate.run`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import ModelRecord
from ..images import save_grid
from ..latent import LatentSpace
from .generate import SamplerSettings, plan, run
from .img2img import InitImages
from .loading import DiffusionModel
from .png_info import png_text


@torch.no_grad()
def preview_grid(network: torch.nn.Module, record: ModelRecord, path: str | Path, *, n: int, seed: int,
                 prompts: list[str] | None = None, latent: LatentSpace | None = None,
                 cond_images: InitImages | None = None) -> Path:
    """A grid of n samples of ``network`` (every class in turn for a class-conditional model,
    ``prompts`` for a text model, ``cond_images`` upsampled by a super-resolution model) at the
    checkpoint's sample settings and guidance scale, with its generation parameters in the PNG."""
    was_training = network.training
    network.eval()
    try:
        model = DiffusionModel.from_network(network, record, latent)
        out = run(plan(model, n, SamplerSettings.resolve(model), seed=seed, prompts=prompts, cond_images=cond_images),
                  batch_size=n)
    finally:
        network.train(was_training)
    return save_grid(out.images, path, nrow=model.num_classes or None, upscale=max(1, 64 // out.images.shape[-1]),
                     pnginfo=png_text(out.grid_record()))
