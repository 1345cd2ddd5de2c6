"""Trained checkpoints as the objects sampling works with: a diffusion model and ADM's noisy classifier."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checkpoint import CLASSIFIER_KIND, DIFFUSION_KIND, ModelRecord, find_checkpoint, load_state
from ..denoiser import Denoiser
from ..device import memory_format
from ..latent import LatentSpace, x0_clip
from ..models import load_frozen
from ..schedules import NoiseSchedule, schedule_from_config


def run_relative(text_encoder: dict | None, run: Path) -> dict | None:
    """A text encoder config whose relative ``folder`` (an imported CLIP's files, kept in the run:
    :mod:`difflab.interop.importer`) is made absolute against the run folder."""
    folder = (text_encoder or {}).get("folder")
    if folder is None or Path(folder).is_absolute():
        return text_encoder
    return {**text_encoder, "folder": str(run / folder)}


@dataclass
class DiffusionModel:
    """A network with what sampling needs to know about it (its checkpoint's :class:`ModelRecord`).

    Attributes:
        network: the network, frozen (eval mode, no gradients).
        record: the checkpoint's typed ``config.json``.
        schedule: the noise schedule it was trained with.
        latent: a latent model's autoencoder, which decodes its samples; None for a pixel model.
        path: the checkpoint folder it was loaded from (None for a model built in memory, e.g. the
            trainer's previews).
        loras: the LoRAs loaded onto the network (:mod:`difflab.pipelines.lora`).
    """

    network: torch.nn.Module
    record: ModelRecord
    schedule: NoiseSchedule
    latent: LatentSpace | None = None
    path: Path | None = None
    loras: list = field(default_factory=list)  # LoRAs on the network (pipelines/lora.py), in loading order
    embeddings: list = field(default_factory=list)  # learned words (textual inversion, pipelines/embeddings.py)

    @classmethod
    def load(cls, path: str | Path, use_ema: bool = True, device: str | torch.device = "cpu") -> DiffusionModel:
        """Load ``path`` (a run folder or its ``checkpoint/``); the EMA weights by default. The
        autoencoder of a latent model is stored in the same checkpoint."""
        config, tensors, _ = load_state(path, kind=DIFFUSION_KIND, with_extra=False)  # no optimizer state
        record = ModelRecord.from_dict(config, path)
        record.text_encoder = run_relative(record.text_encoder, find_checkpoint(path).parent)
        weights = tensors["ema" if use_ema else "model"]
        # channels-last: oneDNN's and cuDNN's preferred convolution layout (~20% faster sampling
        # of the demo U-Net on 2 CPU cores; the same numbers to float tolerance, tests/test_fast_paths.py)
        network = memory_format(load_frozen(record.model, weights, device, source=find_checkpoint(path)), True)
        latent = LatentSpace.from_config(record.latent, tensors["autoencoder"], device) if record.latent else None
        return cls(network, record, schedule_from_config(record.schedule), latent, find_checkpoint(path))

    @classmethod
    def from_network(cls, network: torch.nn.Module, record: ModelRecord,
                     latent: LatentSpace | None = None) -> DiffusionModel:
        """A model of weights in memory (the trainer's EMA network for its previews)."""
        return cls(network, record, schedule_from_config(record.schedule), latent)

    @property
    def prediction(self) -> str:
        return self.record.prediction

    @property
    def learned_variance(self) -> bool:
        return self.record.learned_variance

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of what the network sees (latents for a latent model)."""
        return self.record.image_shape

    @property
    def class_names(self) -> list[str]:
        return self.record.class_names

    @property
    def num_classes(self) -> int:
        return self.record.num_classes

    @property
    def text_encoder(self) -> dict | None:
        """The text encoder of a caption-conditioned model (None otherwise)."""
        return self.record.text_encoder

    @property
    def image_condition(self) -> str | None:
        """The image concatenated to the network's input (``"inpaint"``: a mask-conditioned
        inpainting model, :mod:`difflab.image_condition`); None otherwise."""
        return self.record.image_condition

    @property
    def config(self) -> dict:
        """The checkpoint's ``config.json`` as a mapping."""
        return self.record.to_dict()

    @property
    def device(self) -> torch.device:
        """Where the network's weights are."""
        return next(self.network.parameters()).device

    def denoiser(self, clip_x0: float | None = 1.0, threshold: float | None = None) -> Denoiser:
        """The model as a denoiser; pixel models clip x̂₀ to [−1, 1] (or threshold it dynamically),
        latent models do neither (latents are not bounded)."""
        if threshold is not None and self.latent is not None:
            raise ValueError("dynamic thresholding keeps pixels in [-1, 1]; this model samples latents, which are "
                             "not bounded: drop --threshold")
        return Denoiser(self.network, self.schedule, self.prediction, self.learned_variance,
                        clip_x0=x0_clip(self.latent, clip_x0), threshold=threshold)


@dataclass
class NoisyClassifierModel:
    """ADM's noisy classifier p(y | xₜ, t), from a ``difflab train-classifier --noisy`` checkpoint."""

    network: torch.nn.Module
    schedule: NoiseSchedule
    image_shape: tuple[int, int, int]
    class_names: list[str]
    path: Path | None = None  # the checkpoint folder it was loaded from

    @classmethod
    def load(cls, path: str | Path, use_ema: bool = True, device: str | torch.device = "cpu") -> NoisyClassifierModel:
        config, tensors, _ = load_state(path, kind=CLASSIFIER_KIND, with_extra=False)
        record = ModelRecord.from_dict(config, path)
        folder = find_checkpoint(path)
        network = load_frozen(record.model, tensors["ema" if use_ema else "model"], device, source=folder)
        return cls(network, schedule_from_config(record.schedule), record.image_shape, record.class_names, folder)

    def check_matches(self, model: DiffusionModel) -> None:
        """A clear error when this classifier cannot guide ``model``: another noise schedule, image
        shape or set of classes."""
        if self.schedule.to_config() != model.schedule.to_config():
            raise ValueError(f"the classifier was trained with noise schedule {self.schedule} but the diffusion "
                             f"model uses {model.schedule}; train the classifier with the model's schedule")
        if self.image_shape != model.image_shape:
            raise ValueError(f"the classifier takes images of shape {self.image_shape} but the model makes "
                             f"{model.image_shape}; train the classifier at the model's resolution and channels")
        if model.class_names and model.class_names != self.class_names:
            raise ValueError(f"the classifier's classes {self.class_names} differ from the class-conditional "
                             f"model's {model.class_names}")


def is_diffusion_checkpoint(path: str | Path) -> bool:
    try:
        config = json.loads((find_checkpoint(path) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return config.get("kind") == DIFFUSION_KIND
