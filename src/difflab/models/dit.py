"""DiT: "Scalable Diffusion Models with Transformers" (Peebles & Xie 2023).

A Vision Transformer over patches of the (latent or pixel) image replaces the U-Net (§3.2)::

    h = PatchEmbed(x) + P                 (N, T, D)   p×p patches, T = (image_size/p)², P fixed sin-cos
    c = TimestepMLP(t) + E_label[y]       (N, D)      the conditioning vector
    per block:  h = h + α₁ ⊙ Attention(LN(h)·(1 + γ₁) + β₁)
                h = h + CrossAttention(LN(h), context)       (only with context_dim > 0)
                h = h + α₂ ⊙ MLP(LN(h)·(1 + γ₂) + β₂)
                (β₁, γ₁, α₁, β₂, γ₂, α₂) = Linear(SiLU(c))    adaLN-Zero, zero-initialized
    out = Unpatchify(Linear(LN(h)·(1 + γ) + β))  (β, γ) = Linear(SiLU(c)), both layers zero-initialized

adaLN-Zero (§3.2, "adaLN-Zero block"): the layer norms have no affine parameters of their own;
shift β, scale γ and a residual gate α per sub-block are regressed from c. The regression starts
at zero, so every gate is zero and every block is the identity at initialization, and the final
layer makes the whole network output exactly zero (the U-Net's zero-initialized head does the same).

Text conditioning puts a cross-attention sub-block between self-attention and the MLP, where
PixArt-α's DiT-with-cross-attention block has it (Chen et al. 2024, §2.3), from the patch tokens
to the context tokens (e.g. MiniLM's caption states), padded tokens masked. It is not modulated
by c; unlike PixArt-α it normalizes its input first (an affine LayerNorm, as LDM's transformer
blocks do), and its output projection starts at zero, so the block is still the identity at
initialization.

The weights and their layout follow DiT's reference code (``models.py``): the attention is one
qkv projection with heads contiguous within q, k and v (timm's), the MLP is 4× wide with tanh-GELU,
the layer norms use ε = 1e-6, and unpatchify orders a token's p·p·C outputs as (p, p, C). The model
function is the U-Net's, ``DiT(config)(x, t, class_labels=None, context=None, ...)`` with ``t``
the schedule's float time (N,), so trainer, samplers and guidance take either network.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn import SelfAttention, TimestepMLP, modulate, sincos_position_embedding_2d
from ..nn.transformer import CrossAttention
from ..text.small import SmallTextEncoder
from .conditioning import (
    add_aug_level_embedding,
    add_guidance_embedding,
    add_label_embedding,
    concat_features,
    context_tokens,
    validate_conditioning,
)


@dataclass
class DiTConfig:
    """Hyper-parameters of :class:`DiT`; plain values only, so ``asdict`` → JSON → ``DiTConfig(**d)``.

    Attributes:
        in_channels: image channels (4 for Stable Diffusion's latents, 1 or 3 for pixels).
        out_channels: predicted channels before the learned-sigma doubling; ``None`` = in_channels.
        image_size: height = width of the input; must be divisible by ``patch_size``.
        patch_size: side p of the square patches; T = (image_size / p)² tokens (DiT: 2, 4, 8).
        hidden_size: token width D.
        depth: number of DiT blocks.
        num_heads: attention heads; must divide ``hidden_size``.
        mlp_ratio: the MLP's hidden width is ``mlp_ratio · hidden_size``.
        frequency_dim: width of the sinusoidal time features before the time MLP (DiT: 256).
        learned_sigma: output ``2 · out_channels`` channels; the second half is the variance.
        num_classes: class-conditional with this many classes (0 = unconditional); label index
            ``num_classes`` is the "null" class for classifier-free guidance.
        context_dim: width of a conditioning token sequence (e.g. 384 for MiniLM text states);
            > 0 adds a cross-attention sub-block to every block.
        text_encoder: a trainable text encoder inside the network (``{"name": "small", "vocab":
            [...], "dim": context_dim, ...}``, :mod:`difflab.text.small`): the model then takes
            token ids (``input_ids``, ``token_mask``) instead of ``context``, and trains it.
        concat_channels: channels of an image concatenated to the input before patching
            (``concat``: an inpainting model's mask and masked image, ...).
        aug_level: the network also takes ``aug_level`` (N,) in [0, 1], the noise level of its
            concatenated image (noise-conditioning augmentation).
        guidance_embed: the network also takes ``guidance_scale`` (N,), the classifier-free guidance
            weight w, as an input (a student distilled for guided sampling, ``difflab distill``).
        time_freq_shift: the time features' frequencies are 10000^(−i/(frequency_dim/2 − shift));
            0 is DiT's reference code, 1 diffusers' ``DiTTransformer2DModel`` (imported weights).
        mlp_norm_eps: ε of the layer norm before each MLP; 1e-6 is DiT's, diffusers'
            ``DiTTransformer2DModel`` uses its ``norm_eps`` (1e-5 by default) there.
    """

    in_channels: int = 4
    out_channels: int | None = None
    image_size: int = 32
    patch_size: int = 2
    hidden_size: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    frequency_dim: int = 256
    learned_sigma: bool = False
    num_classes: int = 0
    context_dim: int = 0
    text_encoder: dict | None = None
    concat_channels: int = 0
    aug_level: bool = False
    guidance_embed: bool = False
    time_freq_shift: float = 0.0
    mlp_norm_eps: float = 1e-6

    def __post_init__(self):
        if self.out_channels is None:
            self.out_channels = self.in_channels
        self.validate()

    @property
    def grid_size(self) -> int:
        """Patches along each side: image_size / patch_size."""
        return self.image_size // self.patch_size

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field and the fix for an inconsistent configuration."""
        positive = ("in_channels", "out_channels", "image_size", "patch_size", "hidden_size", "depth", "num_heads",
                    "frequency_dim")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"DiTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"DiTConfig.image_size={self.image_size} is not divisible by patch_size={self.patch_size}; "
                f"use a patch size dividing {self.image_size} (DiT uses 2, 4 or 8) or resize the data"
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"DiTConfig.num_heads={self.num_heads} does not divide hidden_size={self.hidden_size}; "
                f"choose num_heads among the divisors of {self.hidden_size} (DiT's heads are 64 wide)"
            )
        if self.hidden_size % 4:
            raise ValueError(f"DiTConfig.hidden_size={self.hidden_size} must be a multiple of 4 for the 2-D "
                             f"sine-cosine position embedding")
        if self.time_freq_shift and self.time_freq_shift >= self.frequency_dim // 2:
            raise ValueError(f"DiTConfig.time_freq_shift={self.time_freq_shift} must be below frequency_dim / 2 "
                             f"= {self.frequency_dim // 2} (0 for DiT, 1 for diffusers' DiT)")
        if self.mlp_ratio <= 0:
            raise ValueError(f"DiTConfig.mlp_ratio must be > 0, got {self.mlp_ratio}")
        validate_conditioning(self)  # num_classes, context_dim, text_encoder


def unpatchify(tokens: Tensor, patch_size: int, channels: int) -> Tensor:
    """(N, T, p·p·C) tokens in row-major patch order → (N, C, H, W) images, H = W = √T·p.

    A token's p·p·C values are ordered (row in patch, column in patch, channel), DiT's layout.
    """
    n, num_tokens, _ = tokens.shape
    g, p = int(round(num_tokens**0.5)), patch_size
    x = tokens.reshape(n, g, g, p, p, channels)  # (N, h, w, p, p, C)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(n, channels, g * p, g * p)  # (N, C, h·p, w·p)


def patchify(x: Tensor, patch_size: int) -> Tensor:
    """The inverse of :func:`unpatchify`: (N, C, H, W) → (N, T, p·p·C)."""
    n, c, h, w = x.shape
    p = patch_size
    x = x.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)  # (N, h, w, p, p, C)
    return x.reshape(n, (h // p) * (w // p), p * p * c)


class Mlp(nn.Module):
    """Linear → tanh-GELU → Linear (ViT's MLP; DiT uses ``GELU(approximate="tanh")``)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    """A transformer block with adaLN-Zero conditioning (and optional cross-attention); see the
    module docstring. Input and output (N, T, D); ``c`` is (N, D)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, context_dim: int = 0,
                 mlp_norm_eps: float = 1e-6):
        super().__init__()
        layer_norm = partial(nn.LayerNorm, dim, elementwise_affine=False, eps=1e-6)
        self.norm1, self.attn = layer_norm(), SelfAttention(dim, num_heads)
        self.norm_cross, self.cross = None, None
        if context_dim:
            # Pre-norm with its own affine parameters (LDM's); not modulated by c, as in PixArt-α.
            self.norm_cross = nn.LayerNorm(dim, eps=1e-6)
            self.cross = CrossAttention(dim, context_dim, num_heads)
        self.norm2, self.mlp = layer_norm(eps=mlp_norm_eps), Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: Tensor, c: Tensor, context: Tensor | None = None,
                context_mask: Tensor | None = None) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=1)  # 6 × (N, D)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))  # (N, T, D)
        if self.cross is not None:
            x = x + self.cross(self.norm_cross(x), context, context_mask)
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """adaLN (shift and scale from c), then a linear map of each token to its p·p·C outputs."""

    def __init__(self, dim: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)  # 2 × (N, D)
        return self.linear(modulate(self.norm(x), shift, scale))  # (N, T, p·p·C_out)


class DiT(nn.Module):
    """DiT as a model function ``(x_t, t, class_labels=None, context=None, ...) -> prediction``."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = cfg = config
        d, p = cfg.hidden_size, cfg.patch_size
        self.out_channels = cfg.out_channels * (2 if cfg.learned_sigma else 1)

        self.patch_embed = nn.Conv2d(cfg.in_channels, d, kernel_size=p, stride=p)  # a linear map of each patch
        # the patch embedding's weights for a concatenated image, apart and zero (models/conditioning.py)
        self.concat_input = nn.Conv2d(cfg.concat_channels, d, kernel_size=p, stride=p, bias=False) \
            if cfg.concat_channels else None
        # Fixed, not learned (§3.2); recomputed at construction, so not saved in checkpoints.
        self.register_buffer("pos_embed", sincos_position_embedding_2d(d, cfg.grid_size)[None], persistent=False)
        self.time_embed = TimestepMLP(cfg.frequency_dim, d, freq_shift=cfg.time_freq_shift)
        # Index num_classes is the "null" label used when the label is dropped (classifier-free guidance).
        self.label_embed = nn.Embedding(cfg.num_classes + 1, d) if cfg.num_classes else None
        self.aug_embed = TimestepMLP(cfg.frequency_dim, d) if cfg.aug_level else None
        self.blocks = nn.ModuleList(DiTBlock(d, cfg.num_heads, cfg.mlp_ratio, cfg.context_dim, cfg.mlp_norm_eps)
                                    for _ in range(cfg.depth))
        self.final = FinalLayer(d, p, self.out_channels)
        self._init_weights()
        # After the DiT initialization: the encoder keeps its own (GPT-2 style) one.
        self.text_encoder = SmallTextEncoder.from_config(cfg.text_encoder) if cfg.text_encoder else None
        # last, so the other weights are drawn as without it; initialised as aug_embed: zero output
        self.guidance_embed = TimestepMLP(cfg.frequency_dim, d) if cfg.guidance_embed else None
        if self.guidance_embed is not None:
            with torch.no_grad():
                nn.init.normal_(self.guidance_embed.mlp[0].weight, std=0.02)
                for layer in (self.guidance_embed.mlp[0], self.guidance_embed.mlp[2]):
                    nn.init.zeros_(layer.bias)
                nn.init.zeros_(self.guidance_embed.mlp[2].weight)

    @torch.no_grad()
    def _init_weights(self) -> None:
        """DiT's ``initialize_weights``: Xavier-uniform linears with zero biases; the patch embedding
        like a linear map of the flattened patch; N(0, 0.02²) label and time-MLP weights; zero
        adaLN regressions (adaLN-Zero), cross-attention outputs and final layer."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        if self.label_embed is not None:
            nn.init.normal_(self.label_embed.weight, std=0.02)
        nn.init.normal_(self.time_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.time_embed.mlp[2].weight, std=0.02)
        zero = [block.adaLN_modulation[-1] for block in self.blocks]
        zero += [block.cross.proj for block in self.blocks if block.cross is not None]
        zero += [self.final.adaLN_modulation[-1], self.final.linear]
        for layer in zero:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        if self.concat_input is not None:
            nn.init.zeros_(self.concat_input.weight)
        if self.aug_embed is not None:  # starts as the network without it
            nn.init.normal_(self.aug_embed.mlp[0].weight, std=0.02)
            nn.init.zeros_(self.aug_embed.mlp[2].weight)

    def forward(self, x: Tensor, t: Tensor, class_labels: Tensor | None = None, context: Tensor | None = None,
                context_mask: Tensor | None = None, input_ids: Tensor | None = None,
                token_mask: Tensor | None = None, concat: Tensor | None = None,
                aug_level: Tensor | None = None, control: list[Tensor] | None = None,
                guidance_scale: Tensor | None = None) -> Tensor:
        """Predict ε, x₀ or v (and the variance output with ``learned_sigma``) for noisy images or
        latents x (N, in_channels, image_size, image_size) at the schedule's float times t (N,).

        The conditioning arguments are the U-Net's (see :mod:`difflab.models.conditioning`):
        ``class_labels`` (N,) in [0, num_classes], the last being the null label and ``None``
        meaning it; ``context`` (N, L, context_dim) with its bool ``context_mask`` (True = real
        token), exactly when ``context_dim > 0``; or ``input_ids`` and ``token_mask`` (N, L) for
        the built-in trainable ``text_encoder``; ``concat`` (N, concat_channels, H, W), an image
        concatenated to x, exactly when ``concat_channels > 0``, with ``aug_level`` (N,) its noise
        level in [0, 1] when the config's ``aug_level`` is set. ``control``: a ControlNet's token
        residuals (N, T, D), the k-th added to the output of block k (PixArt-δ's ControlNet-
        Transformer, :class:`~difflab.models.controlnet.DiTControlNet`). ``guidance_scale`` (N,): the
        classifier-free guidance weight w, exactly when the config's ``guidance_embed`` is set.

        Returns (N, out_channels · (2 if learned_sigma else 1), image_size, image_size) in x's dtype.
        """
        cfg = self.config
        if x.shape[1:] != (cfg.in_channels, cfg.image_size, cfg.image_size):
            raise ValueError(f"this DiT takes (N, {cfg.in_channels}, {cfg.image_size}, {cfg.image_size}) inputs, "
                             f"got {tuple(x.shape)}; the position embedding fixes the image size")
        c = self.time_embed(t)  # (N, D)
        c = add_label_embedding(self, c, class_labels)  # + the class's (or null label's) embedding
        c = add_aug_level_embedding(self, c, aug_level)  # + the conditioning image's noise level's
        c = add_guidance_embedding(self, c, guidance_scale)  # + a guidance-distilled network's w's
        context, context_mask = context_tokens(self, context, context_mask, input_ids, token_mask)
        h = self.patch_embed(x)  # (N, D, H/p, W/p)
        concat_h = concat_features(self, x, concat)
        h = (h if concat_h is None else h + concat_h).flatten(2).transpose(1, 2) + self.pos_embed  # (N, T, D)
        if control is not None and len(control) > len(self.blocks):
            raise ValueError(f"{len(control)} control residuals for a DiT of depth {len(self.blocks)}: the "
                             "ControlNet was made for another network")
        for k, block in enumerate(self.blocks):
            h = block(h, c, context, context_mask)  # (N, T, D)
            if control is not None and k < len(control):
                h = h + control[k].to(h.dtype)
        h = self.final(h, c)  # (N, T, p·p·C_out)
        return unpatchify(h, cfg.patch_size, self.out_channels).to(x.dtype)  # (N, C_out, H, W)

    def num_parameters(self) -> int:
        """The number of parameters (the fixed position embedding is a buffer, not counted)."""
        return sum(p.numel() for p in self.parameters())

    def summary(self) -> str:
        """One line describing the network, for the trainer's log."""
        cfg = self.config
        extras = [
            name
            for name, on in (
                ("learned sigma", cfg.learned_sigma),
                (f"{cfg.num_classes} classes", cfg.num_classes),
                (f"cross-attention to {cfg.context_dim}-d context", cfg.context_dim),
                ("trainable text encoder", cfg.text_encoder),
            )
            if on
        ]
        return (
            f"DiT {self.num_parameters() / 1e6:.2f}M params: {cfg.image_size}x{cfg.image_size}x{cfg.in_channels}, "
            f"patch {cfg.patch_size} ({cfg.grid_size ** 2} tokens), depth {cfg.depth}, width {cfg.hidden_size}, "
            f"{cfg.num_heads} heads" + "".join(f", {e}" for e in extras)
        )


# Presets. The paper's models (Table 1): depth, width, heads; at 256×256 images, i.e. the
# 32×32×4 latents of Stable Diffusion's autoencoder, with learned sigma and ImageNet's 1000
# classes. Keyword arguments override any field, e.g. ``PRESETS["DiT-S/2"](in_channels=1)``.
SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}


def paper(size: str, patch_size: int):
    """The preset ``DiT-{size}/{patch_size}`` of the paper."""
    depth, hidden, heads = SIZES[size]

    def preset(**kw) -> DiTConfig:
        return DiTConfig(**{**dict(in_channels=4, image_size=32, patch_size=patch_size, hidden_size=hidden, depth=depth,
                                   num_heads=heads, learned_sigma=True, num_classes=1000), **kw})

    preset.__doc__ = (f"DiT-{size}/{patch_size} (Peebles & Xie 2023, Table 1): depth {depth}, width {hidden}, "
                      f"{heads} heads.")
    return preset


def fashion_mnist_32(**kw) -> DiTConfig:
    """DiT-S/2's transformer on Fashion-MNIST pixels padded to 32×32 (256 tokens; for one GPU)."""
    return DiTConfig(**{**dict(in_channels=1, image_size=32, patch_size=2, hidden_size=384, depth=12,
                               num_heads=6), **kw})


def fashion_mnist_16_cpu(**kw) -> DiTConfig:
    """A small DiT for Fashion-MNIST at 16×16 on a CPU: 64 tokens, depth 6, width 192."""
    return DiTConfig(**{**dict(in_channels=1, image_size=16, patch_size=2, hidden_size=192, depth=6,
                               num_heads=3), **kw})


PRESETS = {
    **{f"DiT-{size}/{p}": paper(size, p) for size in SIZES for p in (2, 4, 8)},
    "fashion-mnist-32": fashion_mnist_32,
    "fashion-mnist-16-cpu": fashion_mnist_16_cpu,
}
