"""diffusers' ``UNet2DModel`` and ``UNet2DConditionModel`` ↔ difflab's :class:`~.unet.UNet`.

All three are DDPM's U-Net (Ho et al. 2020, appendix B) grown the same way: residual blocks per
level, attention at some levels, a strided-convolution / nearest-upsampling pyramid and skip
connections of every encoder output. ``UNet2DModel`` is the pixel model of DDPM's ports (its
attention is a single self-attention with group norm, as ours); ``UNet2DConditionModel`` is
Stable Diffusion's (Rombach et al. 2022): its attention layers are LDM's spatial transformers
(self-attention, cross-attention to the text states, GEGLU feed-forward), as ours with a context.
So the conversion renames parameters, fuses W_q, W_k, W_v into our ``qkv`` (W_k, W_v into the
cross-attention's ``kv``) and flattens a 1×1-convolution ``proj_in`` / ``proj_out`` into a linear
layer; a handful of :class:`~.unet.UNetConfig` fields (``norm_eps``, ``transformer_norm_eps``,
``attention_bias``, ``time_freq_shift``, ``time_sin_first``, ``downsample_padding``) make the
networks identical. tests/test_diffusers_unet.py compares outputs with diffusers' to 1e-4.

Which levels attend is a block type in diffusers (``CrossAttnDownBlock2D`` / ``AttnDownBlock2D``
vs ``DownBlock2D``) and a resolution in difflab (``attention_resolutions``); the up blocks must
mirror the down blocks. Heads: ``UNet2DModel.attention_head_dim`` is the width of a head (None:
one head); ``UNet2DConditionModel.attention_head_dim`` is, for historical reasons, the number of
heads (an int: SD 1.x's 8; a list per level: SD 2.x's 5-10-20-20, i.e. 64 channels a head).

Class labels: diffusers' ``num_class_embeds`` rows are difflab's labels; difflab's extra "null"
row (the dropped label of classifier-free guidance) is added as zeros on import and kept on
export (``num_class_embeds = num_classes + 1``). An exported config also carries difflab's own
config under ``_difflab_config`` (diffusers ignores keys that start with ``_``), so importing an
exported folder gives back the identical network.

Everything here reads and writes tensors; only safetensors files are opened (no pickle).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor

from .diffusers_weights import WEIGHTS_FILE
from .unet import UNet, UNetConfig

UNET_2D = "UNet2DModel"
UNET_2D_CONDITION = "UNet2DConditionModel"
DIFFLAB_CONFIG = "_difflab_config"  # difflab's UNetConfig inside an exported config.json

# The block types of each class: (with attention, without).
_BLOCKS = {
    UNET_2D: (("AttnDownBlock2D", "DownBlock2D"), ("AttnUpBlock2D", "UpBlock2D"), "UNetMidBlock2D"),
    UNET_2D_CONDITION: (("CrossAttnDownBlock2D", "DownBlock2D"), ("CrossAttnUpBlock2D", "UpBlock2D"),
                        "UNetMidBlock2DCrossAttn"),
}
# UNet2DConditionModel settings difflab's U-Net does not implement, with the value it requires.
_CONDITION_DEFAULTS = {
    "only_cross_attention": False, "dual_cross_attention": False, "encoder_hid_dim": None,
    "encoder_hid_dim_type": None, "addition_embed_type": None, "class_embed_type": None,
    "time_cond_proj_dim": None, "conv_in_kernel": 3, "conv_out_kernel": 3, "attention_type": "default",
    "class_embeddings_concat": False, "mid_block_only_cross_attention": None, "cross_attention_norm": None,
    "resnet_skip_time_act": False, "resnet_out_scale_factor": 1.0, "time_embedding_act_fn": None,
    "timestep_post_act": None, "reverse_transformer_layers_per_block": None,
}
_COMMON_DEFAULTS = {"center_input_sample": False, "act_fn": "silu", "time_embedding_type": "positional",
                    "mid_block_scale_factor": 1}


def _one(value, name: str):
    """A per-level setting that must be one value (an int, or a list of equal ints)."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f"{name}={list(value)} varies per level; difflab's U-Net uses one value for every level")
        return value[0]
    return value


def _unsupported(class_name: str, config: Mapping, required: Mapping) -> list[str]:
    return [f"{key}={config[key]!r}" for key, value in required.items() if key in config and config[key] != value]


def _image_size(config: Mapping, image_size: int | None) -> int:
    size = image_size or config.get("sample_size") or 64
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ValueError(f"sample_size={list(size)} is not square; pass --image-size")
        size = size[0]
    return int(size)


def _attention_levels(class_name: str, config: Mapping) -> list[bool]:
    """Which levels attend, from the down block types (the up blocks must mirror them)."""
    (down_attn, down_plain), (up_attn, up_plain), _ = _BLOCKS[class_name]
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    for name, types, known in (("down_block_types", down, (down_attn, down_plain)),
                               ("up_block_types", up, (up_attn, up_plain))):
        unknown = sorted(set(types) - set(known))
        if unknown:
            raise ValueError(f"{name} contains {unknown}, which difflab's U-Net cannot map; a {class_name} maps "
                             f"when its blocks are {' / '.join(known)}")
    levels = [t == down_attn for t in down]
    if len(up) != len(down) or [t == up_attn for t in reversed(up)] != levels:
        raise ValueError(f"up_block_types={up} do not mirror down_block_types={down}; difflab's U-Net attends at "
                         f"the same resolutions on both sides")
    return levels


def _heads(class_name: str, config: Mapping, widths: list[int]) -> dict:
    """difflab's ``num_heads`` / ``num_head_channels`` for diffusers' head settings."""
    if class_name == UNET_2D:
        width = config.get("attention_head_dim", 8)
        return {"num_heads": 1, "num_head_channels": -1} if width is None else {"num_head_channels": int(width)}
    heads = config.get("num_attention_heads") or config.get("attention_head_dim", 8)
    if not isinstance(heads, (list, tuple)):
        return {"num_heads": int(heads), "num_head_channels": -1}
    head_widths = {w // h for w, h in zip(widths, heads)}
    if len(head_widths) != 1 or any(w % h for w, h in zip(widths, heads)):
        raise ValueError(f"attention_head_dim={list(heads)} (heads per level) gives heads of different widths for "
                         f"block_out_channels={widths}; difflab's U-Net needs one head count or one head width")
    return {"num_heads": 1, "num_head_channels": head_widths.pop()}


def unet_config_from_diffusers(config: Mapping, learned_sigma: bool = False,
                               image_size: int | None = None) -> UNetConfig:
    """The :class:`UNetConfig` of a diffusers ``UNet2DModel`` / ``UNet2DConditionModel`` config.json.

    Args:
        config: the mapping (its ``_class_name`` says which class).
        learned_sigma: the model's second half of output channels is improved DDPM's variance
            (the scheduler's ``variance_type: learned_range``).
        image_size: the side of the images (latents) it samples; default its ``sample_size``.

    Raises:
        ValueError: naming every setting difflab cannot map, or the first inconsistent one.
    """
    class_name = config.get("_class_name", UNET_2D_CONDITION if "cross_attention_dim" in config else UNET_2D)
    if class_name not in _BLOCKS:
        raise ValueError(f"_class_name={class_name!r}: difflab imports {UNET_2D} and {UNET_2D_CONDITION} U-Nets")
    if DIFFLAB_CONFIG in config:  # written by difflab's exporter: the exact layout
        return UNetConfig(**config[DIFFLAB_CONFIG])
    required = dict(_COMMON_DEFAULTS)
    required.update(_CONDITION_DEFAULTS if class_name == UNET_2D_CONDITION else
                    {"downsample_type": "conv", "upsample_type": "conv", "add_attention": True,
                     "class_embed_type": None})
    if config.get("resnet_time_scale_shift", "default") not in ("default", "scale_shift"):
        required["resnet_time_scale_shift"] = "default"
    if config.get("downsample_padding", 1) not in (0, 1):
        required["downsample_padding"] = 1
    if config.get("mid_block_type", _BLOCKS[class_name][2]) != _BLOCKS[class_name][2]:
        required["mid_block_type"] = _BLOCKS[class_name][2]
    if (class_name == UNET_2D and config.get("resnet_time_scale_shift") == "scale_shift"
            and config.get("attn_norm_num_groups") is None):
        required["attn_norm_num_groups"] = config.get("norm_num_groups", 32)  # its middle attention has no norm
    widths = [int(w) for w in config["block_out_channels"]]
    if any(w % widths[0] for w in widths):
        required["block_out_channels"] = "multiples of the first width"
    if config.get("time_embedding_dim") not in (None, 4 * widths[0]):
        required["time_embedding_dim"] = 4 * widths[0]
    unsupported = _unsupported(class_name, config, required)
    if unsupported:
        raise ValueError(f"this diffusers {class_name} has settings difflab's U-Net does not implement: "
                         f"{', '.join(unsupported)}")
    levels = _attention_levels(class_name, config)
    size = _image_size(config, image_size)
    in_channels = int(config.get("in_channels", 4 if class_name == UNET_2D_CONDITION else 3))
    out_channels = int(config.get("out_channels", in_channels))
    if learned_sigma:
        if out_channels % 2:
            raise ValueError(f"out_channels={out_channels} is odd, so it cannot hold a mean and a variance "
                             f"(variance_type: learned_range)")
        out_channels //= 2
    conditional = class_name == UNET_2D_CONDITION
    return UNetConfig(
        in_channels=in_channels, out_channels=out_channels, image_size=size, model_channels=widths[0],
        channel_mult=tuple(w // widths[0] for w in widths),
        num_res_blocks=int(_one(config.get("layers_per_block", 2), "layers_per_block")),
        attention_resolutions=tuple(size // 2**i for i, on in enumerate(levels) if on),
        **_heads(class_name, config, widths), dropout=float(config.get("dropout", 0.0)),
        use_scale_shift_norm=config.get("resnet_time_scale_shift", "default") == "scale_shift",
        learned_sigma=learned_sigma, num_classes=int(config.get("num_class_embeds") or 0),
        norm_groups=int(config.get("norm_num_groups", 32)),
        context_dim=int(_one(config.get("cross_attention_dim", 1280), "cross_attention_dim")) if conditional else 0,
        transformer_depth=int(_one(config.get("transformer_layers_per_block", 1), "transformer_layers_per_block")),
        norm_eps=float(config.get("norm_eps", 1e-5)), transformer_norm_eps=1e-6 if conditional else 1e-5,
        attention_bias=False if conditional else None,
        time_freq_shift=float(config.get("freq_shift", 0)), time_sin_first=not config.get("flip_sin_to_cos", True),
        downsample_padding="ldm" if config.get("downsample_padding", 1) == 0 else "symmetric",
    )


# ------------------------------------------------------------------------------------------------
# The parameter correspondence: (ours, [theirs], how). "same": one tensor renamed; "cat": ours is
# theirs concatenated on dim 0 (fused q/k/v); "flat": a 1×1 convolution of theirs is our linear
# layer; "label": the class table (plus our null row); "zero:C": theirs only, C zeros (a bias
# difflab's layout does not have).
# ------------------------------------------------------------------------------------------------

Entry = tuple[str, list[str], str]


def _layer(ours: str, theirs: str) -> Iterator[Entry]:
    """A layer's weight and bias, renamed."""
    yield f"{ours}.weight", [f"{theirs}.weight"], "same"
    yield f"{ours}.bias", [f"{theirs}.bias"], "same"


def _params(ours: str, theirs: str, names: Mapping[str, str]) -> Iterator[Entry]:
    for a, b in names.items():
        yield from _layer(f"{ours}.{a}", f"{theirs}.{b}")


def _resnet(ours: str, theirs: str, has_skip: bool) -> Iterator[Entry]:
    names = {"norm1": "norm1", "conv1": "conv1", "emb_proj": "time_emb_proj", "norm2": "norm2", "conv2": "conv2"}
    if has_skip:
        names["skip"] = "conv_shortcut"
    yield from _params(ours, theirs, names)


def _self_attention(ours: str, theirs: str, channels: int) -> Iterator[Entry]:
    """``UNet2DModel``'s attention block (group norm, biased q/k/v, output projection)."""
    yield from _params(ours, theirs, {"norm": "group_norm", "attn.proj": "to_out.0"})
    for p in ("weight", "bias"):
        yield f"{ours}.attn.qkv.{p}", [f"{theirs}.to_{x}.{p}" for x in "qkv"], "cat"


def _transformer(ours: str, theirs: str, channels: int, cfg: UNetConfig, linear_projection: bool) -> Iterator[Entry]:
    """LDM's spatial transformer (``Transformer2DModel`` with ``BasicTransformerBlock`` s)."""
    proj = "same" if linear_projection else "flat"
    yield from _params(ours, theirs, {"norm": "norm"})
    for name in ("proj_in", "proj_out"):
        yield f"{ours}.{name}.weight", [f"{theirs}.{name}.weight"], proj
        yield f"{ours}.{name}.bias", [f"{theirs}.{name}.bias"], "same"
    self_bias, cross_bias = (True, False) if cfg.attention_bias is None else (cfg.attention_bias,) * 2
    for d in range(cfg.transformer_depth):
        o, t = f"{ours}.blocks.{d}", f"{theirs}.transformer_blocks.{d}"
        yield from _params(o, t, {"norm1": "norm1", "norm2": "norm2", "norm3": "norm3", "attn.proj": "attn1.to_out.0",
                                  "cross.proj": "attn2.to_out.0", "ff.proj_in": "ff.net.0.proj",
                                  "ff.proj_out": "ff.net.2"})
        yield f"{o}.attn.qkv.weight", [f"{t}.attn1.to_{x}.weight" for x in "qkv"], "cat"
        yield f"{o}.cross.q.weight", [f"{t}.attn2.to_q.weight"], "same"
        yield f"{o}.cross.kv.weight", [f"{t}.attn2.to_{x}.weight" for x in "kv"], "cat"
        if self_bias:
            yield f"{o}.attn.qkv.bias", [f"{t}.attn1.to_{x}.bias" for x in "qkv"], "cat"
        if cross_bias:
            yield f"{o}.cross.q.bias", [f"{t}.attn2.to_q.bias"], "same"
            yield f"{o}.cross.kv.bias", [f"{t}.attn2.to_{x}.bias" for x in "kv"], "cat"
        elif self_bias:  # difflab's own layout exports as diffusers' attention_bias with zero cross biases
            yield "", [f"{t}.attn2.to_{x}.bias" for x in "qkv"], f"zero:{channels}"


def correspondence(cfg: UNetConfig, linear_projection: bool = True) -> list[Entry]:
    """Every parameter of a difflab U-Net and the diffusers parameter(s) it corresponds to."""
    attention = (lambda o, t, c: _transformer(o, t, c, cfg, linear_projection)) if cfg.context_dim else _self_attention
    entries: list[Entry] = [*_layer("stem", "conv_in"),
                            *_params("time_embed", "time_embedding", {"mlp.0": "linear_1", "mlp.2": "linear_2"})]
    if cfg.num_classes:
        entries.append(("label_embed.weight", ["class_embedding.weight"], "label"))
    widths = [cfg.model_channels * m for m in cfg.channel_mult]
    ch, e, skips = widths[0], 0, [widths[0]]
    for level, (width, resolution) in enumerate(zip(widths, cfg.resolutions)):
        attends = resolution in cfg.attention_resolutions
        for j in range(cfg.num_res_blocks):
            entries += _resnet(f"encoder.{e}.0", f"down_blocks.{level}.resnets.{j}", ch != width)
            if attends:
                entries += attention(f"encoder.{e}.1", f"down_blocks.{level}.attentions.{j}", width)
            ch, e = width, e + 1
            skips.append(ch)
        if level != len(widths) - 1:
            entries += _layer(f"encoder.{e}.0.conv", f"down_blocks.{level}.downsamplers.0.conv")
            e += 1
            skips.append(ch)
    entries += _resnet("middle.0", "mid_block.resnets.0", False)
    entries += attention("middle.1", "mid_block.attentions.0", ch)
    entries += _resnet("middle.2", "mid_block.resnets.1", False)
    d = 0
    for up, level in enumerate(reversed(range(len(widths)))):
        width, attends = widths[level], cfg.resolutions[level] in cfg.attention_resolutions
        for i in range(cfg.num_res_blocks + 1):
            entries += _resnet(f"decoder.{d}.0", f"up_blocks.{up}.resnets.{i}", ch + skips.pop() != width)
            if attends:
                entries += attention(f"decoder.{d}.1", f"up_blocks.{up}.attentions.{i}", width)
            ch = width
            if level != 0 and i == cfg.num_res_blocks:
                entries += _layer(f"decoder.{d}.{2 if attends else 1}.conv", f"up_blocks.{up}.upsamplers.0.conv")
            d += 1
    return entries + [*_layer("head.0", "conv_norm_out"), *_layer("head.2", "conv_out")]


def diffusers_layer_names(cfg: UNetConfig) -> dict[str, tuple[str, int, int]]:
    """diffusers' layer names (``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q``) → (our
    layer, part, parts): the layer is part ``part`` of ``parts`` equal row blocks of ours (W_q of
    our fused ``qkv`` is part 0 of 3). LoRA files made for diffusers' U-Net load through it
    (:mod:`.lora_files`)."""
    names = {}
    for ours, theirs, how in correspondence(cfg):
        if ours.endswith(".weight") and how in ("same", "cat", "flat"):
            for part, name in enumerate(theirs):
                names[name.removesuffix(".weight")] = (ours.removesuffix(".weight"), part, len(theirs))
    return names


def _check_keys(state: Mapping[str, Tensor], wanted: set[str], what: str) -> None:
    missing, unexpected = sorted(wanted - set(state)), sorted(set(state) - wanted)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:4])}{' …' if len(missing) > 4 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:4])}{' …' if len(unexpected) > 4 else ''}")
        raise ValueError(f"{what}: {'; '.join(parts)} — the weights do not match the config "
                         f"(a different architecture, or a file from another model)")


def unet_state_from_diffusers(state: Mapping[str, Tensor], cfg: UNetConfig,
                              linear_projection: bool = True) -> dict[str, Tensor]:
    """difflab U-Net weights from a diffusers U-Net's, for the config :func:`unet_config_from_diffusers` gave.

    Raises:
        ValueError: missing or unexpected keys, or shapes that disagree with the config.
    """
    entries = correspondence(cfg, linear_projection)
    if cfg.concat_channels:  # exported with the concatenated image's input weights inside conv_in
        state = dict(state)
        state["conv_in.weight"], state["__concat_input.weight"] = state["conv_in.weight"].split(
            [cfg.in_channels, cfg.concat_channels], dim=1)
        entries.append(("concat_input.weight", ["__concat_input.weight"], "same"))
    _check_keys(state, {t for _, ts, _ in entries for t in ts}, "the diffusers U-Net's weights")
    ours: dict[str, Tensor] = {}
    for name, theirs, how in entries:
        tensors = [state[t] for t in theirs]
        if how.startswith("zero"):
            if any(bool(t.any()) for t in tensors):
                raise ValueError(f"{theirs[0]} is not zero: difflab's layout has no cross-attention biases "
                                 f"(set attention_bias: true in the U-Net config)")
            continue
        if how == "label":
            null = torch.zeros_like(tensors[0][:1]) if tensors[0].shape[0] == cfg.num_classes else tensors[0][:0]
            ours[name] = torch.cat([tensors[0], null])
        elif how == "flat":
            ours[name] = tensors[0].flatten(1) if tensors[0].ndim == 4 else tensors[0]
        else:
            ours[name] = torch.cat(tensors) if how == "cat" else tensors[0]
    return ours


def load_state_strict(model: torch.nn.Module, state: Mapping[str, Tensor], what: str) -> None:
    """``model.load_state_dict(state)`` with one clear message for missing keys or wrong shapes."""
    from . import state_dict_mismatch

    own = model.state_dict()
    problem = state_dict_mismatch(dict(state), own)
    if problem is not None:
        raise ValueError(f"{what}: shapes disagree with the config or keys differ: {problem}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def read_diffusers_folder(folder: str | Path, what: str) -> tuple[dict, dict[str, Tensor]]:
    """(config.json, weights) of a diffusers model folder; safetensors only (no pickle is read).

    Raises:
        FileNotFoundError: the folder, its config.json or its weights are missing (a ``.bin``
            gets the command that converts it).
    """
    from ..weight_files import read_safetensors_folder

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json: it is not a diffusers {what} folder")
    weights = read_safetensors_folder(folder, WEIGHTS_FILE, "diffusers' from_pretrained(DIR).save_pretrained(DIR, "
                                      "safe_serialization=True)")
    if weights is None:
        raise FileNotFoundError(f"{folder} has no {WEIGHTS_FILE}; save the model with diffusers' "
                                f"save_pretrained(DIR, safe_serialization=True)")
    return json.loads((folder / "config.json").read_text()), weights


def unet_from_diffusers(config: Mapping, state: Mapping[str, Tensor], learned_sigma: bool = False,
                        image_size: int | None = None, source: str = "the diffusers U-Net") -> UNet:
    """A difflab :class:`UNet` from a diffusers U-Net's config and weights (see the module docstring)."""
    cfg = unet_config_from_diffusers(config, learned_sigma, image_size)
    model = UNet(cfg)
    load_state_strict(model, unet_state_from_diffusers(state, cfg, config.get("use_linear_projection", False)),
                      source)
    return model


def load_diffusers_unet(folder: str | Path, learned_sigma: bool = False, image_size: int | None = None) -> UNet:
    """A difflab :class:`UNet` with the weights of a diffusers ``unet/`` folder."""
    config, state = read_diffusers_folder(folder, "U-Net")
    return unet_from_diffusers(config, state, learned_sigma, image_size, f"the U-Net in {folder}")


# ------------------------------------------------------------------------------------------------
# Export
# ------------------------------------------------------------------------------------------------


def _no_equivalent(class_name: str, cfg: UNetConfig) -> list[str]:
    features = {
        "rescale_skip": cfg.rescale_skip, "rescale_concat_skip": cfg.rescale_concat_skip,
        "text_encoder": cfg.text_encoder, "aug_level": cfg.aug_level, "resblock_updown": cfg.resblock_updown,
        "guidance_embed": cfg.guidance_embed,
    }
    if class_name == UNET_2D_CONDITION:
        features["attention_bias"] = cfg.attention_bias is not False  # its transformer blocks have no q/k/v biases
    elif cfg.num_head_channels == -1:
        widths = {cfg.model_channels * cfg.channel_mult[i] for i, r in enumerate(cfg.resolutions)
                  if r in cfg.attention_resolutions} | {cfg.model_channels * cfg.channel_mult[-1]}
        features["num_heads"] = len({w // cfg.num_heads for w in widths}) > 1 or any(w % cfg.num_heads for w in widths)
    return [f"{name}={getattr(cfg, name)!r}" for name, on in features.items() if on]


def unet_to_diffusers(model: UNet) -> tuple[dict, dict[str, Tensor]]:
    """(config.json, weights) of the diffusers U-Net equal to ``model``: a ``UNet2DConditionModel``
    for a context-conditioned network, a ``UNet2DModel`` otherwise.

    Raises:
        ValueError: naming each setting diffusers' class has no equivalent of.
    """
    cfg = model.config
    class_name = UNET_2D_CONDITION if cfg.context_dim else UNET_2D
    missing = _no_equivalent(class_name, cfg)
    if missing:
        raise ValueError(f"diffusers' {class_name} has no equivalent of difflab's {', '.join(missing)}; this U-Net "
                         f"cannot be exported to diffusers")
    (down_attn, down_plain), (up_attn, up_plain), mid = _BLOCKS[class_name]
    attends = [r in cfg.attention_resolutions for r in cfg.resolutions]
    widths = [cfg.model_channels * m for m in cfg.channel_mult]
    config = {
        "_class_name": class_name, "_diffusers_version": "0.42.1", DIFFLAB_CONFIG: asdict(cfg),
        "sample_size": cfg.image_size, "in_channels": cfg.in_channels + cfg.concat_channels,
        "out_channels": cfg.out_channels * (2 if cfg.learned_sigma else 1), "block_out_channels": widths,
        "layers_per_block": cfg.num_res_blocks, "down_block_types": [down_attn if a else down_plain for a in attends],
        "up_block_types": [up_attn if a else up_plain for a in reversed(attends)], "mid_block_type": mid,
        "dropout": cfg.dropout, "norm_num_groups": cfg.norm_groups, "norm_eps": cfg.norm_eps,
        "resnet_time_scale_shift": "scale_shift" if cfg.use_scale_shift_norm else "default",
        "flip_sin_to_cos": not cfg.time_sin_first, "freq_shift": cfg.time_freq_shift,
        "downsample_padding": 0 if cfg.downsample_padding == "ldm" else 1, "act_fn": "silu",
        "num_class_embeds": cfg.num_classes + 1 if cfg.num_classes else None,
    }
    if class_name == UNET_2D_CONDITION:
        heads = (cfg.num_heads if cfg.num_head_channels == -1 else [w // cfg.num_head_channels for w in widths])
        config.update(cross_attention_dim=cfg.context_dim, attention_head_dim=heads, use_linear_projection=True,
                      transformer_layers_per_block=cfg.transformer_depth)
        if cfg.transformer_norm_eps != 1e-6:
            raise ValueError(f"diffusers' {class_name} has no equivalent of difflab's transformer_norm_eps="
                             f"{cfg.transformer_norm_eps} (its transformers use 1e-6)")
    else:
        config["attention_head_dim"] = (cfg.num_head_channels if cfg.num_head_channels != -1
                                        else widths[-1] // cfg.num_heads)
        config["attn_norm_num_groups"] = cfg.norm_groups  # else a scale-shift model's middle attention has no norm
    ours = model.state_dict()
    state: dict[str, Tensor] = {}
    for name, theirs, how in correspondence(cfg):
        if how.startswith("zero"):
            width = int(how.split(":")[1])
            state.update({t: torch.zeros(width, dtype=ours["stem.weight"].dtype) for t in theirs})
            continue
        tensor = ours[name]
        if how == "cat":
            state.update(zip(theirs, tensor.chunk(len(theirs))))
        else:
            state[theirs[0]] = tensor
    if cfg.concat_channels:
        state["conv_in.weight"] = torch.cat([ours["stem.weight"], ours["concat_input.weight"]], dim=1)
    return config, {k: v.detach().contiguous().clone() for k, v in state.items()}


def save_diffusers_unet(model: UNet, folder: str | Path) -> Path:
    """Write ``model`` as a diffusers U-Net folder (config.json + diffusion_pytorch_model.safetensors)."""
    from safetensors.torch import save_file

    config, state = unet_to_diffusers(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / WEIGHTS_FILE))
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder
