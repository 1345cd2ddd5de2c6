"""The channel pyramid the U-Net (and the noisy classifier built on its encoder) and the
autoencoders share, and the one check of its fields for all of their configs.

A pyramid has ``len(channel_mult)`` levels; level ``i`` works on feature maps of
``image_size / 2^i`` pixels a side with ``model_channels · channel_mult[i]`` channels, every level
but the last halves the side, so the input side must be divisible by f = 2^(levels − 1). Each
level has ``num_res_blocks`` residual blocks, self-attention where its side is in
``attention_resolutions``, and the middle block (at the last level's width) always attends.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..nn import resolve_num_heads


def downsampling_factor(channel_mult: Sequence[int]) -> int:
    """f = 2^(levels − 1): how many times smaller the last level's feature maps are per side."""
    return 2 ** (len(channel_mult) - 1)


def level_resolutions(image_size: int, channel_mult: Sequence[int]) -> tuple[int, ...]:
    """The side length of the feature maps at each level: image_size, image_size/2, …"""
    return tuple(image_size >> level for level in range(len(channel_mult)))


def check_positive(config, fields: Sequence[str]) -> None:
    """Raise ``ValueError`` naming the first of ``config``'s ``fields`` that is below 1."""
    for field in fields:
        value = getattr(config, field)
        if value < 1:
            raise ValueError(f"{type(config).__name__}.{field} must be >= 1, got {value}")


def check_pyramid(config, network: str) -> None:
    """Check the pyramid fields of a U-Net or autoencoder config: image_size, model_channels,
    channel_mult, num_res_blocks, attention_resolutions, norm_groups, num_heads (and
    num_head_channels where the config has it) and dropout.

    Args:
        config: a config dataclass with those fields (``UNetConfig``, ``AutoencoderConfig``, …).
        network: what the pyramid is, as the messages name it ("U-Net", "autoencoder").

    Raises:
        ValueError: naming the field (``UNetConfig.norm_groups``, ``AutoencoderConfig.image_size``, …)
            and the fix.
    """
    name = type(config).__name__
    check_positive(config, ("image_size", "model_channels", "num_res_blocks", "norm_groups"))
    mult = config.channel_mult
    if not mult or min(mult) < 1:
        raise ValueError(f"{name}.channel_mult must be a non-empty tuple of positive ints, got {mult}")
    if not 0.0 <= config.dropout < 1.0:
        raise ValueError(f"{name}.dropout must be in [0, 1), got {config.dropout}")
    factor = downsampling_factor(mult)
    if config.image_size % factor:
        raise ValueError(
            f"{name}.image_size={config.image_size} is not divisible by the downsampling factor "
            f"f=2^(levels-1)={factor} of channel_mult={mult}; use an image_size (the data's resolution) "
            f"that is a multiple of {factor}, or fewer levels in channel_mult"
        )
    resolutions = level_resolutions(config.image_size, mult)
    missing = sorted(set(config.attention_resolutions) - set(resolutions), reverse=True)
    if missing:
        raise ValueError(
            f"{name}.attention_resolutions contains {missing}, which the {network} never reaches; "
            f"its feature maps are {list(resolutions)} pixels wide (image_size={config.image_size}, "
            f"{len(mult)} levels), so pick attention resolutions among those"
        )
    widths = [config.model_channels * m for m in mult]
    for width in sorted(set(widths)):
        if width % config.norm_groups:
            raise ValueError(
                f"{name}.norm_groups={config.norm_groups} does not divide the {width} channels of a level "
                f"(model_channels={config.model_channels} × channel_mult); pick norm_groups dividing every "
                f"level width, or a model_channels that is a multiple of {config.norm_groups}"
            )
    # The widths that attend: the levels at attention resolutions and the middle block (last level).
    attending = {widths[-1]} | {w for w, r in zip(widths, resolutions) if r in config.attention_resolutions}
    head_channels = getattr(config, "num_head_channels", None)
    for width in sorted(attending):
        if head_channels is None:  # the autoencoders: a head count only
            if width % config.num_heads:
                raise ValueError(
                    f"{name}.num_heads={config.num_heads} does not divide the {width} channels of an "
                    f"attention layer; choose num_heads among the divisors of {width}"
                )
            continue
        try:
            resolve_num_heads(width, config.num_heads, head_channels)
        except ValueError as err:  # it names num_heads or num_head_channels
            raise ValueError(f"{name}.{err}") from None
