"""Networks, by name: ``MODELS`` maps a name to its config class, model class and presets.

A model is described by a plain dictionary, the form saved in a checkpoint's ``config.json``
and written in a training YAML::

    {"name": "unet", "preset": "digits", "num_classes": 10}   # a preset with overrides
    {"name": "unet", "image_size": 32, "channel_mult": [1, 2, 2], ...}   # every field spelled out
    {"name": "dit", "preset": "DiT-S/2", "in_channels": 1}   # a diffusion transformer

:func:`build_model` turns it into a module; :func:`model_config_dict` gives back the complete
dictionary (preset expanded) to save next to the weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn

from ..text.inversion import LearnedWord, LearnedWordSpec
from .autoencoder import PRESETS as KL_PRESETS
from .autoencoder import AutoencoderConfig, AutoencoderKL, DiagonalGaussian, estimate_latent_scale
from .classifier import NoisyClassifier
from .controlnet import CONTROLNET_NAMES, ControlNet, ControlNetConfig, DiTControlNet, controlnet_for
from .dit import PRESETS as DIT_PRESETS
from .dit import DiT, DiTConfig
from .lora import LoraSpec, TrainableLora
from .unet import PRESETS as UNET_PRESETS
from .unet import UNet, UNetConfig
from .vq import PRESETS as VQ_PRESETS
from .vq import AutoencoderVQ, AutoencoderVQConfig


@dataclass(frozen=True)
class ModelSpec:
    config: type
    model: Callable[..., nn.Module]
    presets: dict[str, Callable[..., object]]


MODELS: dict[str, ModelSpec] = {
    "unet": ModelSpec(config=UNetConfig, model=UNet, presets=UNET_PRESETS),
    # The diffusion transformer (Peebles & Xie 2023): patches, adaLN-Zero; same model function.
    "dit": ModelSpec(config=DiTConfig, model=DiT, presets=DIT_PRESETS),
    # The encoder half of a U-Net preset, with an attention-pooling classifier head.
    "noisy_classifier": ModelSpec(config=UNetConfig, model=NoisyClassifier, presets=UNET_PRESETS),
    # Latent diffusion's first stages (Rombach et al. 2022), trained by the same trainer.
    "autoencoder_kl": ModelSpec(config=AutoencoderConfig, model=AutoencoderKL, presets=KL_PRESETS),
    "autoencoder_vq": ModelSpec(config=AutoencoderVQConfig, model=AutoencoderVQ, presets=VQ_PRESETS),
    # The control branch of a frozen U-Net (Zhang et al. 2023): a copy of its encoder, zero convolutions.
    "controlnet": ModelSpec(config=ControlNetConfig, model=ControlNet, presets={}),
    # A DiT's control branch (PixArt-δ): copies of its first blocks, zero linear layers after each.
    "dit_controlnet": ModelSpec(config=ControlNetConfig, model=DiTControlNet, presets={}),
    # Low-rank adapters on a frozen network's layers (Hu et al. 2021): the adapters are the model.
    "lora": ModelSpec(config=LoraSpec, model=TrainableLora, presets={}),
    # Textual inversion's new word (Gal et al. 2022): its embedding vectors are the model.
    "textual_inversion": ModelSpec(config=LearnedWordSpec, model=LearnedWord, presets={}),
}

AUTOENCODERS = ("autoencoder_kl", "autoencoder_vq")


def build_config(config_dict: dict):
    """The typed config of a model dictionary (see the module docstring).

    Raises:
        ValueError: unknown model name, unknown preset or unknown field, with the valid choices.
    """
    options = dict(config_dict)
    name = options.pop("name", None)
    if name not in MODELS:
        raise ValueError(f"model name {name!r} is unknown; set 'name' to one of {sorted(MODELS)}")
    spec = MODELS[name]
    valid = {f.name for f in fields(spec.config)}
    unknown = sorted(set(options) - valid - {"preset"})
    if unknown:
        raise ValueError(f"unknown {name} option(s) {unknown}; valid options are 'preset' and {sorted(valid)}")
    preset = options.pop("preset", None)
    if preset is None:
        return spec.config(**options)
    if preset not in spec.presets:
        raise ValueError(f"unknown {name} preset {preset!r}; choose one of {sorted(spec.presets)}")
    return spec.presets[preset](**options)


def build_model(config_dict: dict) -> nn.Module:
    """Build the network a model dictionary describes. Prints nothing; see ``model.summary()``."""
    name = config_dict.get("name")
    config = build_config(config_dict)
    return MODELS[name].model(config)


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(n) for n in t.shape) + ")"


def state_dict_mismatch(checkpoint: dict[str, torch.Tensor], model: dict[str, torch.Tensor]) -> str | None:
    """The first difference between a checkpoint's tensors and a model's state dict (a missing
    tensor or a shape, in the model's order, then a tensor the model lacks), or None."""
    for name, tensor in model.items():
        if name not in checkpoint:
            return f"missing key {name} (the model has it, the checkpoint does not)"
        if checkpoint[name].shape != tensor.shape:
            return f"{name}: checkpoint {_shape(checkpoint[name])} vs model {_shape(tensor)}"
    for name in checkpoint:
        if name not in model:
            return f"unexpected key {name} (the checkpoint has it, the model does not)"
    return None


def load_frozen(config_dict: dict, state_dict: dict, device="cpu", *, source: str | Path | None = None) -> nn.Module:
    """Build the network ``config_dict`` describes, load ``state_dict`` into it and freeze it
    (eval mode, no gradients) on ``device``: how checkpoints are loaded for inference.

    Raises:
        ValueError: the weights do not fit the architecture, naming the first missing or
            unexpected tensor or shape mismatch (and ``source``, the checkpoint, when given).
    """
    model = build_model(config_dict)
    problem = state_dict_mismatch(state_dict, model.state_dict())
    if problem is not None:
        where = f"the weights of {source}" if source else "the checkpoint's weights"
        raise ValueError(f"{where} do not fit the {config_dict.get('name')} model of its config: {problem}; "
                         "weights and config must come from the same checkpoint")
    model.load_state_dict(state_dict)
    return model.to(device).eval().requires_grad_(False)


def model_config_dict(model: nn.Module) -> dict:
    """The complete dictionary (``name`` and every field) that rebuilds ``model``'s architecture."""
    for name, spec in MODELS.items():
        if isinstance(model, spec.model):
            return {"name": name, **(model.config_dict if hasattr(model, "config_dict") else asdict(model.config))}
    raise ValueError(f"{type(model).__name__} is not a registered difflab model; known: {sorted(MODELS)}")


__all__ = [
    "AUTOENCODERS", "CONTROLNET_NAMES", "MODELS", "AutoencoderConfig", "ControlNet", "ControlNetConfig",
    "DiTControlNet", "controlnet_for", "AutoencoderKL", "AutoencoderVQ",
    "AutoencoderVQConfig", "DiT", "DiTConfig", "DiagonalGaussian", "ModelSpec", "NoisyClassifier", "UNet",
    "UNetConfig", "build_config", "build_model", "estimate_latent_scale", "load_frozen", "model_config_dict",
    "state_dict_mismatch",
]
