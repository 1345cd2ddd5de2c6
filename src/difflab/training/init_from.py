"""Fine-tuning's starting point: ``train --init-from RUN`` (``train(config, init_from=RUN)``).

The new run's model and EMA weights are copied from another run's checkpoint; the optimizer, the
learning-rate schedule and the step count start fresh (``--resume`` is the way to continue a run).
The architectures must match exactly: the first tensor that does not is one clear error
(:class:`~difflab.training.config.ConfigError`), and so is a latent model whose autoencoder
differs from the new run's ``data.autoencoder`` (its latents would mean something else), or a
trainable text encoder whose vocabulary differs (its token embeddings would). The
checkpoint records where the weights came from as ``init_from = {"path", "step"}``.

One difference is allowed: a run that adds a concatenated image (``concat_channels``, e.g.
``diffusion.image_condition: inpaint``) to the source's architecture keeps its own zero weights
for the image (the ``concat_input`` layer, and ``aug_embed``, its noise level's embedding), so it
starts as the source model, bit for bit, and fine-tuning teaches it to use the image (Stable
Diffusion's inpainting model was made this way).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import find_checkpoint, load_state
from ..models import state_dict_mismatch
from ..models.conditioning import ZERO_INIT_MODULES
from .config import ConfigError


def _check_latent_space(where: str, path, saved: dict, tensors: dict, latent) -> None:
    """A latent model only works in the latents it was trained in: same autoencoder, same scale."""
    source = saved.get("latent")
    if source is None and latent is None:
        return
    if source is None:
        raise ConfigError(f"{where}: it is a pixel-space model but this run trains in the latents of "
                          f"data.autoencoder={latent.source}; remove data.autoencoder or start from a latent model")
    if latent is None:
        raise ConfigError(f"{where}: it was trained in the latents of the autoencoder {source.get('source')!r}, this "
                          f"run trains on pixels; set data.autoencoder={source.get('source')}")
    mine = latent.to_config()
    weights = latent.autoencoder.state_dict()
    same = (source["model"] == mine["model"] and source["latent_scale"] == mine["latent_scale"]
            and state_dict_mismatch(tensors.get("autoencoder", {}), weights) is None
            and all(torch.equal(tensors["autoencoder"][k], v.cpu()) for k, v in weights.items()))
    if not same:
        raise ConfigError(f"{where}: it was trained in the latents of another autoencoder ({source.get('source')!r}, "
                          f"latent scale {source['latent_scale']:.5g}) than data.autoencoder={latent.source} (latent "
                          f"scale {latent.scale:.5g}); set data.autoencoder to the autoencoder of {path}")


def _check_vocabulary(where: str, saved: dict, model) -> None:
    """A trainable text encoder's token embeddings mean the words of its vocabulary, which is built
    from the training captions: the same vocabulary or nothing (even when the sizes agree)."""
    source = (saved.get("model") or {}).get("text_encoder") or {}
    mine = getattr(getattr(model, "config", None), "text_encoder", None) or {}
    if source.get("vocab") != mine.get("vocab"):
        theirs, ours = len(source.get("vocab") or []), len(mine.get("vocab") or [])
        raise ConfigError(f"{where}: its trainable text encoder has another vocabulary ({theirs} tokens) than "
                          f"this run's ({ours} tokens, built from this run's captions); fine-tune on the same "
                          "captions, or put the source's vocabulary (model.text_encoder.vocab of its config.json) "
                          "into model.text_encoder.vocab")


def load_initial_weights(path: str | Path, kind: str, model: torch.nn.Module, ema, latent=None) -> dict:
    """Copy the model and EMA weights of the ``kind`` checkpoint at ``path`` (a run folder or its
    ``checkpoint/``) into ``model`` and ``ema``; returns the provenance ``{"path", "step"}``.

    Raises :class:`ConfigError` naming the first mismatching tensor, or the autoencoder mismatch
    of a latent model (``latent``: this run's :class:`~difflab.latent.LatentSpace`, or None)."""
    folder = find_checkpoint(path)
    where = f"cannot initialise from {path}"
    try:
        saved, tensors, extra = load_state(folder, kind=kind)
    except ValueError as err:  # another kind of checkpoint, a damaged config.json
        raise ConfigError(f"{where}: {err}") from None
    _check_latent_space(where, path, saved, tensors, latent)
    _check_vocabulary(where, saved, model)
    for group, target in (("model", model.state_dict()), ("ema", ema.state_dict())):
        # a new concatenated image keeps its zero-initialised weights
        tensors[group] = {**{k: v for k, v in target.items() if k.split(".")[0] in ZERO_INIT_MODULES},
                          **tensors[group]}
        problem = state_dict_mismatch(tensors[group], target)
        if problem:
            raise ConfigError(f"{where}: its {group} weights do not fit this run's model: {problem}; use the "
                              "source run's model settings (model.name, model.preset, model.options, data "
                              "channels, resolution, classes)")
    model.load_state_dict(tensors["model"])
    ema.load_state_dict(tensors["ema"])
    step = saved.get("step", extra.get("step") if extra else None)
    return {"path": str(Path(folder).resolve()), "step": int(step) if step is not None else None}
