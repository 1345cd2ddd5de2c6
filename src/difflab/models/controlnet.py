"""ControlNet: spatial control of a frozen U-Net (Zhang, Rao and Agrawala 2023, "Adding
Conditional Control to Text-to-Image Diffusion Models").

A trainable copy of the base U-Net's encoder and middle block reads the noisy input plus a
*control image* (edges, an outline, a low-resolution tile, ...) and feeds the frozen base through
zero-initialised 1×1 convolutions ("zero convolutions"), one per skip connection and one for the
middle block (paper eq. 4, Fig. 3)::

    c_f  = HintEncoder(c_i)                      strided 3×3 convs + SiLU, last conv zero
    h, s = Encoder_copy(x_t + c_f, t, y)         the base's encoder and middle block, copied
    r_k  = ZeroConv_k(s_k),  r_mid = ZeroConv(h)
    out  = Decoder_base(Middle_base(...) + r_mid, skips_base + r)

Every zero convolution and the hint encoder's last layer start at zero, so a fresh ControlNet adds
exactly nothing: the controlled model equals the base, bit for bit, until training moves them.

The hint encoder (the reference code's ``input_hint_block``) maps the control image at pixel
resolution to the network's grid: ``log2(hint_factor)`` of its convolutions have stride 2
(1 for a pixel model, the autoencoder's factor 8 for Stable Diffusion), then a zero 3×3
convolution to the base's first width. The copy's first layer sees ``stem(x_t) + c_f``.

``ControlNet.from_model(base, hint_channels)`` copies the base's weights and configuration.
With ``unlock_decoder`` the ControlNet also carries a trainable copy of the base's decoder and
output head, which the controlled model then uses (the reference's ``sd_locked = False``).

**DiT** (:class:`DiTControlNet`): a transformer has no skip connections, so the control branch
follows PixArt-δ (Chen et al. 2024, "PIXART-δ", §3.2, the "ControlNet-Transformer"): trainable
copies of the base's first ``copy_depth`` blocks (PixArt-δ: 13 of 28; default half the depth)
read the noisy tokens plus the control image's tokens (the hint encoder downsampling by
``hint_factor × patch_size`` straight to the token grid, its last layer zero: PixArt-δ's
``before_proj``), and the output of copy k, through a zero-initialised linear layer
(``after_proj``), is added to the output of base block k.

This module is the network; the scale, guess mode and the schedule window that decide how much of
it reaches the base at sampling are :mod:`difflab.pipelines.controlnet`'s.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass

from torch import Tensor, nn

from ..nn import TimestepMLP, sincos_position_embedding_2d, zero_module
from .conditioning import add_aug_level_embedding, add_label_embedding, concat_features, context_tokens
from .dit import DiT, DiTBlock, DiTConfig
from .unet import UNet, UNetBlocks, UNetConfig, build_encoder, run_encoder

GUESS_MODE_BASE = 0.825  # guess mode scales residual k of K by 0.825^(K − 1 − k) (the reference code, K = 13)


@dataclass
class ControlNetConfig:
    """Hyper-parameters of :class:`ControlNet`; plain values only (JSON round trip).

    Attributes:
        base: the base network's complete config (``model_config_dict``: ``name`` unet or dit).
        hint_channels: channels of the control image (1 for edges and outlines, 3 for RGB).
        hint_factor: control image side / the network's side: 1 for a pixel model, the
            autoencoder's downsampling factor for a latent one (a power of 2).
        hint_widths: the hint encoder's widths; each width gets two 3×3 convolutions, the first
            ``log2(hint_factor)`` transitions between widths have stride 2.
        unlock_decoder: also train a copy of the base's decoder and head (``sd_locked: false``;
            a U-Net's only).
        copy_depth: a DiT base's blocks copied into the control branch (0 = half its depth,
            rounded up); unused for a U-Net, whose whole encoder is copied.
    """

    base: dict
    hint_channels: int = 3
    hint_factor: int = 1
    hint_widths: tuple[int, ...] = (16, 32, 64)
    unlock_decoder: bool = False
    copy_depth: int = 0

    def __post_init__(self):
        self.base = json.loads(json.dumps(self.base))  # one form (lists, not tuples) however it was given
        self.hint_widths = tuple(int(w) for w in self.hint_widths)
        self.validate()

    @property
    def base_name(self) -> str:
        return self.base.get("name", "unet")

    @property
    def network(self) -> UNetConfig | DiTConfig:
        """The base network's config (a U-Net's or a DiT's)."""
        options = {k: v for k, v in self.base.items() if k not in ("name", "preset")}
        return (UNetConfig if self.base_name == "unet" else DiTConfig)(**options)

    @property
    def blocks_copied(self) -> int:
        """A DiT base's copied blocks."""
        depth = int(self.base.get("depth", 0))
        return self.copy_depth or (depth + 1) // 2

    @property
    def total_factor(self) -> int:
        """The hint encoder's downsampling: the autoencoder's factor, times a DiT's patch size."""
        return self.hint_factor * (int(self.base.get("patch_size", 1)) if self.base_name == "dit" else 1)

    # the conditioning helpers (models/conditioning.py) read these from a network's config
    @property
    def num_classes(self) -> int:
        return int(self.base.get("num_classes", 0))

    @property
    def context_dim(self) -> int:
        return int(self.base.get("context_dim", 0))

    @property
    def concat_channels(self) -> int:
        return int(self.base.get("concat_channels", 0))

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field and the fix."""
        if self.base_name not in CONTROLNET_NAMES:
            raise ValueError(f"a ControlNet controls a U-Net or a DiT; the base is a {self.base_name!r} network")
        if self.unlock_decoder and self.base_name != "unet":
            raise ValueError("unlock_decoder trains a copy of a U-Net's decoder; a DiT has none: set it false")
        if self.base_name == "dit" and not 1 <= self.blocks_copied <= int(self.base.get("depth", 0)):
            raise ValueError(f"ControlNetConfig.copy_depth must be in [1, {self.base.get('depth')}] (the DiT's depth), "
                             f"got {self.copy_depth}")
        if self.hint_channels < 1:
            raise ValueError(f"ControlNetConfig.hint_channels must be >= 1, got {self.hint_channels}")
        factor = self.hint_factor
        if factor < 1 or factor & (factor - 1):
            raise ValueError(f"ControlNetConfig.hint_factor must be a power of 2 (1 for pixels, the autoencoder's "
                             f"factor for latents), got {factor}")
        if not self.hint_widths or min(self.hint_widths) < 1:
            raise ValueError(f"ControlNetConfig.hint_widths must be positive widths, got {self.hint_widths}")
        steps = int(math.log2(self.total_factor))
        if len(self.hint_widths) - 1 < steps:
            raise ValueError(f"the hint encoder needs {steps} stride-2 steps (hint_factor {factor}"
                             + (f" x patch size {self.base.get('patch_size')}" if self.base_name == "dit" else "")
                             + f") but its {len(self.hint_widths)} widths give {len(self.hint_widths) - 1}: add widths "
                             "to ControlNetConfig.hint_widths")
        self.network.validate()


class HintEncoder(nn.Module):
    """Control image (N, C, f·H, f·W) in [0, 1] → features (N, width, H, W) for the first layer.

    ``conv(C→w₀), SiLU, [conv(wᵢ→wᵢ), SiLU, conv(wᵢ→wᵢ₊₁, stride 2 for the first log2 f), SiLU]…,
    zero conv(w_last → width)``: the reference code's ``input_hint_block`` for any factor.
    """

    def __init__(self, channels: int, widths: tuple[int, ...], factor: int, out_width: int):
        super().__init__()
        downsamples = int(math.log2(factor))
        layers: list[nn.Module] = [nn.Conv2d(channels, widths[0], 3, padding=1), nn.SiLU()]
        for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers += [nn.Conv2d(w_in, w_in, 3, padding=1), nn.SiLU(),
                       nn.Conv2d(w_in, w_out, 3, padding=1, stride=2 if i < downsamples else 1), nn.SiLU()]
        layers.append(zero_module(nn.Conv2d(widths[-1], out_width, 3, padding=1)))
        self.layers = nn.Sequential(*layers)

    def forward(self, hint: Tensor) -> Tensor:
        return self.layers(hint)


class ControlNet(nn.Module):
    """The control branch: ``(x_t, t, control_image, **cond) -> residuals`` (one per skip
    connection of the base, then the middle block's), to pass as ``UNet(..., control=...)``."""

    def __init__(self, config: ControlNetConfig):
        super().__init__()
        if config.base_name != "unet":
            raise ValueError("this ControlNet feeds a U-Net's skip connections; a DiT base takes a DiTControlNet "
                             "(model name dit_controlnet)")
        self.config = config
        unet = config.network
        emb_dim = 4 * unet.model_channels
        # the base's own embeddings and encoder, copied (from_model) and trained
        self.time_embed = TimestepMLP(unet.model_channels, emb_dim, freq_shift=unet.time_freq_shift,
                                      sin_first=unet.time_sin_first)
        self.label_embed = nn.Embedding(unet.num_classes + 1, emb_dim) if unet.num_classes else None
        self.text_encoder = None  # the base's (frozen) encoder makes the context; see forward
        blocks = UNetBlocks(unet, emb_dim)
        self.stem, self.encoder, self.middle, skip_channels = build_encoder(unet, blocks)
        width = blocks.widths[0]
        self.concat_input = (nn.Conv2d(unet.concat_channels, width, 3, padding=1, bias=False)
                             if unet.concat_channels else None)
        self.aug_embed = TimestepMLP(unet.model_channels, emb_dim) if unet.aug_level else None
        self.hint = HintEncoder(config.hint_channels, config.hint_widths, config.hint_factor, width)
        self.zero_convs = nn.ModuleList(zero_module(nn.Conv2d(c, c, 1)) for c in skip_channels)
        self.middle_zero_conv = zero_module(nn.Conv2d(blocks.widths[-1], blocks.widths[-1], 1))
        if config.unlock_decoder:  # built as the base builds them; from_model copies the weights
            donor = UNet(unet)
            self.decoder, self.head = donor.decoder, donor.head
        else:
            self.decoder = self.head = None

    @classmethod
    def from_model(cls, base: UNet, hint_channels: int = 3, hint_factor: int = 1,
                   hint_widths: tuple[int, ...] = (16, 32, 64), unlock_decoder: bool = False) -> ControlNet:
        """A ControlNet for ``base``: its config, and a copy of its embeddings, encoder and middle
        block (and decoder and head with ``unlock_decoder``); the hint encoder and zero
        convolutions fresh (the zero ones at zero)."""
        if not isinstance(base, UNet):
            raise ValueError(f"ControlNet.from_model takes a U-Net, not a {type(base).__name__} (controlnet_for picks "
                             "the ControlNet of any base)")
        config = ControlNetConfig({"name": "unet", **asdict(base.config)}, hint_channels, hint_factor,
                                  hint_widths, unlock_decoder)
        net = cls(config).to(next(base.parameters()).device)
        net.copy_base(base)
        return net

    def copy_base(self, base: UNet) -> None:
        """Load the base's weights into the copied modules."""
        names = ["time_embed", "label_embed", "stem", "encoder", "middle", "concat_input", "aug_embed"]
        if self.config.unlock_decoder:
            names += ["decoder", "head"]
        for name in names:
            mine, theirs = getattr(self, name), getattr(base, name)
            if mine is not None:
                mine.load_state_dict(copy.deepcopy(theirs.state_dict()))

    @property
    def num_residuals(self) -> int:
        """Residuals it returns: one per skip connection, then the middle block's."""
        return len(self.zero_convs) + 1

    def check_hint(self, x: Tensor, hint: Tensor) -> None:
        check_hint(self.config, x, hint)

    def forward(self, x: Tensor, t: Tensor, control_image: Tensor, class_labels: Tensor | None = None,
                context: Tensor | None = None, context_mask: Tensor | None = None, concat: Tensor | None = None,
                aug_level: Tensor | None = None) -> list[Tensor]:
        """The residuals for the base's skips (as many as the base has encoder outputs) and, last,
        its middle block.

        Args:
            x, t, class_labels, concat, aug_level: as the base U-Net takes them.
            control_image: (N, hint_channels, hint_factor·H, hint_factor·W) in [0, 1].
            context, context_mask: the context tokens, already encoded (a base with its own
                trainable text encoder encodes the caption once for both networks).
        """
        self.check_hint(x, control_image)
        emb = self.time_embed(t)
        emb = add_label_embedding(self, emb, class_labels)
        emb = add_aug_level_embedding(self, emb, aug_level)
        context, context_mask = context_tokens(self, context, context_mask, None, None)
        first = self.hint(control_image.to(x.dtype))  # (N, C_0, H, W)
        image = concat_features(self, x, concat)
        first = first if image is None else first + image
        h, skips = run_encoder(self, x, emb, context, context_mask, concat_h=first)
        return [zero(s) for zero, s in zip(self.zero_convs, skips)] + [self.middle_zero_conv(h)]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def summary(self) -> str:
        cfg = self.config
        return (f"ControlNet {self.num_parameters() / 1e6:.2f}M params: {len(self.zero_convs) + 1} zero convolutions, "
                f"hint {cfg.hint_channels} ch x{cfg.hint_factor} through widths {list(cfg.hint_widths)}"
                + (", base decoder unlocked" if cfg.unlock_decoder else ""))


def check_hint(config: ControlNetConfig, x: Tensor, hint: Tensor) -> None:
    """One clear error for a control image that does not fit the network."""
    f = config.hint_factor
    expected = (config.hint_channels, x.shape[-2] * f, x.shape[-1] * f)
    if hint.ndim != 4 or tuple(hint.shape[1:]) != expected:
        raise ValueError(f"this ControlNet takes control images of {config.hint_channels} channel(s) at "
                         f"{expected[1]}x{expected[2]} pixels (the model's size), got shape {tuple(hint.shape)}")
    if hint.shape[0] != x.shape[0]:
        raise ValueError(f"{hint.shape[0]} control images for a batch of {x.shape[0]}")


class DiTControlNet(nn.Module):
    """The control branch of a DiT (PixArt-δ's ControlNet-Transformer; see the module docstring):
    ``(x_t, t, control_image, **cond) -> residuals``, one (N, T, D) per copied block, to pass as
    ``DiT(..., control=...)``."""

    def __init__(self, config: ControlNetConfig):
        super().__init__()
        if config.base_name != "dit":
            raise ValueError("a DiTControlNet controls a DiT; a U-Net base takes a ControlNet (model name controlnet)")
        self.config = config
        dit = config.network
        d, p = dit.hidden_size, dit.patch_size
        self.time_embed = TimestepMLP(dit.frequency_dim, d, freq_shift=dit.time_freq_shift)
        self.label_embed = nn.Embedding(dit.num_classes + 1, d) if dit.num_classes else None
        self.text_encoder = None  # the base's (frozen) encoder makes the context
        self.aug_embed = TimestepMLP(dit.frequency_dim, d) if dit.aug_level else None
        self.patch_embed = nn.Conv2d(dit.in_channels, d, kernel_size=p, stride=p)
        self.concat_input = (nn.Conv2d(dit.concat_channels, d, kernel_size=p, stride=p, bias=False)
                             if dit.concat_channels else None)
        self.register_buffer("pos_embed", sincos_position_embedding_2d(d, dit.grid_size)[None], persistent=False)
        self.blocks = nn.ModuleList(DiTBlock(d, dit.num_heads, dit.mlp_ratio, dit.context_dim, dit.mlp_norm_eps)
                                    for _ in range(config.blocks_copied))
        # to the token grid in one go; its last layer zero (PixArt-δ's before_proj)
        self.hint = HintEncoder(config.hint_channels, config.hint_widths, config.total_factor, d)
        self.zero_linears = nn.ModuleList(zero_module(nn.Linear(d, d)) for _ in self.blocks)  # after_proj

    @classmethod
    def from_model(cls, base: DiT, hint_channels: int = 3, hint_factor: int = 1,
                   hint_widths: tuple[int, ...] = (16, 32, 64), copy_depth: int = 0) -> DiTControlNet:
        """A DiT ControlNet for ``base``: its config, and copies of its embeddings and first blocks."""
        config = ControlNetConfig({"name": "dit", **asdict(base.config)}, hint_channels, hint_factor, hint_widths,
                                  copy_depth=copy_depth)
        net = cls(config).to(next(base.parameters()).device)
        net.copy_base(base)
        return net

    def copy_base(self, base: DiT) -> None:
        for name in ("time_embed", "label_embed", "aug_embed", "patch_embed", "concat_input"):
            mine = getattr(self, name)
            if mine is not None:
                mine.load_state_dict(copy.deepcopy(getattr(base, name).state_dict()))
        for mine, theirs in zip(self.blocks, base.blocks):
            mine.load_state_dict(copy.deepcopy(theirs.state_dict()))

    @property
    def num_residuals(self) -> int:
        return len(self.blocks)

    def check_hint(self, x: Tensor, hint: Tensor) -> None:
        check_hint(self.config, x, hint)

    def forward(self, x: Tensor, t: Tensor, control_image: Tensor, class_labels: Tensor | None = None,
                context: Tensor | None = None, context_mask: Tensor | None = None, concat: Tensor | None = None,
                aug_level: Tensor | None = None) -> list[Tensor]:
        """One residual (N, T, D) per copied block, for the base's block outputs (arguments as
        :meth:`ControlNet.forward`)."""
        self.check_hint(x, control_image)
        c = self.time_embed(t)
        c = add_label_embedding(self, c, class_labels)
        c = add_aug_level_embedding(self, c, aug_level)
        context, context_mask = context_tokens(self, context, context_mask, None, None)
        h = self.patch_embed(x)
        image = concat_features(self, x, concat)
        h = (h if image is None else h + image).flatten(2).transpose(1, 2) + self.pos_embed  # (N, T, D)
        h = h + self.hint(control_image.to(x.dtype)).flatten(2).transpose(1, 2)
        out = []
        for block, zero in zip(self.blocks, self.zero_linears):
            h = block(h, c, context, context_mask)
            out.append(zero(h))
        return out

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def summary(self) -> str:
        cfg = self.config
        return (f"DiT ControlNet {self.num_parameters() / 1e6:.2f}M params: {len(self.blocks)} copied blocks, hint "
                f"{cfg.hint_channels} ch x{cfg.total_factor} through widths {list(cfg.hint_widths)}")


CONTROLNET_NAMES = {"unet": "controlnet", "dit": "dit_controlnet"}  # base network → its ControlNet's model name


def controlnet_for(base: nn.Module, **options) -> ControlNet | DiTControlNet:
    """The ControlNet of ``base`` (a U-Net or a DiT), copied from it (``from_model``)."""
    if isinstance(base, UNet):
        return ControlNet.from_model(base, **options)
    if isinstance(base, DiT):
        return DiTControlNet.from_model(base, **options)
    raise ValueError(f"a ControlNet controls a U-Net or a DiT, not a {type(base).__name__}")


def guess_mode_scales(n: int) -> list[float]:
    """Guess mode's per-residual weights, shallow to deep and the middle last: 0.825^(n − 1 − k)
    (the reference code's ``[0.825 ** float(12 - i) for i in range(13)]`` for n = 13)."""
    return [GUESS_MODE_BASE ** float(n - 1 - k) for k in range(n)]

