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

This module is the network; the scale, guess mode and the schedule window that decide how much of
it reaches the base at sampling are :mod:`difflab.pipelines.controlnet`'s.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass

from torch import Tensor, nn

from ..nn import TimestepMLP, zero_module
from .conditioning import add_aug_level_embedding, add_label_embedding, concat_features, context_tokens
from .unet import UNet, UNetBlocks, UNetConfig, build_encoder, run_encoder

GUESS_MODE_BASE = 0.825  # guess mode scales residual k of K by 0.825^(K − 1 − k) (the reference code, K = 13)


@dataclass
class ControlNetConfig:
    """Hyper-parameters of :class:`ControlNet`; plain values only (JSON round trip).

    Attributes:
        base: the base network's complete config (``model_config_dict``, ``name`` = ``unet``).
        hint_channels: channels of the control image (1 for edges and outlines, 3 for RGB).
        hint_factor: control image side / the network's side: 1 for a pixel model, the
            autoencoder's downsampling factor for a latent one (a power of 2).
        hint_widths: the hint encoder's widths; each width gets two 3×3 convolutions, the first
            ``log2(hint_factor)`` transitions between widths have stride 2.
        unlock_decoder: also train a copy of the base's decoder and head (``sd_locked: false``).
    """

    base: dict
    hint_channels: int = 3
    hint_factor: int = 1
    hint_widths: tuple[int, ...] = (16, 32, 64)
    unlock_decoder: bool = False

    def __post_init__(self):
        self.base = json.loads(json.dumps(self.base))  # one form (lists, not tuples) however it was given
        self.hint_widths = tuple(int(w) for w in self.hint_widths)
        self.validate()

    @property
    def unet(self) -> UNetConfig:
        """The base U-Net's config."""
        options = {k: v for k, v in self.base.items() if k not in ("name", "preset")}
        return UNetConfig(**options)

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
        if self.base.get("name", "unet") != "unet":
            raise ValueError(f"ControlNet controls difflab's U-Net; the base is a {self.base.get('name')!r} "
                             "network (a DiT has no skip connections to feed): train the base as model.name: unet")
        if self.hint_channels < 1:
            raise ValueError(f"ControlNetConfig.hint_channels must be >= 1, got {self.hint_channels}")
        factor = self.hint_factor
        if factor < 1 or factor & (factor - 1):
            raise ValueError(f"ControlNetConfig.hint_factor must be a power of 2 (1 for pixels, the autoencoder's "
                             f"factor for latents), got {factor}")
        if not self.hint_widths or min(self.hint_widths) < 1:
            raise ValueError(f"ControlNetConfig.hint_widths must be positive widths, got {self.hint_widths}")
        if len(self.hint_widths) - 1 < int(math.log2(factor)):
            raise ValueError(f"the hint encoder needs {int(math.log2(factor))} stride-2 steps for hint_factor "
                             f"{factor} but its {len(self.hint_widths)} widths give {len(self.hint_widths) - 1}: "
                             "add widths to ControlNetConfig.hint_widths")
        self.unet.validate()


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
        self.config = config
        unet = config.unet
        emb_dim = 4 * unet.model_channels
        # the base's own embeddings and encoder, copied (from_model) and trained
        self.time_embed = TimestepMLP(unet.model_channels, emb_dim)
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
            raise ValueError(f"ControlNet controls difflab's U-Net, not a {type(base).__name__} (a DiT has no skip "
                             "connections to feed)")
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

    def check_hint(self, x: Tensor, hint: Tensor) -> None:
        """One clear error for a control image that does not fit the network."""
        cfg = self.config
        f = cfg.hint_factor
        expected = (x.shape[0], cfg.hint_channels, x.shape[-2] * f, x.shape[-1] * f)
        if hint.ndim != 4 or tuple(hint.shape[1:]) != expected[1:]:
            raise ValueError(f"this ControlNet takes control images of {cfg.hint_channels} channel(s) at "
                             f"{expected[2]}x{expected[3]} pixels (the model's size), got shape {tuple(hint.shape)}")
        if hint.shape[0] != x.shape[0]:
            raise ValueError(f"{hint.shape[0]} control images for a batch of {x.shape[0]}")

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


def guess_mode_scales(n: int) -> list[float]:
    """Guess mode's per-residual weights, shallow to deep and the middle last: 0.825^(n − 1 − k)
    (the reference code's ``[0.825 ** float(12 - i) for i in range(13)]`` for n = 13)."""
    return [GUESS_MODE_BASE ** float(n - 1 - k) for k in range(n)]

