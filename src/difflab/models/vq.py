"""LDM's VQ-regularized autoencoder (Rombach et al. 2022, §3; the ``VQModel`` of taming-transformers,
Esser et al. 2021), with the codebook learned by exponential moving averages (VQ-VAE, van den
Oord et al. 2017, §3.2 and appendix A.1; VQ-VAE-2, Razavi et al. 2019).

The trunk is the KL autoencoder's (:class:`~.autoencoder.Encoder`, :class:`~.autoencoder.Decoder`);
between them a codebook {e_k}, k = 1 … K, of vectors of z_channels dimensions replaces each
latent vector z_e by its nearest entry:

    k* = argmin_k ‖z_e − e_k‖²,   z_q = e_{k*}

* **Straight-through gradient**: the decoder sees z_e + sg[z_q − z_e], which equals z_q forward
  and passes the decoder's gradient to the encoder unchanged (VQ-VAE eq. 3).
* **Commitment loss** β‖z_e − sg[z_q]‖² (β = 0.25) keeps the encoder near its codes; the codebook
  has no loss of its own but follows the EMA updates below (decay γ = 0.99), after the forward of
  each training batch, with n_k the number of vectors assigned to code k::

      N_k ← γ N_k + (1 − γ) n_k           m_k ← γ m_k + (1 − γ) Σ_{z_e ↦ k} z_e
      Ñ_k = (N_k + ε) / (Σ_j N_j + K ε) · Σ_j N_j      (Laplace smoothing)
      e_k = m_k / Ñ_k

* **Dead-code restart** (Dhariwal et al. 2020, Jukebox §2.3): a code whose average count N_k falls
  below ``dead_code_threshold`` is moved onto a random encoder output of the batch.
* **Usage**: the training forward reports the perplexity exp(−Σ p_k log p_k) of the batch's code
  frequencies p_k (K when every code is equally used, 1 when one code takes all) and the
  fraction of codes used.

As in LDM, the quantizer is "absorbed into the decoder": :meth:`AutoencoderVQ.encode` returns
the continuous pre-quantization latent, on which diffusion is trained, and
:meth:`AutoencoderVQ.decode` quantizes before decoding. Under DDP the counts and sums of the EMA
update are summed over processes and restarted codes are drawn from the global batch (and
broadcast from process 0), so every process keeps the codebook one process would have.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .autoencoder import AutoencoderConfig, AutoencoderOutput, Decoder, Encoder, check_image_size, trunk_summary


@dataclass
class AutoencoderVQConfig(AutoencoderConfig):
    """:class:`~.autoencoder.AutoencoderConfig` plus the codebook.

    Attributes:
        codebook_size: K, the number of codes.
        beta: weight β of the commitment loss (0.25 in VQ-VAE and taming).
        ema_decay: γ of the codebook's moving averages.
        epsilon: ε of the Laplace smoothing of the cluster sizes.
        dead_code_threshold: restart codes whose average count per batch falls below this
            (0 = never restart).
    """

    codebook_size: int = 512
    beta: float = 0.25
    ema_decay: float = 0.99
    epsilon: float = 1e-5
    dead_code_threshold: float = 1.0

    def validate(self) -> None:
        super().validate()
        if self.codebook_size < 2:
            raise ValueError(f"AutoencoderVQConfig.codebook_size must be >= 2, got {self.codebook_size}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"AutoencoderVQConfig.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.beta < 0 or self.epsilon <= 0 or self.dead_code_threshold < 0:
            raise ValueError("AutoencoderVQConfig.beta and dead_code_threshold must be >= 0 and epsilon > 0, got "
                             f"{self.beta}, {self.dead_code_threshold} and {self.epsilon}")


@dataclass
class Quantized:
    """The quantizer's output.

    Attributes:
        z_q: the quantized latent with the straight-through gradient, z_e + sg[z_q − z_e] (N, D, h, w).
        indices: the chosen code of every latent vector (N, h, w).
        commitment: β · mean ‖z_e − sg[z_q]‖² over the latent's elements (scalar).
        perplexity: exp(entropy) of the code frequencies of this batch (scalar).
        usage: fraction of the K codes used by this batch (scalar).
    """

    z_q: Tensor
    indices: Tensor
    commitment: Tensor
    perplexity: Tensor
    usage: Tensor


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _sum_over_processes(t: Tensor) -> Tensor:
    if _distributed():
        dist.all_reduce(t)
    return t


def _rows_of_all_processes(flat: Tensor) -> Tensor:
    """The rows of every process's (equal-sized) batch, in rank order: the global batch's."""
    if not _distributed():
        return flat
    parts = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, flat.contiguous())
    return torch.cat(parts)


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantization against an EMA-learned codebook (see the module docstring).

    The codebook and its statistics are buffers, not parameters: the optimizer never sees them,
    and checkpoints (and the trainer's weight EMA, which copies buffers) carry them.
    """

    def __init__(self, codebook_size: int, dim: int, beta: float = 0.25, decay: float = 0.99,
                 epsilon: float = 1e-5, dead_code_threshold: float = 0.0):
        super().__init__()
        self.codebook_size, self.dim = codebook_size, dim
        self.beta, self.decay, self.epsilon, self.dead_code_threshold = beta, decay, epsilon, dead_code_threshold
        codebook = torch.randn(codebook_size, dim)
        self.register_buffer("codebook", codebook)  # e_k (K, D)
        # N_k = 1 and m_k = e_k: consistent with e_k = m_k / N_k from the first update on.
        self.register_buffer("cluster_size", torch.ones(codebook_size))  # N_k (K,)
        self.register_buffer("embed_sum", codebook.clone())  # m_k (K, D)

    @torch.no_grad()
    def nearest(self, flat: Tensor, chunk: int = 16384) -> Tensor:
        """argmin_k ‖z − e_k‖² for each row of ``flat`` (M, D), via ‖z‖² − 2 z·e_k + ‖e_k‖²,
        in chunks of rows so the (M, K) distance matrix never has to fit at once."""
        codebook = self.codebook.float()
        norms = codebook.square().sum(1)  # (K,)
        out = [(norms - 2 * part @ codebook.T).argmin(1) for part in flat.split(chunk)]  # ‖z‖² is the same for every k
        return torch.cat(out)

    @torch.no_grad()
    def ema_update(self, flat: Tensor, indices: Tensor) -> None:
        """One EMA step of the codebook from the vectors ``flat`` (M, D) assigned to ``indices`` (M,)."""
        counts = _sum_over_processes(torch.bincount(indices, minlength=self.codebook_size).float())  # n_k
        sums = _sum_over_processes(torch.zeros_like(self.embed_sum).index_add_(0, indices, flat))  # Σ z_e ↦ k
        self.cluster_size.lerp_(counts, 1 - self.decay)
        self.embed_sum.lerp_(sums, 1 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.epsilon) / (total + self.codebook_size * self.epsilon) * total
        self.codebook.copy_(self.embed_sum / smoothed[:, None])
        if self.dead_code_threshold > 0:
            # A random vector of the global batch for every code, used where the code is dead (no
            # host sync). The trainer seeds the RNG alike in every process, so DDP picks what one
            # process would; the broadcast keeps the codebooks equal even when it does not.
            rows = _rows_of_all_processes(flat)
            candidates = rows[torch.randint(len(rows), (self.codebook_size,), device=flat.device)]
            if _distributed():
                dist.broadcast(candidates, src=0)
            dead = (self.cluster_size < self.dead_code_threshold)[:, None]  # (K, 1)
            self.codebook.copy_(torch.where(dead, candidates, self.codebook))
            self.embed_sum.copy_(torch.where(dead, candidates * self.dead_code_threshold, self.embed_sum))
            self.cluster_size.copy_(torch.where(dead[:, 0], self.dead_code_threshold, self.cluster_size))

    def forward(self, z: Tensor, update: bool = False) -> Quantized:
        """Quantize z_e (N, D, h, w); with ``update`` (training) take one EMA step afterwards."""
        with torch.autocast(z.device.type, enabled=False):  # distances and statistics in float32
            z = z.float()
            n, d, h, w = z.shape
            flat = z.permute(0, 2, 3, 1).reshape(-1, d)  # (N·h·w, D)
            indices = self.nearest(flat)
            z_q = self.codebook[indices].view(n, h, w, d).permute(0, 3, 1, 2)  # before this batch's update
            counts = torch.bincount(indices, minlength=self.codebook_size).float()
            if update:
                self.ema_update(flat.detach(), indices)
            p = counts / counts.sum()
            perplexity = torch.exp(-(p * torch.log(p.clamp_min(1e-10))).sum())
            commitment = self.beta * F.mse_loss(z, z_q.detach())
            z_q = z + (z_q - z).detach()  # straight-through: forward z_q, backward identity
        return Quantized(z_q, indices.view(n, h, w), commitment, perplexity, (counts > 0).float().mean())


class AutoencoderVQ(nn.Module):
    """The VQ autoencoder: ``encode(x) -> z_e`` (continuous), ``decode(z) -> D(quantize(z))``.

    The training forward ``model(x)`` quantizes with the EMA update and returns an
    :class:`~.autoencoder.AutoencoderOutput` with the commitment loss, perplexity and usage.
    """

    def __init__(self, config: AutoencoderVQConfig):
        super().__init__()
        self.config = cfg = config
        self.encoder = Encoder(cfg, cfg.z_channels)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 1)
        self.quantizer = VectorQuantizer(cfg.codebook_size, cfg.z_channels, cfg.beta, cfg.ema_decay, cfg.epsilon,
                                         cfg.dead_code_threshold)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 1)
        self.decoder = Decoder(cfg)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.config.latent_shape

    def encode(self, x: Tensor) -> Tensor:
        """The pre-quantization latent z_e (N, z_channels, H/f, W/f) of images x in [−1, 1]."""
        check_image_size(self, x)
        return self.quant_conv(self.encoder(x))

    def quantize(self, z: Tensor) -> Quantized:
        """Nearest codes of z, without touching the codebook."""
        return self.quantizer(z, update=False)

    def decode(self, z: Tensor) -> Tensor:
        """Quantize z (N, z_channels, h, w), then decode to images (N, C, f·h, f·w)."""
        return self._decode_quantized(self.quantize(z).z_q)

    def _decode_quantized(self, z_q: Tensor) -> Tensor:
        return self.decoder(self.post_quant_conv(z_q.to(self.post_quant_conv.weight.dtype)))

    def forward(self, x: Tensor, noise: Tensor | None = None) -> AutoencoderOutput:
        """Reconstruct x; in training mode the codebook takes one EMA step. ``noise`` is ignored
        (quantization is deterministic); it is accepted so both autoencoders train alike."""
        q = self.quantizer(self.encode(x), update=self.training)
        reconstruction = self._decode_quantized(q.z_q)
        return AutoencoderOutput(reconstruction=reconstruction.to(x.dtype), commitment=q.commitment,
                                 perplexity=q.perplexity, usage=q.usage)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """D(quantize(E(x))), the model's reconstruction."""
        return self.decode(self.encode(x)).to(x.dtype)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def summary(self) -> str:
        return (f"AutoencoderVQ {self.num_parameters() / 1e6:.2f}M params: {trunk_summary(self.config)}, "
                f"{self.config.codebook_size} codes (EMA {self.config.ema_decay:g})")


# Presets: one call each. Keyword arguments override any field.


def vq_f4(**kw) -> AutoencoderVQConfig:
    """LDM's vq-f4 (Rombach et al. 2022, Table 8): f = 4, z = 3, 8192 codes, widths 128-256-512; 64×64 RGB here."""
    return AutoencoderVQConfig(**{**dict(in_channels=3, image_size=64, model_channels=128, channel_mult=(1, 2, 4),
                                         num_res_blocks=2, z_channels=3, codebook_size=8192), **kw})


def vq_f8(**kw) -> AutoencoderVQConfig:
    """LDM's vq-f8: f = 8, z = 4, 16384 codes, widths 128-256-256-512."""
    return AutoencoderVQConfig(**{**dict(in_channels=3, image_size=64, model_channels=128, channel_mult=(1, 2, 2, 4),
                                         num_res_blocks=2, z_channels=4, codebook_size=16384), **kw})


def tiny(**kw) -> AutoencoderVQConfig:
    """Tests: 8×8 grey digits, f = 2, z = 2, 16 codes."""
    return AutoencoderVQConfig(**{**dict(in_channels=1, image_size=8, model_channels=8, channel_mult=(1, 2),
                                         num_res_blocks=1, z_channels=2, norm_groups=4, codebook_size=16), **kw})


PRESETS = {"vq-f4": vq_f4, "vq-f8": vq_f8, "tiny": tiny}
