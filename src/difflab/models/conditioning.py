"""The conditioning inputs every diffusion network takes, checked and embedded once for the U-Net
and DiT alike (the caption side, captions → these inputs, is :mod:`difflab.conditioning`).

* **Class labels**: a label embedding of ``num_classes + 1`` rows; index ``num_classes`` is the
  *null* label that label dropout trains for classifier-free guidance, and ``class_labels=None``
  on a class-conditional network means it.
* **Context tokens**: ``context`` (N, L, context_dim) with its padding mask, e.g. a frozen text
  encoder's states; or, for a network holding a trainable text encoder (``text_encoder``), the
  caption's ``input_ids`` and ``token_mask``, which it encodes itself.
* **Concatenated image**: ``concat`` (N, concat_channels, H, W) joined to the noisy input along
  the channels (an inpainting model's mask and masked image; SD-inpainting, SR3/ADM upsamplers),
  its first-layer weights kept apart and zero-initialised (:func:`concat_features`). It is never
  dropped for guidance: CFG's two branches see the same image.
* **Guidance weight**: ``guidance_scale`` (N,), the classifier-free guidance weight w that a
  network distilled for guided sampling takes as an input (``guidance_embed``; Meng et al. 2023,
  "On Distillation of Guided Diffusion Models" §3.1; ``difflab distill``), embedded like the time
  and added to the time embedding, zero-initialised so the network starts as the one without it.

A network using these helpers has ``config`` (with ``num_classes``, ``context_dim`` and
``text_encoder``), ``label_embed`` (``nn.Embedding`` or None) and ``text_encoder`` (a
:class:`~difflab.text.small.SmallTextEncoder` or None).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def validate_conditioning(config) -> None:
    """Check a network config's ``num_classes``, ``context_dim``, ``text_encoder`` and
    ``concat_channels`` fields.

    Raises:
        ValueError: naming the field (``UNetConfig.context_dim``, ``DiTConfig.num_classes``, …) and the fix.
    """
    name = type(config).__name__
    if config.num_classes < 0:
        raise ValueError(f"{name}.num_classes must be >= 0 (0 = unconditional), got {config.num_classes}")
    if config.context_dim < 0:
        raise ValueError(f"{name}.context_dim must be >= 0 (0 = no cross-attention), got {config.context_dim}")
    if getattr(config, "aug_level", False) and not getattr(config, "concat_channels", 0):
        raise ValueError(f"{name}.aug_level embeds the noise level of a concatenated image: set "
                         f"{name}.concat_channels too (or aug_level=False)")
    if getattr(config, "concat_channels", 0) < 0:
        raise ValueError(f"{name}.concat_channels must be >= 0 (0 = no concatenated image), "
                         f"got {config.concat_channels}")
    if config.text_encoder is not None:
        if config.text_encoder.get("name") != "small":
            raise ValueError(f"{name}.text_encoder holds a trainable encoder ({{'name': 'small', ...}}); "
                             "a frozen encoder's states are passed as context instead")
        if config.text_encoder.get("dim", 256) != config.context_dim:
            raise ValueError(f"{name}.context_dim={config.context_dim} must equal the text encoder's dim "
                             f"{config.text_encoder.get('dim', 256)}")


def add_label_embedding(net: nn.Module, emb: Tensor, class_labels: Tensor | None) -> Tensor:
    """``emb`` (N, D) plus the label embedding of a class-conditional ``net`` (None labels: the
    null label); ``emb`` itself for an unconditional one.

    Raises:
        ValueError: labels were given to an unconditional network.
    """
    if net.label_embed is None:
        if class_labels is not None:
            raise ValueError(f"class_labels were given to an unconditional {type(net).__name__}; "
                             f"set {type(net.config).__name__}.num_classes > 0")
        return emb
    if class_labels is None:
        class_labels = torch.full(emb.shape[:1], net.config.num_classes, dtype=torch.long, device=emb.device)
    return emb + net.label_embed(class_labels)  # (N, D)


def context_tokens(net: nn.Module, context: Tensor | None, context_mask: Tensor | None, input_ids: Tensor | None,
                   token_mask: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
    """The context tokens and their mask that ``net``'s cross-attention reads (None, None without).

    Raises:
        ValueError: the built-in text encoder got no token ids, a cross-attention network no
            context, or a network without cross-attention a context.
    """
    name, config_name, dim = type(net).__name__, type(net.config).__name__, net.config.context_dim
    if net.text_encoder is not None:
        if input_ids is None:
            raise ValueError(f"this {name} has its own text encoder: pass input_ids and token_mask (caption tokens)")
        context, context_mask = net.text_encoder(input_ids, token_mask), token_mask
    if (context is None) != (not dim):
        raise ValueError(f"this {name} has context_dim={dim}: pass context=(N, L, {dim}) tokens" if dim else
                         f"context was given to a {name} without cross-attention; set {config_name}.context_dim")
    return context, context_mask


def concat_features(net: nn.Module, x: Tensor, concat: Tensor | None) -> Tensor | None:
    """The concatenated image's contribution to ``net``'s first layer (``net.concat_input``, a
    zero-initialised map of ``concat_channels`` to the first layer's width), or None for a
    network without image conditioning.

    The first layer of [x, concat] is first(x) + concat_input(concat): the same map, with the
    image's weights kept apart and starting at zero, so a network widened from an unconditioned
    checkpoint (``--init-from``) starts as that network, bit for bit.

    Raises:
        ValueError: the image is missing, unexpected, or not (N, concat_channels, H, W) like x.
    """
    name, want = type(net).__name__, getattr(net.config, "concat_channels", 0)
    if not want:
        if concat is not None:
            raise ValueError(f"an image (concat) was given to a {name} without image conditioning; "
                             f"set {type(net.config).__name__}.concat_channels")
        return None
    expected = (x.shape[0], want, *x.shape[2:])
    if concat is None:
        raise ValueError(f"this {name} is image-conditioned: pass concat={expected} (e.g. an inpainting mask "
                         "and masked image)")
    if tuple(concat.shape) != expected:
        raise ValueError(f"this {name} takes concat of shape {expected}, got {tuple(concat.shape)}")
    return net.concat_input(concat.to(x.dtype))


def add_aug_level_embedding(net: nn.Module, emb: Tensor, aug_level: Tensor | None) -> Tensor:
    """``emb`` plus the embedding of the concatenated image's noise level ``aug_level`` (N,) in
    [0, 1] (noise-conditioning augmentation, Ho et al. 2022, "Cascaded Diffusion Models" §4.2),
    for a network with ``aug_level``; ``emb`` itself for one without. The embedding is the time
    embedding's recipe on 1000·level, its last layer zero-initialised.

    Raises:
        ValueError: the level is missing, unexpected or not (N,).
    """
    name = type(net).__name__
    if net.aug_embed is None:
        if aug_level is not None:
            raise ValueError(f"aug_level was given to a {name} trained without noise-conditioning augmentation")
        return emb
    if aug_level is None:
        raise ValueError(f"this {name} was trained with noise-conditioning augmentation: pass aug_level (N,) in "
                         "[0, 1], the noise level of its conditioning image (0 = clean)")
    return add_level_embedding(emb, net.aug_embed, aug_level, "aug_level", 1000.0)


# w·100: guidance weights in [0, 10] span the time embedding's usual range [0, 1000]
GUIDANCE_EMBED_FACTOR = 100.0


def add_guidance_embedding(net: nn.Module, emb: Tensor, guidance_scale: Tensor | None) -> Tensor:
    """``emb`` plus the embedding of the classifier-free guidance weight w (N,) for a network
    with ``guidance_embed`` (distilled for guided sampling: Meng et al. 2023 §3.1, where the
    student takes w as an input instead of running CFG's two passes); ``emb`` itself for one
    without. The embedding is the time embedding's recipe on 100·w, its last layer zero-initialised,
    so the network starts as its teacher's conditional network for every w.

    Raises:
        ValueError: w is missing, unexpected or not (N,).
    """
    name = type(net).__name__
    if getattr(net, "guidance_embed", None) is None:
        if guidance_scale is not None:
            raise ValueError(f"guidance_scale was given to a {name} without a guidance input; set "
                             f"{type(net.config).__name__}.guidance_embed (a network distilled for guided sampling)")
        return emb
    if guidance_scale is None:
        raise ValueError(f"this {name} was distilled for guided sampling: pass guidance_scale (N,), the "
                         "classifier-free guidance weight w")
    return add_level_embedding(emb, net.guidance_embed, guidance_scale, "guidance_scale", GUIDANCE_EMBED_FACTOR)


def add_level_embedding(emb: Tensor, embed: nn.Module, level, name: str, factor: float) -> Tensor:
    """``emb`` + ``embed(factor·level)`` for a scalar per sample ``level`` (N,) or () (broadcast):
    what the noise-level and guidance-weight embeddings share.

    Raises:
        ValueError: ``level`` (called ``name``) is not (N,) or a scalar.
    """
    level = torch.as_tensor(level, dtype=emb.dtype, device=emb.device)
    level = level.expand(emb.shape[0]) if level.ndim == 0 else level
    if level.shape != emb.shape[:1]:
        raise ValueError(f"{name} must have shape ({emb.shape[0]},), got {tuple(level.shape)}")
    return emb + embed(level * factor)


# the modules a network gains with an image condition or a guidance input: zero-initialised, so a
# network widened from a checkpoint without them (--init-from, difflab distill) starts as it
CONCAT_INPUT = "concat_input"
AUG_EMBED = "aug_embed"
GUIDANCE_EMBED = "guidance_embed"
ZERO_INIT_MODULES = (CONCAT_INPUT, AUG_EMBED, GUIDANCE_EMBED)
