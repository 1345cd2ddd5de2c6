"""Original-layout Stable Diffusion 1.x / 2.x single files (CompVis LDM, Rombach et al. 2022) as
diffusers-layout state dicts and configs.

A single file is one state dict of LDM's ``LatentDiffusion``: the U-Net under
``model.diffusion_model.``, the autoencoder under ``first_stage_model.``, the text encoder under
``cond_stage_model.``, plus the training schedule's buffers (``betas``, ``alphas_cumprod``, …) and,
in unpruned files, the EMA copy (``model_ema.*``). This module reads the file (safetensors only:
no pickle is ever opened), splits it, and renames each part to the layout of diffusers'
``UNet2DConditionModel`` / ``AutoencoderKL`` and transformers' ``CLIPTextModel``; difflab's
importers (``models/diffusers_unet.py``, ``models/diffusers_weights.py``, ``text/clip.py``) take it
from there. Only names and layouts change: no tensor is rescaled.

**U-Net** (``openaimodel.UNetModel`` → ``UNet2DConditionModel``). LDM numbers its blocks flat; the
levels are read from the keys: each ``input_blocks.{i}.0.op`` (a strided convolution) closes an
encoder level, each ``output_blocks.{i}.{1|2}.conv`` (an upsampling convolution) closes a decoder
level, and the ``j``-th residual block of a level is ``resnets.{j}``.

====================================  ==============================================
LDM                                   diffusers
====================================  ==============================================
``input_blocks.0.0``                  ``conv_in``
``time_embed.{0,2}``                  ``time_embedding.linear_{1,2}``
``label_emb.weight``                  ``class_embedding.weight`` (``num_class_embeds``)
``label_emb.0.{0,2}``                 ``class_embedding.linear_{1,2}`` (``class_embed_type: projection``)
``input_blocks.{i}.0`` (residual)     ``down_blocks.{b}.resnets.{j}``
``input_blocks.{i}.1``                ``down_blocks.{b}.attentions.{j}``
``input_blocks.{i}.0.op``             ``down_blocks.{b}.downsamplers.0.conv``
``middle_block.{0,1,2}``              ``mid_block.resnets.0``, ``.attentions.0``, ``.resnets.1``
``output_blocks.{i}.0``               ``up_blocks.{b}.resnets.{j}``
``output_blocks.{i}.1`` (attention)   ``up_blocks.{b}.attentions.{j}``
``output_blocks.{i}.{1|2}.conv``      ``up_blocks.{b}.upsamplers.0.conv``
``out.{0,2}``                         ``conv_norm_out``, ``conv_out``
====================================  ==============================================

Inside a residual block ``in_layers.0`` → ``norm1``, ``in_layers.2`` → ``conv1``, ``emb_layers.1`` →
``time_emb_proj``, ``out_layers.0`` → ``norm2``, ``out_layers.3`` → ``conv2``, ``skip_connection`` →
``conv_shortcut``; a spatial transformer keeps its inner names (``norm``, ``proj_in``,
``transformer_blocks.{d}.{attn1,attn2,ff,norm1..3}``, ``proj_out``) on both sides.

The config (:func:`unet_config_from_ldm`) is read from shapes: channels from ``conv_in`` /
``conv_out``, a level's width from its first residual block, ``cross_attention_dim`` from
``attn2.to_k``, ``use_linear_projection`` from a 2-D ``proj_in`` (SD 2.x), the transformer depth
from ``transformer_blocks.{d}``. Three settings are not in the weights: the number of heads (SD's
conventions: a 768-wide context, SD 1.x, has 8 heads at every level; a 1024-wide one, SD 2.x,
heads of 64 channels, i.e. width // 64 per level; else pass ``heads`` or ``head_width``), the
group-norm groups (LDM's 32) and the latent side (``sample_size``: 64 for 512-pixel models).

**Autoencoder** (``Encoder`` / ``Decoder`` → ``AutoencoderKL``); ``{s}`` is ``encoder`` or ``decoder``,
``L`` the number of levels. LDM stores the decoder's levels finest first, diffusers coarsest first.

====================================  ==============================================
LDM                                   diffusers
====================================  ==============================================
``encoder.down.{i}.block.{j}``        ``encoder.down_blocks.{i}.resnets.{j}``
``encoder.down.{i}.downsample.conv``  ``encoder.down_blocks.{i}.downsamplers.0.conv``
``decoder.up.{i}.block.{j}``          ``decoder.up_blocks.{L-1-i}.resnets.{j}``
``decoder.up.{i}.upsample.conv``      ``decoder.up_blocks.{L-1-i}.upsamplers.0.conv``
``{s}.mid.block_{1,2}``               ``{s}.mid_block.resnets.{0,1}``
``{s}.mid.attn_1.{norm,q,k,v}``       ``{s}.mid_block.attentions.0.{group_norm,to_q,to_k,to_v}``
``{s}.mid.attn_1.proj_out``           ``{s}.mid_block.attentions.0.to_out.0``
``{s}.norm_out``                      ``{s}.conv_norm_out``
``{s}.conv_in``, ``{s}.conv_out``     unchanged; so are ``quant_conv``, ``post_quant_conv``
====================================  ==============================================

Inside a residual block ``nin_shortcut`` → ``conv_shortcut``. The attention's q, k, v and
projection are 1×1 convolutions in LDM and linear layers in diffusers: their weights are
flattened to 2-D. ``loss.*`` keys (a training loss's LPIPS and discriminator) are dropped.

**Text encoder.** SD 1.x stores transformers' ``CLIPTextModel`` itself under
``cond_stage_model.transformer.`` (with ``text_model.`` or, in older files, without it); only its
``position_ids`` buffer (not a weight) is dropped. The names given are those of transformers'
files, ``text_model.*`` (transformers 5 drops the prefix in memory and reads both). SD 2.x stores
OpenCLIP's text tower under ``cond_stage_model.model.``; ``i`` is a layer, under
``text_model.encoder.layers.{i}``:

====================================  ==============================================
OpenCLIP                              transformers ``CLIPTextModel``
====================================  ==============================================
``token_embedding.weight``            ``text_model.embeddings.token_embedding.weight``
``positional_embedding``              ``text_model.embeddings.position_embedding.weight``
``transformer.resblocks.{i}.ln_1``    ``….layer_norm1``
``….attn.in_proj_{weight,bias}``      ``….self_attn.{q,k,v}_proj`` (split in three along rows)
``….attn.out_proj``                   ``….self_attn.out_proj``
``….ln_2``                            ``….layer_norm2``
``….mlp.c_fc``, ``….mlp.c_proj``      ``….mlp.fc1``, ``….mlp.fc2``
``ln_final``                          ``text_model.final_layer_norm``
``text_projection``, ``logit_scale``  dropped (CLIP's joint embedding, unused by SD)
====================================  ==============================================

SD 2.x conditions on the penultimate layer (then ``ln_final``): keep all layers and encode with
clip skip 2, or pass ``penultimate=True`` to drop the last layer as diffusers' SD 2.x
``text_encoder`` does (23 of 24 layers), so that ``last_hidden_state`` is the conditioning.

**Schedule.** :func:`ldm_scheduler_config` fits the ``betas`` buffer (or one derived from
``alphas_cumprod``) with diffusers' ``scaled_linear`` (LDM's "linear": SD's 0.00085 → 0.012) or
``linear`` schedule, else returns ``trained_betas``; what the network predicts is not in the file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
UNET_PREFIX, VAE_PREFIX, TEXT_PREFIX, EMA_PREFIX = ("model.diffusion_model.", "first_stage_model.",
                                                    "cond_stage_model.", "model_ema.")
# LatentDiffusion's buffers: the training schedule, quantities derived from it, the latent scale.
BUFFERS = frozenset({
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "lvlb_weights", "logvar", "scale_factor", "cond_ids",
})
SD_BETAS = (0.00085, 0.012)  # Stable Diffusion's scaled_linear schedule over 1000 steps
PREDICTIONS = {"epsilon": "epsilon", "v_prediction": "v_prediction", "sample": "sample", "v": "v_prediction",
               "x0": "sample"}  # diffusers' names, and difflab's
ACTIVATIONS = {"sd1": "quick_gelu", "sd2": "gelu"}  # OpenAI CLIP ViT-L/14; OpenCLIP ViT-H/14


def _listing(keys: list[str], most: int = 4) -> str:
    return ", ".join(keys[:most]) + (" …" if len(keys) > most else "")


def _strip(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The state without ``prefix`` (so a part can be passed with or without its file prefix)."""
    return {key.removeprefix(prefix): value for key, value in state.items()}


# ------------------------------------------------------------------------------------------------
# The file
# ------------------------------------------------------------------------------------------------


def read_single_file(path: str | Path) -> dict[str, Tensor]:
    """Every tensor of a ``.safetensors`` single file.

    Raises:
        ValueError: a pickle (``.ckpt``, ``.pt``, ``.pth``, ``.bin``), which difflab never opens,
            or a file that is not safetensors.
        FileNotFoundError: the file does not exist.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ValueError(f"{path} is a pickle, which difflab never loads (unpickling can run code); convert it where "
                         f"you trust it: safetensors.torch.save_file(torch.load(p)['state_dict'], 'model.safetensors')")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return load_file(str(path))
    except SafetensorError as err:
        raise ValueError(f"{path} is not a safetensors file ({err})") from None


@dataclass
class SingleFile:
    """A single file's parts, each without its prefix.

    Attributes:
        unet: ``model.diffusion_model.*``.
        vae: ``first_stage_model.*``.
        text: ``cond_stage_model.*``.
        other: the schedule buffers (``betas``, ``alphas_cumprod``, …) and ``model_ema.*``, full names.
    """

    unet: dict[str, Tensor] = field(default_factory=dict)
    vae: dict[str, Tensor] = field(default_factory=dict)
    text: dict[str, Tensor] = field(default_factory=dict)
    other: dict[str, Tensor] = field(default_factory=dict)


_PARTS = {UNET_PREFIX: "unet", VAE_PREFIX: "vae", TEXT_PREFIX: "text"}


def split_components(state: Mapping[str, Tensor]) -> SingleFile:
    """Split a single file's state dict into its U-Net, autoencoder, text encoder and the rest.

    Raises:
        ValueError: naming the first keys that belong to none of them.
    """
    parts, unplaced = SingleFile(), []
    for key, value in state.items():
        prefix = next((p for p in _PARTS if key.startswith(p)), None)
        if prefix is not None:
            getattr(parts, _PARTS[prefix])[key.removeprefix(prefix)] = value
        elif key in BUFFERS or key.startswith(EMA_PREFIX):
            parts.other[key] = value
        else:
            unplaced.append(key)
    if unplaced:
        raise ValueError(f"this file has keys difflab cannot place: {_listing(unplaced)}; it is not a Stable Diffusion "
                         f"1.x/2.x / LDM checkpoint")
    return parts


# ------------------------------------------------------------------------------------------------
# U-Net
# ------------------------------------------------------------------------------------------------

_UNET_TOP = {"input_blocks.0.0": "conv_in", "time_embed.0": "time_embedding.linear_1",
             "time_embed.2": "time_embedding.linear_2", "out.0": "conv_norm_out", "out.2": "conv_out",
             "label_emb": "class_embedding", "label_emb.0.0": "class_embedding.linear_1",
             "label_emb.0.2": "class_embedding.linear_2"}
# Inner names per kind of block; None keeps them (a spatial transformer is named alike on both sides).
_INNER = {"resnet": {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                     "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"},
          "downsampler": {"op": "conv"}, "upsampler": {"conv": "conv"}, "attention": None}


def _indexed(names: Iterable[str], prefix: str) -> dict[int, list[str]]:
    """``{i: [rest, …]}`` of the names ``{prefix}{i}.{rest}``, in order of ``i``."""
    pattern, groups = re.compile(rf"{re.escape(prefix)}(\d+)\.(.+)"), {}
    for name in names:
        match = pattern.fullmatch(name)
        if match:
            groups.setdefault(int(match[1]), []).append(match[2])
    return dict(sorted(groups.items()))


def _only(rests: list[str], module: str) -> bool:
    """Whether a block holds nothing but ``module`` (a bare convolution: a down/upsampler)."""
    return bool(rests) and all(r.startswith(f"{module}.") for r in rests)


def _encoder_blocks(groups: dict[int, list[str]]) -> dict[str, tuple[str, str]]:
    if list(groups) != list(range(len(groups))):
        gap = min(set(range(max(groups) + 1)) - set(groups))
        raise ValueError(f"input_blocks.{gap} has no weights (a convolution-free downsampler?); diffusers' "
                         f"UNet2DConditionModel has none, so difflab cannot map this U-Net")
    blocks, level, j = {}, 0, 0
    for i, rests in list(groups.items())[1:]:  # input_blocks.0 is conv_in
        subs = _indexed(rests, "")
        if _only(subs.get(0, []), "op"):
            blocks[f"input_blocks.{i}.0"] = (f"down_blocks.{level}.downsamplers.0", "downsampler")
            level, j = level + 1, 0
            continue
        blocks[f"input_blocks.{i}.0"] = (f"down_blocks.{level}.resnets.{j}", "resnet")
        if 1 in subs:
            blocks[f"input_blocks.{i}.1"] = (f"down_blocks.{level}.attentions.{j}", "attention")
        j += 1
    return blocks


def _decoder_blocks(groups: dict[int, list[str]]) -> dict[str, tuple[str, str]]:
    blocks, level, j = {}, 0, 0
    for i, rests in groups.items():
        subs = _indexed(rests, "")
        blocks[f"output_blocks.{i}.0"] = (f"up_blocks.{level}.resnets.{j}", "resnet")
        upsamples = False
        for s in [s for s in subs if s != 0]:
            if _only(subs[s], "conv"):
                blocks[f"output_blocks.{i}.{s}"] = (f"up_blocks.{level}.upsamplers.0", "upsampler")
                upsamples = True
            else:
                blocks[f"output_blocks.{i}.{s}"] = (f"up_blocks.{level}.attentions.{j}", "attention")
        level, j = (level + 1, 0) if upsamples else (level, j + 1)
    return blocks


def _middle_blocks(groups: dict[int, list[str]]) -> dict[str, tuple[str, str]]:
    blocks, counts = {}, {"resnet": 0, "attention": 0}
    for i, rests in groups.items():
        kind = "resnet" if any(r.startswith("in_layers.") for r in rests) else "attention"
        blocks[f"middle_block.{i}"] = (f"mid_block.{kind}s.{counts[kind]}", kind)
        counts[kind] += 1
    return blocks


def _unet_blocks(names: list[str]) -> dict[str, tuple[str, str]]:
    """LDM block → (diffusers module, kind), the levels read from the keys (module docstring)."""
    return {**_encoder_blocks(_indexed(names, "input_blocks.")), **_middle_blocks(_indexed(names, "middle_block.")),
            **_decoder_blocks(_indexed(names, "output_blocks."))}


def _unet_key(key: str, blocks: Mapping[str, tuple[str, str]]) -> str | None:
    """The diffusers name of an LDM U-Net key, None where there is none."""
    module, param = key.rsplit(".", 1)
    if module in _UNET_TOP:
        return f"{_UNET_TOP[module]}.{param}"
    parts = key.split(".")
    depth = 2 if parts[0] == "middle_block" else 3
    block = ".".join(parts[:depth])
    if block not in blocks or len(parts) <= depth + 1:
        return None
    target, kind = blocks[block]
    inner, names = ".".join(parts[depth:-1]), _INNER[kind]
    if names is not None:
        if inner not in names:
            return None
        inner = names[inner]
    return f"{target}.{inner}.{param}"


def _renamed(state: Mapping[str, Tensor], rename: Callable[[str], str | None], what: str) -> dict[str, Tensor]:
    """``{rename(key): value}``; every key must have a new name, and a different one."""
    out, unmapped = {}, []
    for key, value in state.items():
        new = rename(key)
        if new is None:
            unmapped.append(key)
        elif new in out:
            raise ValueError(f"{what}: two keys map to {new}; the file's layout is not one difflab knows")
        else:
            out[new] = value
    if unmapped:
        raise ValueError(f"{what} has keys difflab cannot map: {_listing(unmapped)}")
    return out


def ldm_unet_to_diffusers(unet_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """An LDM U-Net's weights (``model.diffusion_model.*``, prefix optional) under diffusers'
    ``UNet2DConditionModel`` names (see the module docstring).

    Raises:
        ValueError: naming keys that have no diffusers name.
    """
    state = _strip(unet_state, UNET_PREFIX)
    blocks = _unet_blocks(list(state))
    return _renamed(state, lambda key: _unet_key(key, blocks), "the U-Net")


def _levels(state: Mapping[str, Tensor], side: str) -> list[tuple[int, int]]:
    """(residual blocks, transformer depth; 0: no attention) of each level of ``side``."""
    resnets, attends, depths = {}, set(), {}
    for key in state:
        if match := re.match(rf"{side}\.(\d+)\.resnets\.(\d+)\.", key):
            resnets.setdefault(int(match[1]), set()).add(int(match[2]))
        if match := re.match(rf"{side}\.(\d+)\.attentions\.", key):
            attends.add(int(match[1]))
        if match := re.match(rf"{side}\.(\d+)\.attentions\.\d+\.transformer_blocks\.(\d+)\.", key):
            depths.setdefault(int(match[1]), set()).add(int(match[2]))
    if attends - set(depths):
        raise ValueError(f"{side}.{min(attends - set(depths))} attends without a spatial transformer (an "
                         f"unconditional LDM's self-attention); difflab maps Stable Diffusion's text-conditioned U-Net")
    return [(len(resnets[b]), len(depths.get(b, ()))) for b in sorted(resnets)]


def _attention_heads(widths: list[int], context_dim: int, heads: int | None,
                     head_width: int | None) -> int | list[int]:
    """diffusers' ``attention_head_dim`` (for this class: the number of heads) by SD's conventions."""
    if heads is not None and head_width is not None:
        raise ValueError("pass heads (a count) or head_width (channels a head), not both")
    if heads is not None:
        if any(w % heads for w in widths):
            raise ValueError(f"heads={heads} does not divide the block widths {widths}")
        return int(heads)
    if head_width is None:
        if context_dim == 768:  # SD 1.x: num_heads 8
            return 8
        if context_dim != 1024:
            raise ValueError(f"the number of attention heads is not in the weights, and cross_attention_dim="
                             f"{context_dim} is neither SD 1.x's 768 nor SD 2.x's 1024: pass heads or head_width")
        head_width = 64  # SD 2.x: num_head_channels 64
    if any(w % head_width for w in widths):
        raise ValueError(f"head_width={head_width} does not divide the block widths {widths}")
    return [w // head_width for w in widths]


def _one_or_list(values: list[int]) -> int | list[int]:
    return values[0] if len(set(values)) == 1 else values


def unet_config_from_ldm(unet_state: Mapping[str, Tensor], heads: int | None = None, head_width: int | None = None,
                         image_size: int | None = None, norm_groups: int = 32) -> dict:
    """The diffusers ``UNet2DConditionModel`` config (config.json) of an LDM U-Net's weights.

    Args:
        unet_state: the LDM U-Net's weights (``model.diffusion_model.*``, prefix optional).
        heads: attention heads at every level (diffusers' ``attention_head_dim`` as an int).
        head_width: channels a head instead (heads per level = width // head_width, a list).
            Neither: SD's conventions (module docstring).
        image_size: the side of the latents it samples (``sample_size``); default 64.
        norm_groups: the group norms' groups (not in the weights; LDM's 32).

    Raises:
        ValueError: a U-Net diffusers' class cannot hold, or heads that cannot be inferred.
    """
    state = ldm_unet_to_diffusers(unet_state)
    down, up = _levels(state, "down_blocks"), _levels(state, "up_blocks")
    if [(n + 1, d) for n, d in reversed(down)] != up:
        raise ValueError(f"the decoder's levels (blocks, transformer depth) {up} do not mirror the encoder's {down} "
                         f"(one more block each); difflab cannot map this U-Net")
    context = next((v for k, v in state.items() if k.endswith("attn2.to_k.weight")), None)
    if context is None or "mid_block.attentions.0.proj_in.weight" not in state:
        raise ValueError("this U-Net has no cross-attention (in the middle block and at some level); difflab maps "
                         "Stable Diffusion's text-conditioned U-Net")
    widths = [int(state[f"down_blocks.{b}.resnets.0.conv1.weight"].shape[0]) for b in range(len(down))]
    mid_depth = len({k.split(".")[4] for k in state if k.startswith("mid_block.attentions.0.transformer_blocks.")})
    depths = [d or mid_depth for _, d in down]
    if depths[-1] != mid_depth:
        raise ValueError(f"the middle block's transformer depth {mid_depth} differs from the last level's "
                         f"{depths[-1]}; diffusers' UNet2DConditionModel ties them")
    config = {
        "_class_name": "UNet2DConditionModel", "sample_size": image_size or 64,
        "in_channels": int(state["conv_in.weight"].shape[1]), "out_channels": int(state["conv_out.weight"].shape[0]),
        "block_out_channels": widths, "layers_per_block": _one_or_list([n for n, _ in down]),
        "down_block_types": ["CrossAttnDownBlock2D" if d else "DownBlock2D" for _, d in down],
        "up_block_types": ["CrossAttnUpBlock2D" if d else "UpBlock2D" for _, d in up],
        "mid_block_type": "UNetMidBlock2DCrossAttn", "cross_attention_dim": int(context.shape[1]),
        "attention_head_dim": _attention_heads(widths, int(context.shape[1]), heads, head_width),
        "use_linear_projection": state["mid_block.attentions.0.proj_in.weight"].ndim == 2,
        "transformer_layers_per_block": _one_or_list(depths), "norm_num_groups": norm_groups, "norm_eps": 1e-5,
        "act_fn": "silu", "flip_sin_to_cos": True, "freq_shift": 0, "downsample_padding": 1,
    }
    time_width = int(state["time_embedding.linear_1.weight"].shape[0])
    if time_width != 4 * widths[0]:
        config["time_embedding_dim"] = time_width
    if "class_embedding.weight" in state:
        config["num_class_embeds"] = int(state["class_embedding.weight"].shape[0])
    if "class_embedding.linear_1.weight" in state:
        config.update(class_embed_type="projection",
                      projection_class_embeddings_input_dim=int(state["class_embedding.linear_1.weight"].shape[1]))
    return config


# ------------------------------------------------------------------------------------------------
# Autoencoder
# ------------------------------------------------------------------------------------------------

_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
_VAE_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_VAE_SAME = {"encoder.conv_in", "encoder.conv_out", "decoder.conv_in", "decoder.conv_out", "quant_conv",
             "post_quant_conv"}


def _vae_module(module: str, levels: int) -> str | None:
    """The diffusers name of an LDM autoencoder module (module docstring), None where there is none."""
    if module in _VAE_SAME:
        return module
    resnet = "(norm1|conv1|norm2|conv2|nin_shortcut)"
    if m := re.fullmatch(rf"encoder\.down\.(\d+)\.block\.(\d+)\.{resnet}", module):
        return f"encoder.down_blocks.{m[1]}.resnets.{m[2]}.{_VAE_RESNET[m[3]]}"
    if m := re.fullmatch(r"encoder\.down\.(\d+)\.downsample\.conv", module):
        return f"encoder.down_blocks.{m[1]}.downsamplers.0.conv"
    if m := re.fullmatch(rf"decoder\.up\.(\d+)\.block\.(\d+)\.{resnet}", module):
        return f"decoder.up_blocks.{levels - 1 - int(m[1])}.resnets.{m[2]}.{_VAE_RESNET[m[3]]}"
    if m := re.fullmatch(r"decoder\.up\.(\d+)\.upsample\.conv", module):
        return f"decoder.up_blocks.{levels - 1 - int(m[1])}.upsamplers.0.conv"
    if m := re.fullmatch(rf"(encoder|decoder)\.mid\.block_([12])\.{resnet}", module):
        return f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}.{_VAE_RESNET[m[3]]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid\.attn_1\.(norm|q|k|v|proj_out)", module):
        return f"{m[1]}.mid_block.attentions.0.{_VAE_ATTENTION[m[2]]}"
    if m := re.fullmatch(r"(encoder|decoder)\.norm_out", module):
        return f"{m[1]}.conv_norm_out"
    return None


def _vae_key(key: str, levels: int) -> str | None:
    module, param = key.rsplit(".", 1)
    new = _vae_module(module, levels) if param in ("weight", "bias") else None
    return None if new is None else f"{new}.{param}"


def _linear(weight: Tensor, name: str) -> Tensor:
    """A 1×1 convolution's weight as a linear layer's."""
    if weight.ndim > 2 and any(s != 1 for s in weight.shape[2:]):
        raise ValueError(f"{name} has shape {tuple(weight.shape)}, not a 1×1 convolution's")
    return weight.flatten(1) if weight.ndim > 2 else weight


def ldm_vae_to_diffusers(vae_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """An LDM autoencoder's weights (``first_stage_model.*``, prefix optional) under diffusers'
    ``AutoencoderKL`` names (see the module docstring).

    Raises:
        ValueError: naming keys that have no diffusers name (e.g. attention inside a level).
    """
    state = {k: v for k, v in _strip(vae_state, VAE_PREFIX).items() if not k.startswith("loss.")}
    levels = len(_indexed(state, "decoder.up."))
    out = _renamed(state, lambda key: _vae_key(key, levels), "the autoencoder")
    for key in [k for k in out if ".mid_block.attentions.0.to_" in k and k.endswith(".weight")]:
        out[key] = _linear(out[key], key)
    return out


def vae_config_from_ldm(vae_state: Mapping[str, Tensor], norm_groups: int = 32, image_size: int = 512,
                        scaling_factor: float = 0.18215) -> dict:
    """The diffusers ``AutoencoderKL`` config (config.json) of an LDM autoencoder's weights.

    Args:
        norm_groups: the group norms' groups (not in the weights; LDM's 32).
        image_size: ``sample_size`` (the weights do not depend on it).
        scaling_factor: the latent scale (not in the file; Stable Diffusion's 0.18215).

    Raises:
        ValueError: a decoder that does not mirror the encoder.
    """
    state = ldm_vae_to_diffusers(vae_state)
    down = [len(_indexed(r, "resnets.")) for r in _indexed(state, "encoder.down_blocks.").values()]
    up = [len(_indexed(r, "resnets.")) for r in _indexed(state, "decoder.up_blocks.").values()]
    if len(set(down)) != 1 or up != [down[0] + 1] * len(down):
        raise ValueError(f"the autoencoder's levels hold {down} (encoder) and {up} (decoder) residual blocks; "
                         f"diffusers' AutoencoderKL needs the same number at every level and one more in the decoder")
    return {
        "_class_name": "AutoencoderKL", "in_channels": int(state["encoder.conv_in.weight"].shape[1]),
        "out_channels": int(state["decoder.conv_out.weight"].shape[0]),
        "down_block_types": ["DownEncoderBlock2D"] * len(down), "up_block_types": ["UpDecoderBlock2D"] * len(up),
        "block_out_channels": [int(state[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0])
                               for i in range(len(down))],
        "layers_per_block": down[0], "act_fn": "silu", "latent_channels": int(state["decoder.conv_in.weight"].shape[1]),
        "norm_num_groups": norm_groups, "sample_size": image_size, "scaling_factor": scaling_factor,
        "use_quant_conv": "quant_conv.weight" in state, "use_post_quant_conv": "post_quant_conv.weight" in state,
        "mid_block_add_attention": "encoder.mid_block.attentions.0.to_q.weight" in state,
    }


# ------------------------------------------------------------------------------------------------
# Text encoder
# ------------------------------------------------------------------------------------------------

_OPEN_CLIP_TOP = {"token_embedding.weight": "embeddings.token_embedding.weight",
                  "positional_embedding": "embeddings.position_embedding.weight",
                  "ln_final.weight": "final_layer_norm.weight", "ln_final.bias": "final_layer_norm.bias"}
_OPEN_CLIP_LAYER = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
                    "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
_OPEN_CLIP_DROPPED = {"text_projection", "logit_scale", "attn_mask"}
_CLIP_KEY = re.compile(r"text_model\.(embeddings\.(token|position)_embedding\.weight|final_layer_norm\.(weight|bias)"
                       r"|encoder\.layers\.\d+\.(self_attn\.[qkv]_proj|self_attn\.out_proj|layer_norm[12]|mlp\.fc[12])"
                       r"\.(weight|bias))")


def _sd1_clip(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for key, value in state.items():
        name = key.removeprefix("transformer.")
        name = name if name.startswith("text_model.") else f"text_model.{name}"
        if not name.endswith("embeddings.position_ids"):  # a buffer (arange), not a weight
            out[name] = value
    return out


def _open_clip_key(key: str, value: Tensor) -> dict[str, Tensor] | None:
    """transformers' tensor(s) for one OpenCLIP key, None where there is none."""
    if key in _OPEN_CLIP_TOP:
        return {f"text_model.{_OPEN_CLIP_TOP[key]}": value}
    match = re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)", key)
    if match is None:
        return None
    layer, rest = f"text_model.encoder.layers.{match[1]}", match[2]
    if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):  # W_q, W_k, W_v stacked along rows
        if value.shape[0] % 3:
            raise ValueError(f"{key} has {value.shape[0]} rows, not three equal parts (q, k, v)")
        param = rest.rsplit("_", 1)[1]
        return {f"{layer}.self_attn.{n}_proj.{param}": part.clone() for n, part in zip("qkv", value.chunk(3))}
    module, param = rest.rsplit(".", 1)
    return {f"{layer}.{_OPEN_CLIP_LAYER[module]}.{param}": value} if module in _OPEN_CLIP_LAYER else None


def _sd2_clip(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out, unmapped = {}, []
    for key, value in state.items():
        name = key.removeprefix("model.")
        if name in _OPEN_CLIP_DROPPED:
            continue
        tensors = _open_clip_key(name, value)
        if tensors is None:
            unmapped.append(key)
        else:
            out.update(tensors)
    if unmapped:
        raise ValueError(f"the text encoder (OpenCLIP) has keys difflab cannot map: {_listing(unmapped)}")
    return out


def _layer_count(state: Mapping[str, Tensor]) -> int:
    return len({k.split(".")[3] for k in state if k.startswith("text_model.encoder.layers.")})


def ldm_clip_to_transformers(text_state: Mapping[str, Tensor], *,
                             penultimate: bool = False) -> tuple[dict[str, Tensor], str]:
    """A single file's text encoder (``cond_stage_model.*``, prefix optional) under transformers'
    ``CLIPTextModel`` names, and its layout: ``"sd1"`` (OpenAI CLIP) or ``"sd2"`` (OpenCLIP).

    Args:
        penultimate: drop the last layer, as diffusers stores SD 2.x (see the module docstring).

    Raises:
        ValueError: keys of neither layout, or that have no transformers name.
    """
    state = _strip(text_state, TEXT_PREFIX)
    if state and all(k.startswith("model.") for k in state):
        out, layout = _sd2_clip(state), "sd2"
    elif state and all(k.startswith("transformer.") for k in state):
        out, layout = _sd1_clip(state), "sd1"
    else:
        raise ValueError(f"the text encoder's keys ({_listing(sorted(state))}) are neither SD 1.x's "
                         f"cond_stage_model.transformer.* nor SD 2.x's cond_stage_model.model.*")
    unknown = [k for k in out if not _CLIP_KEY.fullmatch(k)]
    if unknown:
        raise ValueError(f"the text encoder has keys difflab cannot map to a CLIPTextModel: {_listing(unknown)}")
    if penultimate:
        last = f"text_model.encoder.layers.{_layer_count(out) - 1}."
        out = {k: v for k, v in out.items() if not k.startswith(last)}
    return out, layout


def clip_config_from_state(text_state: Mapping[str, Tensor], layout: str, heads: int | None = None) -> dict:
    """The transformers ``CLIPTextConfig`` (config.json) of ``CLIPTextModel`` weights.

    Args:
        text_state: transformers-named weights (:func:`ldm_clip_to_transformers`; ``text_model.``
            optional).
        layout: ``"sd1"`` (quick_gelu, OpenAI CLIP) or ``"sd2"`` (gelu, OpenCLIP).
        heads: attention heads (not in the weights); default hidden_size // 64 (CLIP's 64-channel
            heads: 12 for SD 1.x's 768, 16 for SD 2.x's 1024).

    ``eos_token_id`` is 2, old CLIP configs' value: transformers then pools at ``argmax(ids)``, as
    OpenAI CLIP and OpenCLIP do. ``projection_dim`` is unused by ``CLIPTextModel``.

    Raises:
        ValueError: an unknown layout, or heads that cannot be inferred.
    """
    if layout not in ACTIVATIONS:
        raise ValueError(f"layout={layout!r}: choose 'sd1' (OpenAI CLIP) or 'sd2' (OpenCLIP)")
    text_state = {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in text_state.items()}
    tokens = text_state["text_model.embeddings.token_embedding.weight"]
    hidden = int(tokens.shape[1])
    if heads is None:
        if hidden % 64:
            raise ValueError(f"the number of attention heads is not in the weights, and hidden_size={hidden} is not "
                             f"a multiple of CLIP's 64-channel heads: pass heads")
        heads = hidden // 64
    return {
        "architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "vocab_size": int(tokens.shape[0]),
        "hidden_size": hidden,
        "intermediate_size": int(text_state["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
        "num_hidden_layers": _layer_count(text_state), "num_attention_heads": int(heads),
        "max_position_embeddings": int(text_state["text_model.embeddings.position_embedding.weight"].shape[0]),
        "hidden_act": ACTIVATIONS[layout], "layer_norm_eps": 1e-5, "projection_dim": hidden,
        "bos_token_id": 49406, "eos_token_id": 2, "pad_token_id": 1, "attention_dropout": 0.0,
        "initializer_factor": 1.0, "initializer_range": 0.02,
    }


# ------------------------------------------------------------------------------------------------
# Schedule
# ------------------------------------------------------------------------------------------------


def _schedule(kind: str, start: float, end: float, steps: int) -> Tensor:
    """diffusers' ``linear`` / ``scaled_linear`` betas (LDM's "linear" is the latter: √β linear)."""
    if kind == "linear":
        return torch.linspace(start, end, steps, dtype=torch.float64)
    return torch.linspace(start**0.5, end**0.5, steps, dtype=torch.float64) ** 2


def _fit(name: str, stored: Tensor) -> tuple[tuple[str, float, float] | None, Tensor]:
    """((beta_schedule, beta_start, beta_end) that reproduce the ``betas`` / ``alphas_cumprod``
    buffer to its precision, or None; the betas). SD's 0.00085 → 0.012 is tried first, then the
    buffer's own first and last betas at 2 to 6 significant digits (the shortest that fits)."""
    target = stored.double()
    betas = target if name == "betas" else 1 - target / torch.cat([target.new_ones(1), target[:-1]])
    rtol = max(1e-5, 4 * torch.finfo(stored.dtype).eps)  # float16 files round the buffers
    ends = [SD_BETAS] + [tuple(float(f"{float(b):.{digits}g}") for b in (betas[0], betas[-1]))
                         for digits in range(2, 7)]
    for start, end in ends:
        for kind in ("scaled_linear", "linear"):
            expected = _schedule(kind, start, end, len(target))
            if name == "alphas_cumprod":
                expected = torch.cumprod(1 - expected, 0)
            if torch.allclose(expected, target, rtol=rtol, atol=0):
                return (kind, start, end), betas
    return None, betas


def ldm_scheduler_config(other: Mapping[str, Tensor], prediction: str | None = None) -> dict:
    """A diffusers scheduler config of a single file's training schedule.

    Args:
        other: :attr:`SingleFile.other` (``betas`` / ``alphas_cumprod``; without them, SD's
            ``scaled_linear`` 0.00085 → 0.012 over 1000 steps).
        prediction: what the network predicts, which the file does not say: ``epsilon`` (default;
            SD 1.x, SD 2.x-base) or ``v_prediction`` (SD 2.x 768-v); difflab's ``v`` / ``x0`` also read.

    Raises:
        ValueError: an unknown prediction.
    """
    if prediction is not None and prediction not in PREDICTIONS:
        raise ValueError(f"prediction={prediction!r}: choose epsilon, v_prediction or sample")
    config = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": SD_BETAS[0],
              "beta_end": SD_BETAS[1], "trained_betas": None, "prediction_type": PREDICTIONS[prediction or "epsilon"],
              "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}  # SD's scheduler_config.json
    name = next((n for n in ("betas", "alphas_cumprod") if n in other), None)
    if name is None:
        return config
    fit, betas = _fit(name, other[name])
    config["num_train_timesteps"] = len(betas)
    if fit is None:
        config["trained_betas"] = betas.tolist()
    else:
        config.update(zip(("beta_schedule", "beta_start", "beta_end"), fit))
    return config
