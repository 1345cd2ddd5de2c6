"""What LoRA and DreamBooth share: a frozen base run and a few pictures of one subject under one
prompt (a text base) or one class (a class-conditional base), trained on the base's own loss."""

from __future__ import annotations

from abc import abstractmethod

import torch

from ... import losses
from ...checkpoint import weights_sha256
from ..config import Config, ConfigError
from .base import StepLoss, TrainingData
from .diffusion import DiffusionObjective
from .frozen_base import load_base


class PersonalisationObjective(DiffusionObjective):
    """A diffusion objective on a few pictures beside a frozen base run. Subclasses say where the
    settings are (:meth:`settings`: base, prompt, class name, and the config key naming them)."""

    ships_tuned_levels = False  # a few pictures' fine-tune: `difflab tune-steps` tunes it on request

    @abstractmethod
    def settings(self, config: Config) -> tuple[str | None, str | None, str | None, str]:
        """(base run, prompt, class name, the config section naming them) from ``config``."""

    def __init__(self, config: Config, data: TrainingData):
        path, prompt, class_name, section = self.settings(config)
        self.base = base = load_base(path, f"{section}.base", "--base RUN", data)
        dataset = data.dataset
        if base.text_encoder is not None:  # every picture captioned with the prompt
            if not prompt:
                raise ConfigError("the base is text-conditioned: give the training images' prompt (--prompt TEXT, "
                                  "e.g. 'a photo of a sks boot')")
            dataset.captions = [prompt] * len(dataset)
        elif prompt:
            raise ConfigError("the base takes no text: drop the prompt (a class-conditional base takes --class NAME)")
        if base.num_classes:
            names = [name.lower() for name in base.class_names]
            if not class_name or class_name.lower() not in names:
                raise ConfigError(f"the base is class-conditional: give the training images' class (--class NAME, one "
                                  f"of {', '.join(base.class_names)})")
            dataset.class_names = list(base.class_names)
            dataset.labels = torch.full((len(dataset),), names.index(class_name.lower()), dtype=torch.long)
        self.prompt, self.section = prompt, section
        super().__init__(config, data)
        self.schedule = base.schedule  # the base's diffusion: schedule, prediction, variance
        self.base_hash = weights_sha256(base.network.state_dict())

    def uses_labels(self) -> bool:
        return self.base.num_classes > 0

    def text_encoder_config(self) -> dict | None:
        return self.base.record.text_encoder

    def loss(self, net, inputs) -> StepLoss:
        d, base = self.config.diffusion, self.base
        out = losses.diffusion_loss(
            net, inputs["x0"], self.schedule, prediction=base.prediction, weighting=d.weighting,
            min_snr_gamma=d.min_snr_gamma, learned_variance=base.learned_variance, vlb_weight=d.vlb_weight,
            cond=inputs["cond"], t=inputs["t"], noise=inputs["noise"],
        )
        return StepLoss(out.loss)

    def base_info(self) -> dict:
        path = self.settings(self.config)[0]
        return {"path": str(path), "step": self.base.record.step, "weights_sha256": self.base_hash}
