"""diffusers' ``AutoencoderKL`` (LDM's and Stable Diffusion's first stage) as a difflab
:class:`~.autoencoder.AutoencoderKL`: the config translated, the weights renamed.

Both are LDM's ``Encoder`` / ``Decoder`` (Rombach et al. 2022, appendix G), so the conversion
only renames and, for the attention, concatenates W_q, W_k, W_v into difflab's fused ``qkv``.
Two settings make the networks identical: ``downsample_padding: ldm`` (diffusers pads the strided
convolution one pixel right and bottom) and ``norm_eps: 1e-6``. tests/test_diffusers_weights.py
checks encoder moments and decoder output against diffusers on the same weights.

Only safetensors files are read (no pickle). A diffusers folder holds ``config.json`` and
``diffusion_pytorch_model.safetensors``; its ``scaling_factor`` is the latent scale (0.18215 for
Stable Diffusion's VAE).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from .autoencoder import AutoencoderConfig, AutoencoderKL

WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"


def config_from_diffusers(config: Mapping, image_size: int | None = None) -> AutoencoderConfig:
    """The :class:`AutoencoderConfig` of a diffusers ``AutoencoderKL`` config (its config.json);
    ``image_size`` replaces its ``sample_size`` (the weights do not depend on it).

    Supported: ``DownEncoderBlock2D`` / ``UpDecoderBlock2D`` blocks (no attention outside the
    middle block), SiLU, the middle attention and both 1×1 quant convolutions, block widths that
    are multiples of the first; anything else is a ``ValueError`` naming the key.
    """
    widths = list(config["block_out_channels"])
    checks = {
        "down_block_types": all(t == "DownEncoderBlock2D" for t in config.get("down_block_types", ())),
        "up_block_types": all(t == "UpDecoderBlock2D" for t in config.get("up_block_types", ())),
        "act_fn": config.get("act_fn", "silu") == "silu",
        "mid_block_add_attention": config.get("mid_block_add_attention", True),
        "use_quant_conv": config.get("use_quant_conv", True),
        "use_post_quant_conv": config.get("use_post_quant_conv", True),
        "out_channels": config.get("out_channels", 3) == config.get("in_channels", 3),
        "block_out_channels": all(w % widths[0] == 0 for w in widths),
    }
    unsupported = [key for key, ok in checks.items() if not ok]
    if unsupported:
        raise ValueError(f"this diffusers AutoencoderKL has settings difflab's autoencoder does not implement: "
                         f"{', '.join(f'{k}={config.get(k)!r}' for k in unsupported)}")
    return AutoencoderConfig(
        in_channels=config.get("in_channels", 3), image_size=image_size or config.get("sample_size", 32),
        model_channels=widths[0],
        channel_mult=tuple(w // widths[0] for w in widths), num_res_blocks=config.get("layers_per_block", 1),
        z_channels=config.get("latent_channels", 4), num_heads=1, norm_groups=config.get("norm_num_groups", 32),
        downsample_padding="ldm", norm_eps=1e-6,
    )


def _resnet(ours: str, theirs: str) -> dict[str, str]:
    names = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "skip": "conv_shortcut"}
    return {f"{ours}.{a}.{p}": f"{theirs}.{b}.{p}" for a, b in names.items() for p in ("weight", "bias")}


def _middle(ours: str, theirs: str) -> dict[str, str]:
    names = {**_resnet(f"{ours}.0", f"{theirs}.resnets.0"), **_resnet(f"{ours}.2", f"{theirs}.resnets.1")}
    attention = f"{theirs}.attentions.0"
    for p in ("weight", "bias"):
        names[f"{ours}.1.norm.{p}"] = f"{attention}.group_norm.{p}"
        names[f"{ours}.1.attn.proj.{p}"] = f"{attention}.to_out.0.{p}"
    return names


def _conv(ours: str, theirs: str) -> dict[str, str]:
    return {f"{ours}.{p}": f"{theirs}.{p}" for p in ("weight", "bias")}


def key_map(cfg: AutoencoderConfig) -> dict[str, str]:
    """difflab parameter name → diffusers parameter name (the fused attention ``qkv`` excepted)."""
    levels, blocks = len(cfg.channel_mult), cfg.num_res_blocks
    names = {**_conv("encoder.stem", "encoder.conv_in"), **_conv("encoder.head.0", "encoder.conv_norm_out"),
             **_conv("encoder.head.2", "encoder.conv_out"), **_conv("quant_conv", "quant_conv"),
             **_conv("post_quant_conv", "post_quant_conv"), **_conv("decoder.stem", "decoder.conv_in"),
             **_conv("decoder.head.0", "decoder.conv_norm_out"), **_conv("decoder.head.2", "decoder.conv_out"),
             **_middle("encoder.middle", "encoder.mid_block"), **_middle("decoder.middle", "decoder.mid_block")}
    index = 0  # encoder.down: per level its residual blocks, then a downsampling except at the last level
    for level in range(levels):
        for j in range(blocks):
            names.update(_resnet(f"encoder.down.{index}", f"encoder.down_blocks.{level}.resnets.{j}"))
            index += 1
        if level != levels - 1:
            names.update(_conv(f"encoder.down.{index}.conv", f"encoder.down_blocks.{level}.downsamplers.0.conv"))
            index += 1
    index = 0  # decoder.up: coarsest level first, blocks + 1 residual blocks, then an upsampling
    for level in range(levels):
        for j in range(blocks + 1):
            names.update(_resnet(f"decoder.up.{index}", f"decoder.up_blocks.{level}.resnets.{j}"))
            index += 1
        if level != levels - 1:
            names.update(_conv(f"decoder.up.{index}.conv", f"decoder.up_blocks.{level}.upsamplers.0.conv"))
            index += 1
    return names


# Attention names of diffusers files saved before 0.14 (Stable Diffusion's original VAE export).
_OLD_ATTENTION_NAMES = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}


def state_dict_from_diffusers(cfg: AutoencoderConfig, theirs: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """difflab's state dict for ``cfg`` from a diffusers ``AutoencoderKL`` state dict."""
    renamed = {}
    for key, value in theirs.items():
        for old, new in _OLD_ATTENTION_NAMES.items():
            key = key.replace(old, new)
        renamed[key] = value
    ours = {mine: renamed[their_key] for mine, their_key in key_map(cfg).items() if their_key in renamed}
    for side in ("encoder", "decoder"):
        attention = f"{side}.mid_block.attentions.0"
        for p in ("weight", "bias"):
            ours[f"{side}.middle.1.attn.qkv.{p}"] = torch.cat([renamed[f"{attention}.to_{n}.{p}"] for n in "qkv"])
    return ours


def autoencoder_kl_from_diffusers(config: Mapping, state_dict: Mapping[str, Tensor],
                                  image_size: int | None = None) -> AutoencoderKL:
    """A difflab ``AutoencoderKL`` with the weights of a diffusers one (config dict + state dict)."""
    cfg = config_from_diffusers(config, image_size)
    model = AutoencoderKL(cfg)
    try:
        model.load_state_dict(state_dict_from_diffusers(cfg, state_dict))
    except (KeyError, RuntimeError) as err:
        raise ValueError(f"the weights do not fit the diffusers config they came with: {err}") from None
    return model


def load_diffusers_autoencoder_kl(folder: str | Path, image_size: int | None = None) -> tuple[AutoencoderKL, float]:
    """The autoencoder saved in a local diffusers folder (``AutoencoderKL.save_pretrained``; the
    ``vae/`` folder of a Stable Diffusion pipeline) and its latent scale ``scaling_factor``."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config_file, weights_file = folder / "config.json", folder / WEIGHTS_FILE
    for needed in (config_file, weights_file):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed} does not exist: point at a diffusers AutoencoderKL folder holding "
                                    f"config.json and {WEIGHTS_FILE} (a .bin file is not read: it is a pickle)")
    config = json.loads(config_file.read_text())
    if config.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise ValueError(f"{folder} holds a diffusers {config['_class_name']}, not an AutoencoderKL")
    model = autoencoder_kl_from_diffusers(config, load_file(weights_file), image_size)
    return model, float(config.get("scaling_factor", 0.18215))


def autoencoder_kl_to_diffusers(model: AutoencoderKL, scale: float) -> tuple[dict, dict[str, Tensor]]:
    """(config.json, weights) of the diffusers ``AutoencoderKL`` equal to ``model`` (the inverse of
    :func:`autoencoder_kl_from_diffusers`), with ``scale`` as its ``scaling_factor``.

    Raises:
        ValueError: naming each setting diffusers' AutoencoderKL has no equivalent of (it pads
            downsampling LDM's way, uses GroupNorm ε = 10⁻⁶ and attends in the middle only).
    """
    cfg = model.config
    features = {"downsample_padding": cfg.downsample_padding != "ldm", "norm_eps": cfg.norm_eps != 1e-6,
                "attention_resolutions": bool(cfg.attention_resolutions), "num_heads": cfg.num_heads != 1}
    missing = [f"{name}={getattr(cfg, name)!r}" for name, on in features.items() if on]
    if missing:
        raise ValueError(f"diffusers' AutoencoderKL has no equivalent of difflab's {', '.join(missing)}; this "
                         f"autoencoder cannot be exported to diffusers")
    widths = [cfg.model_channels * m for m in cfg.channel_mult]
    levels = len(widths)
    config = {"_class_name": "AutoencoderKL", "_diffusers_version": "0.42.1", "in_channels": cfg.in_channels,
              "out_channels": cfg.in_channels, "down_block_types": ["DownEncoderBlock2D"] * levels,
              "up_block_types": ["UpDecoderBlock2D"] * levels, "block_out_channels": widths,
              "layers_per_block": cfg.num_res_blocks, "act_fn": "silu", "latent_channels": cfg.z_channels,
              "norm_num_groups": cfg.norm_groups, "sample_size": cfg.image_size, "scaling_factor": scale}
    ours = model.state_dict()
    state = {theirs: ours[mine] for mine, theirs in key_map(cfg).items() if mine in ours}
    for side in ("encoder", "decoder"):
        attention = f"{side}.mid_block.attentions.0"
        for p in ("weight", "bias"):
            for name, part in zip("qkv", ours[f"{side}.middle.1.attn.qkv.{p}"].chunk(3)):
                state[f"{attention}.to_{name}.{p}"] = part
    return config, {k: v.detach().contiguous().clone() for k, v in state.items()}
