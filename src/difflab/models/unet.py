"""The ADM U-Net: "Diffusion Models Beat GANs on Image Synthesis" (Dhariwal & Nichol 2021).

The network is DDPM's U-Net (Ho et al. 2020, appendix B; a PixelCNN++ / Wide-ResNet backbone)
with the changes ADM's ablation (§3, Tables 1–3) kept:

* several residual blocks per resolution, with channel multipliers per level;
* self-attention at several resolutions (e.g. 32, 16, 8), with a fixed head count or a fixed
  head width (``num_head_channels``, 64 in ADM's final models);
* BigGAN-style residual up/down-sampling (Brock et al. 2019): the resampling happens inside a
  residual block instead of a strided convolution or nearest-neighbour + convolution;
* adaptive group normalization, AdaGN(h, y) = y_s · GroupNorm(h) + y_b (§3.1), written as
  ``(1 + scale) · GroupNorm(h) + shift`` so a zero embedding projection is the plain norm;
* class conditioning by a label embedding added to the time embedding (§4);
* a learned-variance output (twice the channels) for Improved DDPM's hybrid loss
  (Nichol & Dhariwal 2021, eq. 15–16).

Every residual branch and the final convolution are zero-initialized, so at initialization each
block is the identity and the network outputs exactly zero.

``rescale_skip`` multiplies each residual sum (residual blocks and attention) by 1/√2, which is
where DDPM++ (Song et al. 2021, appendix H, ``skip_rescale``) applies it; ADM ablated this
(§3, "rescale resblocks") and its released models do not use it. ``rescale_concat_skip``
multiplies the encoder features concatenated into the decoder by 1/√2, Imagen's Efficient U-Net
choice (Saharia et al. 2022, appendix B.1); neither ADM nor DDPM++ does that.

The model function is ``UNet(config)(x, t, class_labels=None)`` with ``t`` the schedule's float
time of shape (N,), as the rest of difflab expects (see :mod:`difflab.denoiser`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn import GroupNorm32, SpatialSelfAttention, TimestepMLP, zero_module
from ..nn.transformer import SpatialTransformer
from ..nn.upsample import Upsample, tap_matrix, upsample_conv3x3
from ..text.small import SmallTextEncoder
from .conditioning import (
    add_aug_level_embedding,
    add_guidance_embedding,
    add_label_embedding,
    concat_features,
    context_tokens,
    validate_conditioning,
)
from .pyramid import check_positive, check_pyramid, level_resolutions


@dataclass
class UNetConfig:
    """Hyper-parameters of :class:`UNet`; plain values only, so ``asdict`` → JSON → ``UNetConfig(**d)``.

    Attributes:
        in_channels: image channels (1 grayscale, 3 RGB, 4 for a latent).
        out_channels: predicted channels before the learned-sigma doubling; ``None`` = in_channels.
        image_size: height = width of the input in pixels.
        model_channels: base width; level ``i`` has ``model_channels · channel_mult[i]`` channels.
        channel_mult: one multiplier per resolution level; level ``i`` works at image_size / 2^i.
        num_res_blocks: residual blocks per level in the encoder (the decoder has one more).
        attention_resolutions: resolutions in pixels (e.g. (16, 8)) with self-attention after each
            residual block; the middle block always has attention.
        num_heads: attention heads, used when ``num_head_channels == -1``.
        num_head_channels: fixed channels per head (ADM: 64); -1 = use ``num_heads``.
        dropout: dropout before the second convolution of each residual block.
        resblock_updown: BigGAN-style residual resampling; else strided conv / nearest + conv.
        use_scale_shift_norm: AdaGN, ``(1 + scale) · GroupNorm(h) + shift``; else ``h + emb``.
        rescale_skip: multiply residual sums by 1/√2 (DDPM++).
        rescale_concat_skip: multiply the concatenated encoder features by 1/√2 (Imagen).
        learned_sigma: output ``2 · out_channels`` channels; the second half is the variance.
        num_classes: class-conditional with this many classes (0 = unconditional); label index
            ``num_classes`` is the "null" class for classifier-free guidance.
        norm_groups: groups of every group normalization (32 in DDPM and ADM).
        context_dim: width of a conditioning token sequence (e.g. 384 for MiniLM text states);
            > 0 turns every attention layer into LDM's spatial transformer (self-attention,
            cross-attention to the context, feed-forward; :mod:`difflab.nn.transformer`).
        transformer_depth: transformer blocks in each spatial transformer.
        text_encoder: a trainable text encoder inside the network (``{"name": "small", "vocab":
            [...], "dim": context_dim, ...}``, :mod:`difflab.text.small`): the model then takes
            token ids (``input_ids``, ``token_mask``) instead of ``context``, and trains it.
        concat_channels: channels of an image concatenated to the input (``concat``): a mask and
            masked image for an inpainting model, a low-resolution image for an upsampler; the
            output keeps ``out_channels``.
        aug_level: the network also takes ``aug_level`` (N,) in [0, 1], the noise level of its
            concatenated image (noise-conditioning augmentation of super-resolution cascades).
        guidance_embed: the network also takes ``guidance_scale`` (N,), the classifier-free guidance
            weight w, as an input (a student distilled for guided sampling, ``difflab distill``).

    Four layout details exist so that other projects' weights load exactly (docs/interop.md);
    the defaults are difflab's (ADM's) choices:

        norm_eps: ε of the residual blocks', self-attention's and head's group normalizations
            (diffusers' ``norm_eps``; DDPM's ports use 10⁻⁶).
        transformer_norm_eps: ε of the spatial transformers' input group normalization (Stable
            Diffusion: 10⁻⁶).
        attention_bias: biases on the spatial transformers' W_q, W_k, W_v: ``None`` = difflab's
            layout (self-attention only), ``False`` = none (Stable Diffusion), ``True`` = self-
            and cross-attention (diffusers' ``attention_bias``).
        time_freq_shift, time_sin_first: the sinusoidal time features' convention
            (:func:`difflab.nn.embeddings.timestep_embedding`; DDPM's: 1 and True).
        downsample_padding: ``symmetric`` (ADM) or ``ldm`` (one pixel right and bottom before the
            strided convolution: DDPM's original code and diffusers' ``downsample_padding: 0``).
    """

    in_channels: int = 3
    out_channels: int | None = None
    image_size: int = 32
    model_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)
    num_heads: int = 4
    num_head_channels: int = -1
    dropout: float = 0.0
    resblock_updown: bool = False
    use_scale_shift_norm: bool = True
    rescale_skip: bool = False
    rescale_concat_skip: bool = False
    learned_sigma: bool = False
    num_classes: int = 0
    norm_groups: int = 32
    context_dim: int = 0
    transformer_depth: int = 1
    text_encoder: dict | None = None
    concat_channels: int = 0
    aug_level: bool = False
    guidance_embed: bool = False
    norm_eps: float = 1e-5
    transformer_norm_eps: float = 1e-5
    attention_bias: bool | None = None
    time_freq_shift: float = 0.0
    time_sin_first: bool = False
    downsample_padding: str = "symmetric"

    def __post_init__(self):
        # JSON turns tuples into lists; keep the dataclass hashable and comparable.
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        self.attention_resolutions = tuple(int(r) for r in self.attention_resolutions)
        if self.out_channels is None:
            self.out_channels = self.in_channels
        self.validate()

    @property
    def resolutions(self) -> tuple[int, ...]:
        """The side length of the feature maps at each level: image_size, image_size/2, …"""
        return level_resolutions(self.image_size, self.channel_mult)

    @property
    def widths(self) -> list[int]:
        """The channels at each level: model_channels · channel_mult[i]."""
        return [self.model_channels * m for m in self.channel_mult]

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field and the fix for an inconsistent configuration."""
        check_positive(self, ("in_channels", "out_channels", "transformer_depth"))
        check_pyramid(self, "U-Net")  # channel_mult, image_size, attention, norm_groups, heads, dropout
        validate_conditioning(self)  # num_classes, context_dim, text_encoder, concat_channels
        if self.downsample_padding not in DOWNSAMPLE_PADDINGS:
            raise ValueError(f"UNetConfig.downsample_padding must be one of {', '.join(DOWNSAMPLE_PADDINGS)}, "
                             f"got {self.downsample_padding!r}")
        for name in ("norm_eps", "transformer_norm_eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"UNetConfig.{name} must be > 0, got {getattr(self, name)}")


class ResBlock(nn.Module):
    """Residual block conditioned on the embedding, optionally resampling (ADM §3; BigGAN).

    ::

        h = Conv(resample(SiLU(GroupNorm(x))))
        h = (1 + scale)·GroupNorm(h) + shift          (AdaGN, use_scale_shift_norm)
          | GroupNorm(h + Linear(SiLU(emb)))           (DDPM's additive embedding)
        h = ZeroConv(Dropout(SiLU(h)))
        out = (skip(resample(x)) + h) · residual_scale

    ``resample`` is a 2× average pool (``down``), 2× nearest upsampling (``up``) or the identity;
    ``skip`` is the identity, or a 1×1 convolution when the channel count changes. With ``up``,
    ``Conv(resample(·))`` runs as one transposed convolution (:mod:`difflab.nn.upsample`).
    """

    def __init__(
        self,
        channels: int,
        emb_dim: int,
        out_channels: int,
        *,
        dropout: float = 0.0,
        use_scale_shift_norm: bool = True,
        norm_groups: int = 32,
        residual_scale: float = 1.0,
        resample: str = "none",
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.residual_scale = residual_scale
        self.norm1 = GroupNorm32(norm_groups, channels, eps=norm_eps)
        self.resample = {
            "none": nn.Identity(),
            "down": nn.AvgPool2d(kernel_size=2, stride=2),
            "up": nn.Upsample(scale_factor=2, mode="nearest"),
        }[resample]
        self.conv1 = nn.Conv2d(channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_channels if use_scale_shift_norm else out_channels)
        self.norm2 = GroupNorm32(norm_groups, out_channels, eps=norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        if resample == "up":
            self.register_buffer("taps", tap_matrix(), persistent=False)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = F.silu(self.norm1(x))
        if isinstance(self.resample, nn.Upsample):
            h = upsample_conv3x3(h, self.conv1, self.taps)  # = conv1(resample(h)), 2.25× fewer FLOPs
        else:
            h = self.conv1(self.resample(h))  # (N, C_out, H', W')
        e = self.emb_proj(F.silu(emb))[:, :, None, None].to(h.dtype)  # (N, C_out or 2·C_out, 1, 1)
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = torch.addcmul(shift, self.norm2(h), 1 + scale)  # (1 + scale)·GN(h) + shift in one pass
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))  # (N, C_out, H', W')
        out = self.skip(self.resample(x)) + h
        return out if self.residual_scale == 1.0 else out * self.residual_scale


class Downsample(nn.Module):
    """2× downsampling by a strided 3×3 convolution (DDPM's ``resamp_with_conv``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)  # (N, C, H/2, W/2)


class CornerPadDownsample(nn.Module):
    """LDM's and DDPM's original downsampling: pad one pixel right and bottom, then a 3×3
    convolution with stride 2 (``downsample_padding: ldm``; the same parameters as :class:`Downsample`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # (N, C, H/2, W/2)


DOWNSAMPLE_PADDINGS = ("symmetric", "ldm")


def downsample(channels: int, padding: str = "symmetric") -> nn.Module:
    """The strided-convolution downsampling of a ``downsample_padding`` setting."""
    return Downsample(channels) if padding == "symmetric" else CornerPadDownsample(channels)


class EmbedSequential(nn.Sequential):
    """A sequence of layers; residual blocks also receive the embedding, spatial transformers
    the context tokens and their padding mask."""

    def forward(self, x: Tensor, emb: Tensor, context: Tensor | None = None,
                context_mask: Tensor | None = None) -> Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context, context_mask)
            else:
                x = layer(x)
        return x


class UNetBlocks:
    """Factories for the U-Net's blocks, configured once from a :class:`UNetConfig`."""

    def __init__(self, cfg: UNetConfig, emb_dim: int):
        self.cfg, self.emb_dim = cfg, emb_dim
        self.residual_scale = 1 / math.sqrt(2) if cfg.rescale_skip else 1.0
        self.widths = cfg.widths

    def res_block(self, c_in: int, c_out: int, resample: str = "none") -> ResBlock:
        cfg = self.cfg
        return ResBlock(c_in, self.emb_dim, c_out, dropout=cfg.dropout, use_scale_shift_norm=cfg.use_scale_shift_norm,
                        norm_groups=cfg.norm_groups, residual_scale=self.residual_scale, resample=resample,
                        norm_eps=cfg.norm_eps)

    def attention(self, c: int) -> nn.Module:
        """Self-attention, or LDM's spatial transformer when the U-Net takes a context."""
        cfg = self.cfg
        if cfg.context_dim:
            bias = (True, False) if cfg.attention_bias is None else (cfg.attention_bias, cfg.attention_bias)
            return SpatialTransformer(c, cfg.context_dim, cfg.num_heads, cfg.num_head_channels,
                                      cfg.transformer_depth, cfg.norm_groups, cfg.transformer_norm_eps, bias)
        return SpatialSelfAttention(c, cfg.num_heads, cfg.num_head_channels, cfg.norm_groups, self.residual_scale,
                                    cfg.norm_eps)

    def level_layers(self, c_in: int, c_out: int, resolution: int) -> list[nn.Module]:
        """A residual block, followed by attention at the configured resolutions."""
        layers = [self.res_block(c_in, c_out)]
        if resolution in self.cfg.attention_resolutions:
            layers.append(self.attention(c_out))
        return layers


def build_encoder(cfg: UNetConfig, blocks: UNetBlocks) -> tuple[nn.Conv2d, nn.ModuleList, EmbedSequential, list[int]]:
    """The U-Net's first half: (stem, encoder blocks, middle block, channels of every encoder output).

    Per level ``num_res_blocks`` residual blocks (each followed by attention at the chosen
    resolutions) and a 2× downsampling except at the last level; the middle block is residual
    block, attention, residual block. The noisy classifier (:mod:`.classifier`) reuses it.
    """
    widths = blocks.widths
    ch = widths[0]
    stem = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
    skip_channels = [ch]  # consumed in reverse by the decoder
    encoder = nn.ModuleList()
    for level, (width, resolution) in enumerate(zip(widths, cfg.resolutions)):
        for _ in range(cfg.num_res_blocks):
            encoder.append(EmbedSequential(*blocks.level_layers(ch, width, resolution)))
            ch = width
            skip_channels.append(ch)
        if level != len(widths) - 1:
            down = blocks.res_block(ch, ch, "down") if cfg.resblock_updown else downsample(ch, cfg.downsample_padding)
            encoder.append(EmbedSequential(down))
            skip_channels.append(ch)
    middle = EmbedSequential(blocks.res_block(ch, ch), blocks.attention(ch), blocks.res_block(ch, ch))
    return stem, encoder, middle, skip_channels


def run_encoder(net: nn.Module, x: Tensor, emb: Tensor, *context,
                concat_h: Tensor | None = None) -> tuple[Tensor, list[Tensor]]:
    """Apply ``net.stem``, ``net.encoder`` and ``net.middle`` (``context`` = the context tokens and
    their mask, if any; ``concat_h``: a concatenated image's share of the stem, added to it);
    returns the middle block's output and every encoder output (the decoder's skip connections)."""
    h = net.stem(x)  # (N, C_0, H, W)
    if concat_h is not None:
        h = h + concat_h
    skips = [h]
    for block in net.encoder:
        h = block(h, emb, *context)
        skips.append(h)
    return net.middle(h, emb, *context), skips


def add_control(h: Tensor, skips: list[Tensor], control: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """The middle block's output and the skip connections plus a ControlNet's residuals (one per
    skip, then the middle's; Zhang et al. 2023, eq. 4 and Fig. 3)."""
    if len(control) != len(skips) + 1:
        raise ValueError(f"the control residuals must be one per skip connection and one for the middle block "
                         f"({len(skips) + 1}), got {len(control)}: the ControlNet was made for another network")
    skips = [s + c.to(s.dtype) for s, c in zip(skips, control[:-1])]
    return h + control[-1].to(h.dtype), skips


class UNet(nn.Module):
    """ADM's U-Net as a model function ``(x_t, t, class_labels=None) -> prediction``.

    Encoder: a 3×3 stem, then per level ``num_res_blocks`` residual blocks (each followed by
    attention at the chosen resolutions) and a 2× downsampling except at the last level. Middle:
    residual block, attention, residual block. Decoder: per level from the coarsest,
    ``num_res_blocks + 1`` residual blocks, each taking the matching encoder output concatenated
    on the channels, and a 2× upsampling except at the finest level. Head: GroupNorm, SiLU and
    a zero-initialized 3×3 convolution.
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        emb_dim = 4 * cfg.model_channels
        self.concat_scale = 1 / math.sqrt(2) if cfg.rescale_concat_skip else 1.0

        self.time_embed = TimestepMLP(cfg.model_channels, emb_dim, freq_shift=cfg.time_freq_shift,
                                      sin_first=cfg.time_sin_first)
        # Index num_classes is the "null" label used when the label is dropped (classifier-free guidance).
        self.label_embed = nn.Embedding(cfg.num_classes + 1, emb_dim) if cfg.num_classes else None
        self.text_encoder = SmallTextEncoder.from_config(cfg.text_encoder) if cfg.text_encoder else None
        blocks = UNetBlocks(cfg, emb_dim)
        self.stem, self.encoder, self.middle, skip_channels = build_encoder(cfg, blocks)
        widths = blocks.widths
        # the stem's weights for a concatenated image, apart and zero (models/conditioning.py)
        self.concat_input = (zero_module(nn.Conv2d(cfg.concat_channels, widths[0], 3, padding=1, bias=False))
                             if cfg.concat_channels else None)
        self.aug_embed = TimestepMLP(cfg.model_channels, emb_dim) if cfg.aug_level else None
        if self.aug_embed is not None:
            zero_module(self.aug_embed.mlp[-1])
        ch = widths[-1]

        self.decoder = nn.ModuleList()
        for level in reversed(range(len(widths))):
            width, resolution = widths[level], cfg.resolutions[level]
            for i in range(cfg.num_res_blocks + 1):
                layers = blocks.level_layers(ch + skip_channels.pop(), width, resolution)
                ch = width
                if level != 0 and i == cfg.num_res_blocks:
                    layers.append(blocks.res_block(ch, ch, "up") if cfg.resblock_updown else Upsample(ch))
                self.decoder.append(EmbedSequential(*layers))

        out_channels = cfg.out_channels * (2 if cfg.learned_sigma else 1)
        self.head = nn.Sequential(
            GroupNorm32(cfg.norm_groups, ch, eps=cfg.norm_eps),
            nn.SiLU(),
            zero_module(nn.Conv2d(ch, out_channels, 3, padding=1)),
        )
        # last, so the other weights are drawn as without it; zero output: starts as the network without it
        self.guidance_embed = TimestepMLP(cfg.model_channels, emb_dim) if cfg.guidance_embed else None
        if self.guidance_embed is not None:
            zero_module(self.guidance_embed.mlp[-1])

    def forward(self, x: Tensor, t: Tensor, class_labels: Tensor | None = None, context: Tensor | None = None,
                context_mask: Tensor | None = None, input_ids: Tensor | None = None,
                token_mask: Tensor | None = None, concat: Tensor | None = None,
                aug_level: Tensor | None = None, control: Sequence[Tensor] | None = None,
                decoder: nn.Module | None = None, guidance_scale: Tensor | None = None) -> Tensor:
        """Predict ε, x₀ or v (and the variance output with ``learned_sigma``).

        Args:
            x: noisy images (N, in_channels, image_size, image_size).
            t: the schedule's time, float (N,) (e.g. 0 … 999, fractional allowed).
            class_labels: int64 (N,) in [0, num_classes]; ``num_classes`` is the null label.
                ``None`` on a class-conditional model means "unconditional" (the null label).
            context: conditioning tokens (N, L, context_dim), e.g. text-encoder states; needed
                exactly when ``context_dim > 0``.
            context_mask: bool (N, L), True for real tokens; padding gets no attention.
            input_ids, token_mask: caption token ids and mask (N, L) for the built-in trainable
                text encoder (``text_encoder``), which turns them into ``context``.
            concat: (N, concat_channels, image_size, image_size), concatenated to x (needed
                exactly when ``concat_channels > 0``).
            aug_level: (N,) in [0, 1], the noise level of ``concat`` (needed exactly when the
                config's ``aug_level`` is set).
            control: residuals added to the skip connections and the middle block's output, one
                per encoder output and the middle last (a ControlNet's, :mod:`.controlnet`).
            decoder: the module whose ``decoder`` and ``head`` run instead of this network's (a
                ControlNet trained with the base's decoder unlocked); None = this network's.
            guidance_scale: (N,), the classifier-free guidance weight w (needed exactly when the
                config's ``guidance_embed`` is set).

        Returns:
            (N, out_channels · (2 if learned_sigma else 1), image_size, image_size) in x's dtype.
        """
        emb = self.embed(t, class_labels, aug_level, guidance_scale)
        context, context_mask = context_tokens(self, context, context_mask, input_ids, token_mask)
        concat_h = concat_features(self, x, concat)  # the image's share of the stem (None without)
        # (N, C_last, H/2^(L-1), W/2^(L-1)) and the skips
        h, skips = run_encoder(self, x, emb, context, context_mask, concat_h=concat_h)
        if control is not None:
            h, skips = add_control(h, skips, control)
        owner = self if decoder is None else decoder
        for block in owner.decoder:
            h = block(torch.cat([h, skips.pop() * self.concat_scale], dim=1), emb, context, context_mask)
        return owner.head(h).to(x.dtype)  # (N, C_out, H, W)

    def embed(self, t: Tensor, class_labels: Tensor | None = None, aug_level: Tensor | None = None,
              guidance_scale: Tensor | None = None) -> Tensor:
        """The embedding every residual block sees: time, plus class label, noise level and guidance weight."""
        emb = self.time_embed(t)  # (N, 4·model_channels)
        emb = add_label_embedding(self, emb, class_labels)  # + the class's (or null label's) embedding
        emb = add_aug_level_embedding(self, emb, aug_level)  # + the conditioning image's noise level's
        return add_guidance_embedding(self, emb, guidance_scale)  # + a guidance-distilled network's w's

    @property
    def is_class_or_unconditional(self) -> bool:
        """No text context and no concatenated image: the inputs are x, t, a class label (and w)."""
        cfg = self.config
        return not (cfg.context_dim or cfg.text_encoder or cfg.concat_channels or cfg.aug_level)

    def encoder_features(self, x: Tensor, t: Tensor, class_labels: Tensor | None = None,
                         guidance_scale: Tensor | None = None) -> list[Tensor]:
        """The encoder's last output at each resolution, finest first, then the middle block's: the
        features a latent adversarial discriminator reads (:class:`~.discriminator.FeatureDiscriminator`).
        Class- or unconditional networks only (no context, no concatenated image)."""
        cfg = self.config
        if not self.is_class_or_unconditional:
            raise ValueError("encoder features are for class- or unconditional U-Nets (no text, no concatenated image)")
        emb = self.embed(t, class_labels, None, guidance_scale)
        h, skips = run_encoder(self, x, emb)
        per_level = cfg.num_res_blocks + 1  # a level's blocks and its downsampling
        return [skips[level * per_level + cfg.num_res_blocks] for level in range(len(cfg.channel_mult))] + [h]

    def encoder_feature_channels(self) -> list[int]:
        """The channels of :meth:`encoder_features`' maps."""
        widths = self.config.widths
        return widths + widths[-1:]

    def num_parameters(self) -> int:
        """The number of parameters."""
        return sum(p.numel() for p in self.parameters())

    def summary(self) -> str:
        """One line describing the network, for the trainer's log."""
        cfg = self.config
        widths = "-".join(map(str, cfg.widths))
        attention = ",".join(map(str, cfg.attention_resolutions)) or "middle only"
        heads = f"{cfg.num_head_channels} ch/head" if cfg.num_head_channels != -1 else f"{cfg.num_heads} heads"
        extras = [
            name
            for name, on in (
                ("AdaGN", cfg.use_scale_shift_norm),
                ("resblock up/down", cfg.resblock_updown),
                ("learned sigma", cfg.learned_sigma),
                (f"{cfg.num_classes} classes", cfg.num_classes),
                (f"{cfg.concat_channels} concatenated input channels", cfg.concat_channels),
            )
            if on
        ]
        return (
            f"UNet {self.num_parameters() / 1e6:.2f}M params: {cfg.image_size}x{cfg.image_size}x{cfg.in_channels}, "
            f"channels {widths}, {cfg.num_res_blocks} res blocks/level, attention at {attention} ({heads})"
            + "".join(f", {e}" for e in extras)
        )


# Presets: one call each. Keyword arguments override any field, e.g. ``PRESETS["digits"](num_classes=10)``.


def digits(**kw) -> UNetConfig:
    """CPU demo on scikit-learn's 8×8 digits at their native size: 0.76M parameters (timings in docs/models.md)."""
    return UNetConfig(**{**dict(in_channels=1, image_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                                attention_resolutions=(4,), num_heads=2, norm_groups=8), **kw})


def fashion_mnist_32(**kw) -> UNetConfig:
    """Fashion-MNIST padded to 32×32 on a GPU: ADM blocks, attention at 16 and 8 (~27M parameters)."""
    return UNetConfig(**{**dict(in_channels=1, image_size=32, model_channels=96, channel_mult=(1, 2, 2, 2),
                                num_res_blocks=2, attention_resolutions=(16, 8), num_head_channels=32, dropout=0.1,
                                resblock_updown=True), **kw})


def ddpm_cifar10(**kw) -> UNetConfig:
    """DDPM's CIFAR-10 network (Ho et al. 2020, appendix B): 35.7M parameters, no AdaGN, one head."""
    return UNetConfig(**{**dict(in_channels=3, image_size=32, model_channels=128, channel_mult=(1, 2, 2, 2),
                                num_res_blocks=2, attention_resolutions=(16,), num_heads=1, dropout=0.1,
                                use_scale_shift_norm=False), **kw})


def adm_imagenet64(**kw) -> UNetConfig:
    """ADM's class-conditional ImageNet 64×64 model (Dhariwal & Nichol 2021, Table 14)."""
    return UNetConfig(**{**dict(in_channels=3, image_size=64, model_channels=192, channel_mult=(1, 2, 3, 4),
                                num_res_blocks=3, attention_resolutions=(32, 16, 8), num_head_channels=64, dropout=0.1,
                                resblock_updown=True, learned_sigma=True, num_classes=1000), **kw})


PRESETS = {
    "digits": digits,
    "fashion-mnist-32": fashion_mnist_32,
    "ddpm-cifar10": ddpm_cifar10,
    "adm-imagenet64": adm_imagenet64,
}
