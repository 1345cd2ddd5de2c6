"""The LoRA objective: low-rank adapters (:mod:`difflab.models.lora`) trained on a frozen base's
own diffusion loss, for a subject or style given by a few pictures (Ryu's LoRA for diffusion;
the instance half of DreamBooth, Ruiz et al. 2023).

``difflab train-lora CONFIG --base RUN --images DIR --prompt "a photo of a sks boot"``: every
training image gets the prompt as its caption (a text base) or ``lora.class_name`` as its label
(a class-conditional base); only the adapters train (the base's schedule, prediction and
variance); the checkpoint (kind ``lora``) holds the adapters, and the finished run writes
``lora.safetensors`` (difflab's LoRA file, with the base's path and weights' SHA-256), which
``difflab sample BASE --lora FILE`` loads.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ...checkpoint import LORA_KIND
from ...images import save_grid
from ...models.lora_files import save_lora
from ...pipelines.generate import SamplerSettings, plan, run
from ...pipelines.png_info import png_text
from ..config import Config
from .base import TrainingData
from .personalisation import PersonalisationObjective

LORA_FILE = "lora.safetensors"


class LoraObjective(PersonalisationObjective):
    """A LoRA on a frozen base run; ``difflab train-lora``."""

    kind = LORA_KIND

    def settings(self, config: Config) -> tuple[str | None, str | None, str | None, str]:
        return config.lora.base, config.lora.prompt, config.lora.class_name, "lora"

    def __init__(self, config: Config, data: TrainingData):
        super().__init__(config, data)
        self.network = None

    def model_spec(self) -> dict:
        lora = self.config.lora
        return {"name": "lora", "base": self.base.record.model, "rank": lora.rank, "alpha": lora.alpha,
                "targets": lora.targets, "dropout": lora.dropout, "rslora": lora.rslora}

    def attach(self, model) -> None:
        super().attach(model)
        model.bind(self.base.network)  # the adapters on the real base, not the network they were built beside
        self.network = model

    def with_weights(self, model):
        """A context in which the base runs with ``model``'s adapters (the EMA's) instead of the live ones."""
        return _Swapped(self.network, model, self.base.network)

    @torch.no_grad()
    def preview(self, model, path: Path) -> Path:
        """Samples of the base with the EMA adapters, for the training prompt or class."""
        n = self.config.train.num_preview
        with self.with_weights(model):
            labels = self.data.dataset.labels[:1].repeat(n) if self.labels is not None else None
            job = plan(self.base, n, SamplerSettings.resolve(self.base), seed=self.config.train.seed, labels=labels,
                       prompts=[self.prompt] if self.prompt else None)
            out = run(job, batch_size=n)
        return save_grid(out.images, path, upscale=max(1, 64 // out.images.shape[-1]),
                         pnginfo=png_text(out.grid_record()))

    def checkpoint_config(self, init_from: dict | None = None) -> dict:
        cfg = self.config
        return {"model": self.spec, "base": self.base_info(), "prompt": self.prompt,
                "class_name": self.settings(cfg)[2], "image_shape": list(self.data.shape),
                "train_config": cfg.to_dict(), **({"init_from": init_from} if init_from else {})}

    def finalize(self, model) -> dict:
        """Write the EMA adapters as ``lora.safetensors`` beside the checkpoint."""
        path = save_lora(Path(self.config.train.out_dir) / LORA_FILE, model, base=self.base_info())
        return {"lora_file": str(path)}


class _Swapped:
    """Run ``shadow``'s adapters on ``network`` in place of ``live``'s, for the duration of a ``with``."""

    def __init__(self, live, shadow, network):
        self.live, self.shadow, self.network = live, shadow, network

    def __enter__(self):
        if self.shadow is not self.live:
            self.live.unbind()
            self.shadow.bind(self.network)

    def __exit__(self, *exc):
        if self.shadow is not self.live:
            self.shadow.unbind()
            self.live.bind(self.network)

