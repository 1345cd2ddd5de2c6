"""The original (CompVis LDM / Stable Diffusion) key layout, written from diffusers' and transformers'
by the documented rules (docs/interop.md, "Single files"), independently of
difflab.interop.ldm_single_file: the tests build single files with it and check that the module
reads them back (tests/test_ldm_single_file.py, tests/test_interop.py)."""

from __future__ import annotations

import re

import torch


def renamed(key: str, modules: dict[str, str], inner: dict[str, str] | None = None) -> str:
    """``key`` with its longest module prefix in ``modules`` renamed (and, for ``inner``, the next
    module name after it too)."""
    parts = key.split(".")
    for n in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in modules:
            rest = ".".join(parts[n:])
            for theirs, ours in (inner or {}).items():
                if rest.startswith(f"{theirs}."):
                    rest = ours + rest[len(theirs):]
            return f"{modules[prefix]}.{rest}"
    raise AssertionError(f"the test's inverse mapping has no rule for {key}")



LDM_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
              "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
LDM_UNET_TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
                "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2",
                "class_embedding": "label_emb", "class_embedding.linear_1": "label_emb.0.0",
                "class_embedding.linear_2": "label_emb.0.2", "mid_block.resnets.0": "middle_block.0",
                "mid_block.attentions.0": "middle_block.1", "mid_block.resnets.1": "middle_block.2"}


def ldm_unet_modules(config: dict) -> dict[str, str]:
    """diffusers module → LDM module of a UNet2DConditionModel config: LDM numbers the blocks flat,
    a downsampler is a block of its own, an upsampler follows the last block of a decoder level."""
    levels, layers = len(config["block_out_channels"]), config["layers_per_block"]
    modules, i = dict(LDM_UNET_TOP), 1
    for b in range(levels):
        for j in range(layers):
            modules[f"down_blocks.{b}.resnets.{j}"] = f"input_blocks.{i}.0"
            modules[f"down_blocks.{b}.attentions.{j}"] = f"input_blocks.{i}.1"
            i += 1
        if b != levels - 1:
            modules[f"down_blocks.{b}.downsamplers.0.conv"] = f"input_blocks.{i}.0.op"
            i += 1
    i = 0
    for b, kind in enumerate(config["up_block_types"]):
        for j in range(layers + 1):
            modules[f"up_blocks.{b}.resnets.{j}"] = f"output_blocks.{i}.0"
            modules[f"up_blocks.{b}.attentions.{j}"] = f"output_blocks.{i}.1"
            i += 1
        if b != levels - 1:
            after = 2 if "CrossAttn" in kind else 1  # after the attention, if the level has one
            modules[f"up_blocks.{b}.upsamplers.0.conv"] = f"output_blocks.{i - 1}.{after}.conv"
    return modules


def to_ldm_unet(state: dict, config: dict) -> dict:
    modules = ldm_unet_modules(config)
    out = {}
    for key, value in state.items():
        inner = LDM_RESNET if ".resnets." in key else None
        out[f"model.diffusion_model.{renamed(key, modules, inner)}"] = value
    return out



LDM_VAE_RULES = [  # diffusers → LDM; {L} is the number of levels (LDM's decoder is stored finest first)
    (r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", lambda m, L: f"encoder.down.{m[1]}.block.{m[2]}."),
    (r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.", lambda m, L: f"encoder.down.{m[1]}.downsample.conv."),
    (r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.", lambda m, L: f"decoder.up.{L - 1 - int(m[1])}.block.{m[2]}."),
    (r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.",
     lambda m, L: f"decoder.up.{L - 1 - int(m[1])}.upsample.conv."),
    (r"mid_block\.resnets\.(\d+)\.", lambda m, L: f"mid.block_{int(m[1]) + 1}."),
    (r"mid_block\.attentions\.0\.group_norm\.", lambda m, L: "mid.attn_1.norm."),
    (r"mid_block\.attentions\.0\.to_([qkv])\.", lambda m, L: f"mid.attn_1.{m[1]}."),
    (r"mid_block\.attentions\.0\.to_out\.0\.", lambda m, L: "mid.attn_1.proj_out."),
    (r"conv_shortcut\.", lambda m, L: "nin_shortcut."),
    (r"conv_norm_out\.", lambda m, L: "norm_out."),
]


def to_ldm_vae(state: dict, levels: int) -> dict:
    out = {}
    for key, value in state.items():
        name = key
        for pattern, rule in LDM_VAE_RULES:
            name = re.sub(pattern, lambda m, rule=rule: rule(m, levels), name)
        if ".mid.attn_1." in name and name.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]  # LDM's 1×1 convolutions
        out[f"first_stage_model.{name}"] = value
    return out



OPEN_CLIP_MODULES = {"text_model.embeddings.token_embedding": "token_embedding",
                     "text_model.final_layer_norm": "ln_final"}
OPEN_CLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
                   "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


def to_open_clip(state: dict) -> dict:
    """transformers' CLIPTextModel → OpenCLIP's text tower under ``cond_stage_model.model.``, with
    q, k, v fused into ``in_proj`` and the joint-embedding tensors SD never uses."""
    hidden = state["text_model.embeddings.token_embedding.weight"].shape[1]
    g = torch.Generator().manual_seed(5)
    out = {"positional_embedding": state["text_model.embeddings.position_embedding.weight"],
           "text_projection": torch.randn(hidden, hidden, generator=g), "logit_scale": torch.tensor(4.6)}
    for key, value in state.items():
        if not key.startswith("text_model.encoder.layers."):
            if "position_embedding" not in key:
                out[renamed(key, OPEN_CLIP_MODULES)] = value
            continue
        i, module, p = re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key).groups()
        if module in OPEN_CLIP_LAYER:
            out[f"transformer.resblocks.{i}.{OPEN_CLIP_LAYER[module]}.{p}"] = value
        elif module == "self_attn.q_proj":
            out[f"transformer.resblocks.{i}.attn.in_proj_{p}"] = torch.cat(
                [state[f"text_model.encoder.layers.{i}.self_attn.{n}_proj.{p}"] for n in "qkv"])
        else:
            assert module in ("self_attn.k_proj", "self_attn.v_proj"), key
    return {f"cond_stage_model.model.{k}": v for k, v in out.items()}



def file_state(model) -> dict:
    """A CLIPTextModel's weights as its files name them (``text_model.*``; transformers 5 drops the
    prefix in memory)."""
    return {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in model.state_dict().items()}


