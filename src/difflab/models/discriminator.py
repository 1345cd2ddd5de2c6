"""A class-conditional projection discriminator for adversarial distillation.

Miyato & Koyama 2018 ("cGANs with Projection Discriminator"): a convolutional trunk φ maps an
image to features h = Σ_{pixels} φ(x), and the logit is

    D(x, y) = ψ(h) + ⟨e_y, h⟩

with ψ a linear head and e_y a learned class embedding (no class term for an unconditional
model). Every layer is spectrally normalised (Miyato et al. 2018, "Spectral Normalization for
Generative Adversarial Networks"), which bounds D's Lipschitz constant and is what keeps a
discriminator trained from scratch beside a pretrained generator stable. The trunk halves the
resolution with stride-2 convolutions until it is 4×4 or smaller, doubling the width up to
4× ``channels``.

A class-conditional discriminator also carries AC-GAN's auxiliary classifier (Odena et al. 2017),
a linear layer on the same features h giving class logits, for the objective that wants one.
It judges images in the diffusion model's own space (pixels in [−1, 1], or latents).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm


class ProjectionDiscriminator(nn.Module):
    """``D(x, class_labels) -> logits`` (N,) for images x (N, C, H, W)."""

    def __init__(self, in_channels: int, resolution: int, num_classes: int = 0, channels: int = 64):
        super().__init__()
        if resolution < 4:
            raise ValueError(f"the discriminator needs images of at least 4x4, got {resolution}")
        layers, width = [spectral_norm(nn.Conv2d(in_channels, channels, 3, padding=1))], channels
        for _ in range(max(0, int(math.log2(resolution // 4)))):  # halve down to 4x4
            wider = min(2 * width, 4 * channels)
            layers.append(spectral_norm(nn.Conv2d(width, wider, 4, stride=2, padding=1)))
            width = wider
        layers.append(spectral_norm(nn.Conv2d(width, width, 3, padding=1)))
        self.trunk = nn.ModuleList(layers)
        self.head = spectral_norm(nn.Linear(width, 1))
        self.class_embed = spectral_norm(nn.Embedding(num_classes, width)) if num_classes else None
        # AC-GAN's auxiliary classifier (Odena et al. 2017) on the same features, trained on real images only
        self.classifier = nn.Linear(width, num_classes) if num_classes else None

    def features(self, x: Tensor) -> Tensor:
        """h = Σ_{pixels} φ(x): (N, width)."""
        h = x
        for conv in self.trunk:
            h = F.leaky_relu(conv(h), 0.2)
        return h.sum((2, 3))

    def logits(self, h: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """D's real/generated logits (N,) from :meth:`features`."""
        logits = self.head(h).squeeze(1)
        if self.class_embed is not None:
            if class_labels is None:
                raise ValueError("this discriminator is class-conditional: pass class_labels")
            logits = logits + (self.class_embed(class_labels) * h).sum(1)
        return logits

    def forward(self, x: Tensor, class_labels: Tensor | None = None) -> Tensor:
        return self.logits(self.features(x), class_labels)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
