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
    aug_level = torch.as_tensor(aug_level, dtype=emb.dtype, device=emb.device)
    aug_level = aug_level.expand(emb.shape[0]) if aug_level.ndim == 0 else aug_level
    if aug_level.shape != emb.shape[:1]:
        raise ValueError(f"aug_level must have shape ({emb.shape[0]},), got {tuple(aug_level.shape)}")
    return emb + net.aug_embed(aug_level * 1000)


# the modules a network gains with an image condition: zero-initialised, so a network widened from
# an unconditioned checkpoint (--init-from) starts as it
CONCAT_INPUT = "concat_input"
AUG_EMBED = "aug_embed"
ZERO_INIT_MODULES = (CONCAT_INPUT, AUG_EMBED)
