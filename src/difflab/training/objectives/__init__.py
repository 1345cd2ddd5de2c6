"""What the trainer trains: one :class:`Objective` per kind of model (see :mod:`.base`).

``model.name`` picks the objective: ``noisy_classifier`` → :class:`NoisyClassifierObjective`,
``autoencoder_kl`` / ``autoencoder_vq`` → :class:`AutoencoderObjective`, any other network (U-Net,
DiT) → :class:`DiffusionObjective`. ``train(config, objective=MyObjective)`` trains any other
subclass; docs/training.md shows how to write one.
"""

from __future__ import annotations

from ...models import AUTOENCODERS
from ..config import Config
from .adversarial import AdversarialDistillationObjective
from .autoencoder import (
    AutoencoderObjective,
    autoencoder_loss,
    autoencoder_spec,
    check_random_crop,
    evaluate,
    preview_images,
    reconstruction_grid,
)
from .base import Inputs, Objective, StepLoss, TrainingData, take_rows
from .classifier import NoisyClassifierObjective
from .consistency import ConsistencyDistillationObjective
from .controlnet import ControlNetObjective
from .diffusion import DiffusionObjective, text_encoder_config
from .distill import DistillationObjective
from .dreambooth import DreamBoothLoraObjective, DreamBoothObjective
from .lora import LoraObjective
from .textual_inversion import TextualInversionObjective

# model.name → objective; every other model name trains a diffusion model.
OBJECTIVES: dict[str, type[Objective]] = {
    "noisy_classifier": NoisyClassifierObjective,
    "controlnet": ControlNetObjective,
    "lora": LoraObjective,
    **{name: AutoencoderObjective for name in AUTOENCODERS},
}


def objective_for(config: Config) -> type[Objective]:
    """The objective class that trains ``config.model.name``."""
    return OBJECTIVES.get(config.model.name, DiffusionObjective)


__all__ = [
    "OBJECTIVES", "AdversarialDistillationObjective", "AutoencoderObjective", "ConsistencyDistillationObjective",
    "ControlNetObjective", "DreamBoothLoraObjective",
    "DreamBoothObjective", "LoraObjective", "TextualInversionObjective",
    "DiffusionObjective", "DistillationObjective", "Inputs", "NoisyClassifierObjective", "Objective",
    "StepLoss", "TrainingData", "autoencoder_loss", "autoencoder_spec", "check_random_crop", "evaluate",
    "objective_for", "preview_images", "reconstruction_grid", "take_rows",
    "text_encoder_config",
]
