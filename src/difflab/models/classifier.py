"""ADM's noisy classifier: the U-Net's encoder half with attention pooling, p_φ(y | xₜ, t).

Classifier guidance (Dhariwal & Nichol 2021, §4.1) needs a classifier of *noisy* images at every
noise level of the diffusion process. ADM builds it from the diffusion U-Net's downsampling
trunk (stem, encoder levels and middle block, all conditioned on t through AdaGN) followed by
GroupNorm, SiLU and an attention-pooling head (CLIP's, :class:`~difflab.nn.AttentionPool2d`) that
outputs the class logits. It is trained with cross-entropy on xₜ ~ q(xₜ | x₀) at uniformly
random t of the same schedule (``difflab train`` with ``model.name: noisy_classifier``).

It takes a :class:`~difflab.models.unet.UNetConfig`, whose encoder fields it uses;
``num_classes`` is the number of classes it predicts. ``learned_sigma``, ``out_channels`` and
``rescale_concat_skip`` concern the decoder and are ignored.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..nn import AttentionPool2d, GroupNorm32, TimestepMLP
from .unet import UNetBlocks, UNetConfig, build_encoder, run_encoder


class NoisyClassifier(nn.Module):
    """``classifier(x_t, t) -> logits`` (N, num_classes), with t the schedule's float time."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        if config.num_classes < 2:
            raise ValueError(f"a noisy classifier needs num_classes >= 2, got {config.num_classes}; "
                             "train it on a dataset with class labels")
        if config.context_dim:
            raise ValueError("the noisy classifier takes no context: set context_dim=0")
        self.config = cfg = config
        emb_dim = 4 * cfg.model_channels
        self.time_embed = TimestepMLP(cfg.model_channels, emb_dim, freq_shift=cfg.time_freq_shift,
                                      sin_first=cfg.time_sin_first)
        blocks = UNetBlocks(cfg, emb_dim)
        self.stem, self.encoder, self.middle, _ = build_encoder(cfg, blocks)
        ch = blocks.widths[-1]
        self.norm = GroupNorm32(cfg.norm_groups, ch)
        self.pool = AttentionPool2d(cfg.resolutions[-1], ch, cfg.num_classes, cfg.num_heads, cfg.num_head_channels)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Logits (N, num_classes) for noisy images x (N, C, H, W) at times t (N,)."""
        h, _ = run_encoder(self, x, self.time_embed(t))  # (N, C_last, H', W')
        return self.pool(F.silu(self.norm(h))).float()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def summary(self) -> str:
        cfg = self.config
        widths = "-".join(str(cfg.model_channels * m) for m in cfg.channel_mult)
        return (f"NoisyClassifier {self.num_parameters() / 1e6:.2f}M params: {cfg.image_size}x{cfg.image_size}"
                f"x{cfg.in_channels} -> {cfg.num_classes} classes, channels {widths}, attention pooling")
