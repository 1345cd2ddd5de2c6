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

:class:`FeatureDiscriminator` is the other kind, latent adversarial distillation's (Sauer et al.
2024, "LADD"): it learns no trunk of its own but reads a frozen diffusion network's encoder at a
noise level σ, with a small projection head on each of its resolutions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
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

    def class_logits(self, h: Tensor) -> Tensor:
        """The auxiliary classifier's class logits (N, num_classes) from :meth:`features`."""
        return self.classifier(h)

    def forward(self, x: Tensor, class_labels: Tensor | None = None) -> Tensor:
        return self.logits(self.features(x), class_labels)


class FeatureDiscriminator(nn.Module):
    """Projection heads on a frozen diffusion network's features (LADD, Sauer et al. 2024).

    ``extract(x, class_labels, noise, sigma)`` noises the images to level σ, runs the frozen
    network's encoder and returns its feature maps (e.g. :meth:`UNet.encoder_features
    <difflab.models.unet.UNet.encoder_features>`); the network is not part of this module, so
    neither its weights nor its gradients are D's. On each map h_k (C_k channels) a head gives
    per-position logits, a projection discriminator's (Miyato & Koyama 2018) applied at every
    position as in Projected GANs (Sauer et al. 2021):

        g_k = LeakyReLU(conv₃ₓ₃(h_k)),   D_k(x, y)[p] = ψ_k(g_k[p]) + ⟨e_{k,y}, g_k[p]⟩

    and D(x, y) is the mean of every head's mean over positions. The noise level is what LADD adds
    to a feature network: at high σ the encoder sees only layout, at low σ detail, so drawing σ
    per sample spreads D's attention over both. Heads are spectrally normalised; the auxiliary
    classifier reads the spatially averaged last map.
    """

    def __init__(self, extract: Callable[..., list[Tensor]], feature_channels: Sequence[int],
                 num_classes: int = 0, channels: int = 64):
        super().__init__()
        self.extract = extract  # a plain callable: its network stays outside this module's state
        self.convs = nn.ModuleList(spectral_norm(nn.Conv2d(c, channels, 3, padding=1)) for c in feature_channels)
        self.outs = nn.ModuleList(spectral_norm(nn.Conv2d(channels, 1, 1)) for _ in feature_channels)
        self.class_embeds = (nn.ModuleList(spectral_norm(nn.Embedding(num_classes, channels)) for _ in feature_channels)
                             if num_classes else None)
        self.classifier = nn.Linear(feature_channels[-1], num_classes) if num_classes else None

    def features(self, x: Tensor, class_labels: Tensor | None, noise: Tensor, sigma: Tensor) -> list[Tensor]:
        """The frozen network's feature maps of x noised to σ (N,) with the given noise."""
        return self.extract(x, class_labels, noise, sigma)

    def logits(self, h: list[Tensor], class_labels: Tensor | None = None) -> Tensor:
        """D's real/generated logits (N,) from :meth:`features`."""
        if self.class_embeds is not None and class_labels is None:
            raise ValueError("this discriminator is class-conditional: pass class_labels")
        total = 0
        for k, (conv, out) in enumerate(zip(self.convs, self.outs, strict=True)):
            g = F.leaky_relu(conv(h[k].float()), 0.2)  # (N, channels, H_k, W_k)
            logit = out(g).squeeze(1)  # (N, H_k, W_k)
            if self.class_embeds is not None:
                logit = logit + torch.einsum("nchw,nc->nhw", g, self.class_embeds[k](class_labels))
            total = total + logit.mean((1, 2))
        return total / len(self.convs)

    def class_logits(self, h: list[Tensor]) -> Tensor:
        """The auxiliary classifier's class logits (N, num_classes) from :meth:`features`."""
        return self.classifier(h[-1].float().mean((2, 3)))
