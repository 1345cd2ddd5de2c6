"""LoRA files: difflab's own, PEFT / diffusers', and kohya's (sd-scripts, A1111) key layouts.

All three are one ``.safetensors`` of each adapted layer's down (A) and up (B) weights; they differ
in how a layer is named and where α is kept:

===========  ====================================================  ===============================
layout       keys for the layer ``encoder.4.1.blocks.0.attn.qkv``  α
===========  ====================================================  ===============================
difflab      ``encoder.4.1.blocks.0.attn.qkv.lora_A.weight`` (A),  the file's metadata
             ``….lora_B.weight`` (B)                               (``difflab_lora``: rank, α,
                                                                   targets, base run and hash)
PEFT /       the same, after a prefix ``base_model.model.``        ``lora_alpha`` in the metadata
diffusers    (PEFT) or ``unet.`` / ``transformer.`` (diffusers)    (diffusers' ``lora_adapter_
                                                                   metadata``), else α = r
kohya        ``lora_unet_encoder_4_1_blocks_0_attn_qkv.lora_down.  ``….alpha`` (a scalar per layer),
             weight`` (A), ``….lora_up.weight`` (B): the name      else α = r
             with dots as underscores
===========  ====================================================  ===============================

A kohya name is mapped back by writing every layer name of the network with underscores and
looking it up (names are unique that way in difflab's networks).

Files made for diffusers' networks (``UNet2DConditionModel``, ``UNet2DModel``,
``DiTTransformer2DModel``; kohya's ``lora_unet_down_blocks_0_attentions_0_…_attn1_to_q`` are the
same names) load onto the difflab U-Net or DiT imported from them: their layer names go through
the importer's correspondence (:func:`.diffusers_unet.diffusers_layer_names`). Where diffusers has
W_q, W_k, W_v apart and difflab one fused ``qkv``, their adapters become one adapter on ``qkv`` of
rank r_q + r_k + r_v: A = [A_q; A_k; A_v] and B block-diagonal with each block scaled by its own
α/r, so ΔW = B·A is exactly the three updates stacked (the fused adapter's α equals its rank).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from .lora import LoraConfig, LoraNetwork

METADATA_KEY = "difflab_lora"
PEFT_PREFIXES = ("base_model.model.", "unet.", "transformer.", "model.")
KOHYA_PREFIX = "lora_unet_"


@dataclass
class LoraFile:
    """A LoRA file read into difflab's layout: per layer ``{layer}.lora_A.weight`` / ``.lora_B.weight``,
    each layer's rank and α, the config (when the file is difflab's) and where it came from."""

    tensors: dict[str, Tensor]
    ranks: dict[str, int]
    alphas: dict[str, float]
    layout: str
    config: LoraConfig | None = None
    base: dict | None = None
    path: Path | None = None

    @property
    def layers(self) -> list[str]:
        return list(self.ranks)


def save_lora(path: str | Path, lora: LoraNetwork, base: dict | None = None) -> Path:
    """Write ``lora`` in difflab's layout (atomically: a temporary file, then a rename); ``base``:
    the base run's ``{"path", "step", "weights_sha256"}``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {METADATA_KEY: json.dumps({"config": lora.config.to_dict(), "base": base, "layers": lora.layer_names})}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(lora.lora_state_dict(), str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_kohya(path: str | Path, lora: LoraNetwork) -> Path:
    """Write ``lora`` in kohya's layout (for tools that read only that)."""
    tensors = {}
    for name in lora.layer_names:
        adapter = lora.adapters[name.replace(".", "__")]
        key = KOHYA_PREFIX + name.replace(".", "_")
        tensors[f"{key}.lora_down.weight"] = adapter.down.weight.detach().cpu().contiguous()
        tensors[f"{key}.lora_up.weight"] = adapter.up.weight.detach().cpu().contiguous()
        tensors[f"{key}.alpha"] = torch.tensor(float(adapter.scaling * adapter.rank))  # kohya scales by α / r
    save_file(tensors, str(path))
    return Path(path)


def read_lora(path: str | Path, network: nn.Module, force: bool = False) -> LoraFile:
    """Read a LoRA file of any layout for ``network`` (see the module docstring).

    Raises:
        ValueError: not a LoRA file; a key naming no layer of ``network`` (``force``: skip such
            keys and load the matching part); a layer's A and B of different ranks.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as err:  # safetensors raises its own error types for a damaged or foreign file
        raise ValueError(f"{path} is not a readable .safetensors LoRA file ({err})") from None
    order = [name for name, module in network.named_modules() if isinstance(module, (nn.Linear, nn.Conv2d))]
    names = set(order)
    foreign = foreign_layer_names(network)
    if any(key.endswith(".lora_down.weight") for key in tensors):
        layout, pairs, alphas = "kohya", *_kohya(tensors, names | set(foreign))
    elif any(".lora_A." in key for key in tensors):
        layout, pairs = "peft", _peft(tensors)
        alphas = {}
    else:
        raise ValueError(f"{path} holds no LoRA weights (no lora_A/lora_B or lora_down/lora_up keys)")
    info = json.loads(metadata[METADATA_KEY]) if METADATA_KEY in metadata else {}
    config = LoraConfig(**{**info["config"], "targets": tuple(info["config"]["targets"])}) if info else None
    layout = "difflab" if info else layout
    file_alpha = _file_alpha(metadata, config)
    if foreign and any(name not in names and name in foreign for name in pairs):
        pairs, alphas = _fuse_foreign(pairs, alphas, file_alpha, foreign, network)
        layout = f"{layout} (diffusers layer names)"
    unmatched = [name for name in pairs if name not in names]
    if unmatched and not force:
        raise ValueError(f"{path} adapts a layer this {type(network).__name__} does not have: {unmatched[0]!r} "
                         f"({len(unmatched)} of {len(pairs)} layers unmatched): a LoRA for another architecture; "
                         "--force loads the layers that match")
    out, ranks, layer_alphas = {}, {}, {}
    for name in (n for n in order if n in pairs):  # in the network's order
        down, up = pairs[name]
        if down.shape[0] != up.shape[1]:
            raise ValueError(f"{path}: layer {name} has a down weight of rank {down.shape[0]} and an up weight of "
                             f"rank {up.shape[1]}: a damaged LoRA file")
        out[f"{name}.lora_A.weight"], out[f"{name}.lora_B.weight"] = down, up
        ranks[name] = int(down.shape[0])
        layer_alphas[name] = float(alphas.get(name, file_alpha if file_alpha is not None else down.shape[0]))
    if not ranks:
        raise ValueError(f"{path}: none of its layers is in this {type(network).__name__}")
    return LoraFile(out, ranks, layer_alphas, layout, config, info.get("base"), path)


def foreign_layer_names(network: nn.Module) -> dict[str, tuple[str, int, int]]:
    """diffusers' layer names of a difflab U-Net or DiT → (our layer, part, parts); {} for others."""
    from .diffusers_dit import diffusers_layer_names as dit_names
    from .diffusers_unet import diffusers_layer_names as unet_names
    from .dit import DiT
    from .unet import UNet

    if isinstance(network, UNet):
        return unet_names(network.config)
    if isinstance(network, DiT):
        return dit_names(network.config)
    return {}


def _fuse_foreign(pairs: dict[str, tuple[Tensor, Tensor]], alphas: dict[str, float], file_alpha: float | None,
                  foreign: dict[str, tuple[str, int, int]], network: nn.Module
                  ) -> tuple[dict[str, tuple[Tensor, Tensor]], dict[str, float]]:
    """Adapters named by diffusers' layers as adapters on difflab's (see the module docstring)."""
    modules = dict(network.named_modules())
    fused: dict[str, list] = {}
    out_pairs, out_alphas = {}, {}
    for name, (down, up) in pairs.items():
        if name not in foreign:
            out_pairs[name] = (down, up)
            if name in alphas:
                out_alphas[name] = alphas[name]
            continue
        ours, part, parts = foreign[name]
        rank = down.shape[0]
        scale = float(alphas.get(name, file_alpha if file_alpha is not None else rank)) / rank
        fused.setdefault(ours, []).append((part, parts, down, up * scale))
    for ours, pieces in fused.items():
        layer = modules[ours]
        rows = layer.weight.shape[0]
        flat = isinstance(layer, nn.Linear)  # diffusers' 1×1-conv proj_in/out are linear layers here
        downs = [d.flatten(1) if flat else d for _, _, d, _ in pieces]
        ups = [u.flatten(1) if flat else u for _, _, _, u in pieces]
        total = sum(d.shape[0] for d in downs)
        up = torch.zeros(rows, total, *ups[0].shape[2:], dtype=ups[0].dtype)
        column = 0
        for (part, parts, _, _), d, u in zip(pieces, downs, ups):
            size = rows // parts
            up[part * size:(part + 1) * size, column:column + d.shape[0]] = u
            column += d.shape[0]
        out_pairs[ours] = (torch.cat(downs), up)
        out_alphas[ours] = float(total)  # the pieces' α/r are inside B
    return out_pairs, out_alphas


def _file_alpha(metadata: dict, config: LoraConfig | None) -> float | None:
    if config is not None:
        return config.alpha
    for key in ("lora_alpha", "alpha"):
        if key in metadata:
            return float(metadata[key])
    if "lora_adapter_metadata" in metadata:  # diffusers
        return json.loads(metadata["lora_adapter_metadata"]).get("lora_alpha")
    return None


def _peft(tensors: dict[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
    pairs: dict[str, list] = {}
    for key, value in tensors.items():
        for part, index in ((".lora_A.", 0), (".lora_B.", 1)):
            if part in key:
                name = key.split(part)[0]
                for prefix in PEFT_PREFIXES:
                    if name.startswith(prefix):
                        name = name[len(prefix):]
                        break
                pairs.setdefault(name, [None, None])[index] = value
    return _complete(pairs)


def _kohya(tensors: dict[str, Tensor], names: set[str]) -> tuple[dict[str, tuple[Tensor, Tensor]], dict[str, float]]:
    by_underscores = {name.replace(".", "_"): name for name in names}
    pairs: dict[str, list] = {}
    alphas = {}
    for key, value in tensors.items():
        stem, _, suffix = key.partition(".")
        flat = stem.removeprefix(KOHYA_PREFIX)
        name = by_underscores.get(flat, flat)  # an unknown one stays as it is, to be named in the error
        if suffix == "lora_down.weight":
            pairs.setdefault(name, [None, None])[0] = value
        elif suffix == "lora_up.weight":
            pairs.setdefault(name, [None, None])[1] = value
        elif suffix == "alpha":
            alphas[name] = float(value)
    return _complete(pairs), alphas


def _complete(pairs: dict[str, list]) -> dict[str, tuple[Tensor, Tensor]]:
    for name, (down, up) in pairs.items():
        if down is None or up is None:
            raise ValueError(f"the LoRA has only half of layer {name} (its {'down' if up is None else 'up'} weight)")
    return {name: (down, up) for name, (down, up) in pairs.items()}


def load_lora(path: str | Path, network: nn.Module, scale: float = 1.0, force: bool = False) -> LoraNetwork:
    """A LoRA file applied to ``network`` with ``scale`` (hooks on its layers; ``.merge()`` to fuse)."""
    file = read_lora(path, network, force)
    config = file.config or LoraConfig(rank=max(file.ranks.values()), targets=tuple(file.layers))
    lora = LoraNetwork(network, config, layers=file.layers, scale=scale, ranks=file.ranks, alphas=file.alphas)
    lora.load_lora_state_dict(file.tensors)
    lora.path, lora.base = file.path, file.base
    return lora.eval().requires_grad_(False)
