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

from ... import losses
from ...checkpoint import LORA_KIND, weights_sha256
from ...images import save_grid
from ...models.lora_files import save_lora
from ...pipelines.generate import SamplerSettings, plan, run
from ...pipelines.png_info import png_text
from ..config import Config, ConfigError
from .base import StepLoss, TrainingData
from .diffusion import DiffusionObjective
from .frozen_base import load_base

LORA_FILE = "lora.safetensors"


class LoraObjective(DiffusionObjective):
    """A LoRA on a frozen base run; ``difflab train-lora``."""

    kind = LORA_KIND

    def __init__(self, config: Config, data: TrainingData):
        lora = config.lora
        self.base = base = load_base(lora.base, "lora.base", "--base RUN", data)
        dataset = data.dataset
        if base.text_encoder is not None:  # every picture captioned with the prompt
            if not lora.prompt:
                raise ConfigError("the base is text-conditioned: give the training images' prompt (--prompt TEXT, "
                                  "e.g. 'a photo of a sks boot')")
            dataset.captions = [lora.prompt] * len(dataset)
        elif lora.prompt:
            raise ConfigError("the base takes no text: drop --prompt (a class-conditional base takes --class NAME)")
        if base.num_classes:
            names = [name.lower() for name in base.class_names]
            if not lora.class_name or lora.class_name.lower() not in names:
                raise ConfigError(f"the base is class-conditional: give the training images' class (--class NAME, one "
                                  f"of {', '.join(base.class_names)})")
            dataset.class_names = list(base.class_names)
            dataset.labels = torch.full((len(dataset),), names.index(lora.class_name.lower()), dtype=torch.long)
        super().__init__(config, data)
        self.schedule = base.schedule
        self.base_hash = weights_sha256(base.network.state_dict())
        self.network = None

    def uses_labels(self) -> bool:
        return self.base.num_classes > 0

    def text_encoder_config(self) -> dict | None:
        return self.base.record.text_encoder

    def model_spec(self) -> dict:
        lora = self.config.lora
        return {"name": "lora", "base": self.base.record.model, "rank": lora.rank, "alpha": lora.alpha,
                "targets": lora.targets, "dropout": lora.dropout, "rslora": lora.rslora}

    def attach(self, model) -> None:
        super().attach(model)
        model.bind(self.base.network)  # the adapters on the real base, not the network they were built beside
        self.network = model

    def loss(self, net, inputs) -> StepLoss:
        d, base = self.config.diffusion, self.base
        out = losses.diffusion_loss(
            net, inputs["x0"], self.schedule, prediction=base.prediction, weighting=d.weighting,
            min_snr_gamma=d.min_snr_gamma, learned_variance=base.learned_variance, vlb_weight=d.vlb_weight,
            cond=inputs["cond"], t=inputs["t"], noise=inputs["noise"],
        )
        return StepLoss(out.loss)

    def with_weights(self, model):
        """A context in which the base runs with ``model``'s adapters (the EMA's) instead of the live ones."""
        return _Swapped(self.network, model, self.base.network)

    @torch.no_grad()
    def preview(self, model, path: Path) -> Path:
        """Samples of the base with the EMA adapters, for the training prompt or class."""
        n, lora = self.config.train.num_preview, self.config.lora
        with self.with_weights(model):
            labels = self.data.dataset.labels[:1].repeat(n) if self.labels is not None else None
            job = plan(self.base, n, SamplerSettings.resolve(self.base), seed=self.config.train.seed, labels=labels,
                       prompts=[lora.prompt] if lora.prompt else None)
            out = run(job, batch_size=n)
        return save_grid(out.images, path, upscale=max(1, 64 // out.images.shape[-1]),
                         pnginfo=png_text(out.grid_record()))

    def base_info(self) -> dict:
        return {"path": str(self.config.lora.base), "step": self.base.record.step, "weights_sha256": self.base_hash}

    def checkpoint_config(self, init_from: dict | None = None) -> dict:
        cfg = self.config
        return {"model": self.spec, "base": self.base_info(), "prompt": cfg.lora.prompt,
                "class_name": cfg.lora.class_name, "image_shape": list(self.data.shape),
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

