"""The frozen base run of an objective that trains something beside it (ControlNet, LoRA)."""

from __future__ import annotations

from ...models import DiT, UNet
from ...pipelines.loading import DiffusionModel
from ..config import ConfigError
from .base import TrainingData


def load_base(path: str | None, key: str, flag: str, data: TrainingData) -> DiffusionModel:
    """The base run at ``path`` (config key ``key``, command-line ``flag``), EMA weights, frozen
    (eval mode, no gradients), checked against the run's data: a U-Net or DiT without an image
    condition, in the same pixels or latents, of the data's image shape.

    Raises:
        ConfigError: no base, an unreadable one, or one that does not fit the data.
    """
    if not path:
        raise ConfigError(f"this run trains beside a frozen base run: give {flag} (or {key})")
    try:
        base = DiffusionModel.load(path, device=data.device)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{key} ({path}): {err}") from None
    if base.record.distilled is not None and key != "distill.teacher":
        raise ConfigError(f"{key} ({path}) is a distilled student (difflab distill), which samples only on its own "
                          "grid: train beside its teacher instead")
    if not isinstance(base.network, (UNet, DiT)):
        raise ConfigError(f"{key} ({path}) is a {type(base.network).__name__}; give a U-Net or DiT run")
    if base.image_condition is not None:
        raise ConfigError(f"{key} ({path}) is an image-conditioned model ({base.image_condition}); give a text-, "
                          "class-conditional or unconditional base")
    mine = data.latent.to_config() if data.latent is not None else None
    if (base.record.latent is None) != (mine is None) or (
            mine is not None and base.record.latent["latent_scale"] != mine["latent_scale"]):
        where = base.record.latent["source"] if base.record.latent else "pixels"
        raise ConfigError(f"{key} ({path}) works in {where}; set data.autoencoder to the same autoencoder as the base "
                          "(or none for a pixel model)")
    if tuple(base.image_shape) != tuple(data.shape):
        raise ConfigError(f"{key} ({path}) makes {'x'.join(map(str, base.image_shape))} images but the data gives "
                          f"{'x'.join(map(str, data.shape))}: set data.resolution and data.channels to the base's")
    return base
