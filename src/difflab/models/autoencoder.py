"""LDM's KL-regularized autoencoder: "High-Resolution Image Synthesis with Latent Diffusion Models"
(Rombach et al. 2022, §3 and appendix G; the ``AutoencoderKL`` of the CompVis code).

Latent diffusion trains the diffusion model on z = E(x), a latent f times smaller per side
(f = 2^(levels − 1), e.g. 4 or 8), and decodes its samples with D(z). The autoencoder here is
that model without the perceptual and adversarial terms of its loss (see docs/autoencoders.md):

* **Encoder**: a 3×3 stem; per level ``num_res_blocks`` plain residual blocks (GroupNorm, SiLU,
  3×3 convolution, twice; no time embedding), self-attention at the chosen resolutions, and a 2×
  strided-convolution downsampling except at the last level; a middle block of residual block,
  self-attention, residual block; GroupNorm, SiLU and a 3×3 convolution to 2·z_channels; a 1×1
  convolution (LDM's ``quant_conv``) gives the moments (μ, log σ²) of the posterior
  q(z|x) = N(μ, diag σ²), with log σ² clamped to [−30, 20] as in LDM.
* **Decoder**: the mirror image: a 1×1 convolution (``post_quant_conv``), a 3×3 stem, the middle
  block, per level from the coarsest ``num_res_blocks + 1`` residual blocks (and attention) and a
  2× nearest + 3×3 convolution upsampling except at the finest level, GroupNorm, SiLU, 3×3 conv.
* **Regularization**: KL(q(z|x) ‖ N(0, I)) with a small weight (LDM: 10⁻⁶), which keeps the latent
  near unit scale without squeezing information out of it (Kingma & Welling 2014, appendix B).

:class:`Encoder` and :class:`Decoder` are shared with the VQ-regularized autoencoder
(:mod:`.vq`). Training is ``difflab train-autoencoder`` (the trainer with
``model.name: autoencoder_kl``); :func:`difflab.latent.load_autoencoder` reads a trained checkpoint and its
latent scale (:func:`estimate_latent_scale`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn import GroupNorm32, SpatialSelfAttention, Upsample, zero_module
from .pyramid import check_positive, check_pyramid, downsampling_factor, level_resolutions
from .unet import DOWNSAMPLE_PADDINGS, downsample

LOGVAR_RANGE = (-30.0, 20.0)  # LDM's clamp of log σ²: σ between e^-15 and e^10


@dataclass
class AutoencoderConfig:
    """Hyper-parameters of the autoencoders' trunk (and the whole of :class:`AutoencoderKL`);
    plain values only, so ``asdict`` → JSON → ``AutoencoderConfig(**d)``.

    Attributes:
        in_channels: image channels (1 grayscale, 3 RGB); the decoder outputs as many.
        image_size: height = width of the training images; must be divisible by the factor f.
        model_channels: base width; level ``i`` has ``model_channels · channel_mult[i]`` channels.
        channel_mult: one multiplier per level; f = 2^(len(channel_mult) − 1).
        num_res_blocks: residual blocks per level in the encoder (the decoder has one more).
        attention_resolutions: resolutions in pixels with self-attention after each residual
            block; the middle blocks always have attention (LDM's KL models: none besides those).
        z_channels: channels of the latent z.
        num_heads: heads of every attention layer (LDM: 1).
        norm_groups: groups of every group normalization (32 in LDM).
        dropout: dropout before the second convolution of each residual block.
        downsample_padding: ``symmetric`` (one pixel on every side of the strided 3×3
            convolution, as the U-Net) or ``ldm`` (one pixel right and bottom only, as LDM's and
            diffusers' encoders; needed to load their weights, see :mod:`.diffusers_weights`).
        norm_eps: ε of every group normalization (LDM and diffusers: 10⁻⁶).
    """

    in_channels: int = 3
    image_size: int = 64
    model_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = ()
    z_channels: int = 3
    num_heads: int = 1
    norm_groups: int = 32
    dropout: float = 0.0
    downsample_padding: str = "symmetric"
    norm_eps: float = 1e-5

    def __post_init__(self):
        # JSON turns tuples into lists; keep the dataclass hashable and comparable.
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        self.attention_resolutions = tuple(int(r) for r in self.attention_resolutions)
        self.validate()

    @property
    def factor(self) -> int:
        """The downsampling factor f = 2^(levels − 1): the latent is image_size / f pixels a side."""
        return downsampling_factor(self.channel_mult)

    @property
    def resolutions(self) -> tuple[int, ...]:
        """The side length of the feature maps at each level: image_size, image_size/2, …"""
        return level_resolutions(self.image_size, self.channel_mult)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(z_channels, image_size / f, image_size / f)."""
        side = self.image_size // self.factor
        return (self.z_channels, side, side)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field and the fix for an inconsistent configuration."""
        name = type(self).__name__
        check_positive(self, ("in_channels", "z_channels", "num_heads"))
        check_pyramid(self, "autoencoder")  # channel_mult, image_size, attention, norm_groups, heads, dropout
        if self.downsample_padding not in DOWNSAMPLE_PADDINGS:
            raise ValueError(f"{name}.downsample_padding must be one of {', '.join(DOWNSAMPLE_PADDINGS)}, "
                             f"got {self.downsample_padding!r}")
        if not self.norm_eps > 0:
            raise ValueError(f"{name}.norm_eps must be > 0, got {self.norm_eps}")


class ResnetBlock(nn.Module):
    """A residual block without embedding (LDM's ``ResnetBlock`` with ``temb_channels=0``)::

        h = Conv(SiLU(GroupNorm(x)));  h = ZeroConv(Dropout(SiLU(GroupNorm(h))));  out = skip(x) + h

    ``skip`` is a 1×1 convolution when the channel count changes. The second convolution starts
    at zero (difflab's convention, as in the U-Net), so the block starts as its skip path.
    """

    def __init__(self, channels: int, out_channels: int, norm_groups: int = 32, dropout: float = 0.0,
                 norm_eps: float = 1e-5):
        super().__init__()
        self.norm1 = GroupNorm32(norm_groups, channels, eps=norm_eps)
        self.conv1 = nn.Conv2d(channels, out_channels, 3, padding=1)
        self.norm2 = GroupNorm32(norm_groups, out_channels, eps=norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (N, C_out, H, W)
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


def _resnet(cfg: AutoencoderConfig, c_in: int, c_out: int) -> ResnetBlock:
    return ResnetBlock(c_in, c_out, cfg.norm_groups, cfg.dropout, cfg.norm_eps)


def _attention(cfg: AutoencoderConfig, ch: int) -> SpatialSelfAttention:
    return SpatialSelfAttention(ch, cfg.num_heads, norm_groups=cfg.norm_groups, norm_eps=cfg.norm_eps)


def _level_layers(cfg: AutoencoderConfig, c_in: int, c_out: int, resolution: int) -> list[nn.Module]:
    """A residual block, followed by self-attention at the configured resolutions."""
    layers: list[nn.Module] = [_resnet(cfg, c_in, c_out)]
    if resolution in cfg.attention_resolutions:
        layers.append(_attention(cfg, c_out))
    return layers


def _middle(cfg: AutoencoderConfig, ch: int) -> nn.Sequential:
    return nn.Sequential(_resnet(cfg, ch, ch), _attention(cfg, ch), _resnet(cfg, ch, ch))


def _head(cfg: AutoencoderConfig, ch: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(GroupNorm32(cfg.norm_groups, ch, eps=cfg.norm_eps), nn.SiLU(),
                         nn.Conv2d(ch, out_channels, 3, padding=1))


class Encoder(nn.Module):
    """x (N, in_channels, H, W) → features (N, out_channels, H/f, W/f); see the module docstring."""

    def __init__(self, cfg: AutoencoderConfig, out_channels: int):
        super().__init__()
        widths = [cfg.model_channels * m for m in cfg.channel_mult]
        ch = widths[0]
        self.stem = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        layers: list[nn.Module] = []
        for level, (width, resolution) in enumerate(zip(widths, cfg.resolutions)):
            for _ in range(cfg.num_res_blocks):
                layers += _level_layers(cfg, ch, width, resolution)
                ch = width
            if level != len(widths) - 1:
                layers.append(downsample(ch, cfg.downsample_padding))
        self.down = nn.Sequential(*layers)
        self.middle = _middle(cfg, ch)
        self.head = _head(cfg, ch, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.middle(self.down(self.stem(x))))  # (N, out_channels, H/f, W/f)


class Decoder(nn.Module):
    """z (N, z_channels, h, w) → images (N, in_channels, f·h, f·w); the encoder's mirror image."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        widths = [cfg.model_channels * m for m in cfg.channel_mult]
        ch = widths[-1]
        self.stem = nn.Conv2d(cfg.z_channels, ch, 3, padding=1)
        self.middle = _middle(cfg, ch)
        layers: list[nn.Module] = []
        for level in reversed(range(len(widths))):
            for _ in range(cfg.num_res_blocks + 1):
                layers += _level_layers(cfg, ch, widths[level], cfg.resolutions[level])
                ch = widths[level]
            if level != 0:
                layers.append(Upsample(ch))
        self.up = nn.Sequential(*layers)
        self.head = _head(cfg, ch, cfg.in_channels)

    def forward(self, z: Tensor) -> Tensor:
        return self.head(self.up(self.middle(self.stem(z))))  # (N, in_channels, f·h, f·w)


class DiagonalGaussian:
    """The encoder's posterior q(z|x) = N(μ, diag σ²) from moments (N, 2C, h, w) = [μ | log σ²].

    Computed in float32; log σ² is clamped to [−30, 20] (LDM's ``DiagonalGaussianDistribution``).
    """

    def __init__(self, moments: Tensor):
        mean, logvar = moments.float().chunk(2, dim=1)
        self.mean = mean  # (N, C, h, w)
        self.logvar = logvar.clamp(*LOGVAR_RANGE)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None, noise: Tensor | None = None) -> Tensor:
        """z = μ + σ·ε (the reparametrization trick, Kingma & Welling 2014, §2.4); ε ~ N(0, I)
        from ``generator`` (on its own device) unless ``noise`` gives it."""
        if noise is None:
            device = generator.device if generator is not None else self.mean.device
            noise = torch.randn(self.mean.shape, generator=generator, device=device).to(self.mean.device)
        return self.mean + self.std * noise

    def mode(self) -> Tensor:
        """μ, the most likely latent (used to reconstruct)."""
        return self.mean

    def kl(self) -> Tensor:
        """KL(q(z|x) ‖ N(0, I)) = ½ Σ (μ² + σ² − 1 − log σ²) over the latent, in nats; shape (N,)."""
        return 0.5 * (self.mean.square() + self.var - 1.0 - self.logvar).sum(dim=(1, 2, 3))


@dataclass
class AutoencoderOutput:
    """What an autoencoder's training forward returns (the trainer's objective reads it).

    Attributes:
        reconstruction: x̂ (N, C, H, W) in the input's dtype.
        kl: KL(q(z|x) ‖ N(0, I)) per image in nats (N,) (KL autoencoder), else None.
        commitment: β·‖sg[z_q] − z_e‖² averaged over latent elements (VQ autoencoder), else None.
        perplexity: exp of the entropy of the batch's code usage (VQ), else None.
        usage: fraction of the codebook used by the batch (VQ), else None.
    """

    reconstruction: Tensor
    kl: Tensor | None = None
    commitment: Tensor | None = None
    perplexity: Tensor | None = None
    usage: Tensor | None = None


def check_image_size(model: nn.Module, x: Tensor) -> None:
    """A clear error for input the autoencoder cannot take back to the same size."""
    cfg = model.config
    if x.ndim != 4 or x.shape[1] != cfg.in_channels:
        raise ValueError(f"{type(model).__name__} takes images (N, {cfg.in_channels}, H, W), "
                         f"got shape {tuple(x.shape)}")
    if x.shape[-1] % cfg.factor or x.shape[-2] % cfg.factor:
        raise ValueError(f"image size {tuple(x.shape[-2:])} is not divisible by the autoencoder's downsampling "
                         f"factor f={cfg.factor}; resize or crop the images to a multiple of {cfg.factor}")


class AutoencoderKL(nn.Module):
    """LDM's KL autoencoder: ``encode(x) -> DiagonalGaussian``, ``decode(z) -> x̂``.

    Images are floats in [−1, 1]; the training forward ``model(x, noise)`` returns an
    :class:`AutoencoderOutput` with the reconstruction from z = μ + σ·noise and the KL term.
    """

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = cfg = config
        self.encoder = Encoder(cfg, 2 * cfg.z_channels)
        self.quant_conv = nn.Conv2d(2 * cfg.z_channels, 2 * cfg.z_channels, 1)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 1)
        self.decoder = Decoder(cfg)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.config.latent_shape

    def encode(self, x: Tensor) -> DiagonalGaussian:
        """q(z|x) of images x (N, C, H, W); H and W must be multiples of f."""
        check_image_size(self, x)
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))  # moments (N, 2·z_channels, H/f, W/f)

    def decode(self, z: Tensor) -> Tensor:
        """Images (N, C, f·h, f·w) from latents z (N, z_channels, h, w)."""
        return self.decoder(self.post_quant_conv(z.to(self.post_quant_conv.weight.dtype)))

    def forward(self, x: Tensor, noise: Tensor | None = None) -> AutoencoderOutput:
        """Reconstruct x through a posterior sample z = μ + σ·noise (noise ~ N(0, I) if None)."""
        posterior = self.encode(x)
        reconstruction = self.decode(posterior.sample(noise=noise))
        return AutoencoderOutput(reconstruction=reconstruction.to(x.dtype), kl=posterior.kl())

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """D(μ(x)): the deterministic reconstruction (posterior mean), as evaluation uses."""
        return self.decode(self.encode(x).mode()).to(x.dtype)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def summary(self) -> str:
        return f"AutoencoderKL {self.num_parameters() / 1e6:.2f}M params: {trunk_summary(self.config)}"


def trunk_summary(cfg: AutoencoderConfig) -> str:
    widths = "-".join(str(cfg.model_channels * m) for m in cfg.channel_mult)
    c, h, w = cfg.latent_shape
    return (f"{cfg.image_size}x{cfg.image_size}x{cfg.in_channels} -> latent {c}x{h}x{w} (f={cfg.factor}), "
            f"channels {widths}, {cfg.num_res_blocks} res blocks/level")


@torch.no_grad()
def encode_latents(model: nn.Module, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The latents diffusion is trained on: a posterior sample for a KL autoencoder (as LDM's
    ``get_first_stage_encoding``), the pre-quantization latent for a VQ one."""
    encoded = model.encode(x)
    return encoded.sample(generator) if isinstance(encoded, DiagonalGaussian) else encoded


def _batches(images: Tensor, batch_size: int, device: torch.device):
    """Float [−1, 1] batches on ``device`` of uint8 (or already float) images."""
    from ..data.convert import to_float

    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device)
        yield to_float(batch) if batch.dtype == torch.uint8 else batch.float()


@torch.no_grad()
def estimate_latent_scale(autoencoder: nn.Module, images: Tensor, batch_size: int = 128, seed: int = 0) -> float:
    """LDM's scale factor 1 / std(z) over the latents of ``images`` (uint8, or floats in [−1, 1]).

    Rombach et al. 2022, appendix D.1 (and ``LatentDiffusion.scale_factor`` with
    ``scale_by_std``): the diffusion model sees z · scale, which has unit variance, so the noise
    schedules tuned for pixels in [−1, 1] keep their signal-to-noise ratios.
    """
    if len(images) == 0:
        raise ValueError("estimate_latent_scale needs at least one image")
    device = next(autoencoder.parameters()).device
    was_training = autoencoder.training
    autoencoder.eval()
    generator = torch.Generator(device).manual_seed(seed)
    latents = torch.cat([encode_latents(autoencoder, x, generator).float().flatten()
                         for x in _batches(images, batch_size, device)])
    autoencoder.train(was_training)
    std = latents.std().item()
    if not std > 0:
        raise ValueError("the latents have zero variance: the autoencoder is not trained (or the images are constant)")
    return 1.0 / std


def psnr(x: Tensor, reference: Tensor) -> Tensor:
    """Peak signal-to-noise ratio per image (N,) in dB of x against reference, both in [−1, 1]
    (data range 2): 10·log10(2² / MSE); x is clamped to [−1, 1] first."""
    mse = (x.float().clamp(-1, 1) - reference.float()).square().flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-10))


@torch.no_grad()
def reconstruct_images(autoencoder: nn.Module, images: Tensor, batch_size: int = 128) -> Tensor:
    """uint8 (N, C, H, W) images → their uint8 reconstructions (posterior mean / quantized latent)."""
    from ..data.convert import to_uint8

    device = next(autoencoder.parameters()).device
    was_training = autoencoder.training
    autoencoder.eval()
    out = [to_uint8(autoencoder.reconstruct(x)).cpu() for x in _batches(images, batch_size, device)]
    autoencoder.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def reconstruction_psnr(autoencoder: nn.Module, images: Tensor, batch_size: int = 128) -> float:
    """Mean PSNR (dB) of the reconstructions of uint8 ``images`` (see :func:`psnr`)."""
    device = next(autoencoder.parameters()).device
    was_training = autoencoder.training
    autoencoder.eval()
    values = torch.cat([psnr(autoencoder.reconstruct(x), x).cpu() for x in _batches(images, batch_size, device)])
    autoencoder.train(was_training)
    return values.mean().item()


# Presets: one call each. Keyword arguments override any field, e.g. ``PRESETS["kl-f4"](z_channels=4)``.


def kl_f4(**kw) -> AutoencoderConfig:
    """LDM's kl-f4 (Rombach et al. 2022, Table 8): f = 4, z = 3, widths 128-256-512; 64×64 RGB here."""
    return AutoencoderConfig(**{**dict(in_channels=3, image_size=64, model_channels=128, channel_mult=(1, 2, 4),
                                       num_res_blocks=2, z_channels=3), **kw})


def kl_f8(**kw) -> AutoencoderConfig:
    """LDM's kl-f8 (the first stage of Stable Diffusion): f = 8, z = 4, widths 128-256-512-512."""
    return AutoencoderConfig(**{**dict(in_channels=3, image_size=64, model_channels=128, channel_mult=(1, 2, 4, 4),
                                       num_res_blocks=2, z_channels=4), **kw})


def tiny(**kw) -> AutoencoderConfig:
    """Tests: 8×8 grey digits, f = 2, z = 2, 8-16 channels (a few thousand parameters)."""
    return AutoencoderConfig(**{**dict(in_channels=1, image_size=8, model_channels=8, channel_mult=(1, 2),
                                       num_res_blocks=1, z_channels=2, norm_groups=4), **kw})


PRESETS = {"kl-f4": kl_f4, "kl-f8": kl_f8, "tiny": tiny}
