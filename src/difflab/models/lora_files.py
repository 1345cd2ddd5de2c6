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
looking it up (names are unique that way in difflab's networks). The layer names are difflab's
own: a file made for another project's network (diffusers' ``to_q``/``to_k``/``to_v``) matches
once that network is imported into difflab's layout (its importer maps the names), not before.
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
    if any(key.endswith(".lora_down.weight") for key in tensors):
        layout, pairs, alphas = "kohya", *_kohya(tensors, names)
    elif any(".lora_A." in key for key in tensors):
        layout, pairs = "peft", _peft(tensors)
        alphas = {}
    else:
        raise ValueError(f"{path} holds no LoRA weights (no lora_A/lora_B or lora_down/lora_up keys)")
    info = json.loads(metadata[METADATA_KEY]) if METADATA_KEY in metadata else {}
    config = LoraConfig(**{**info["config"], "targets": tuple(info["config"]["targets"])}) if info else None
    layout = "difflab" if info else layout
    unmatched = [name for name in pairs if name not in names]
    if unmatched and not force:
        raise ValueError(f"{path} adapts a layer this {type(network).__name__} does not have: {unmatched[0]!r} "
                         f"({len(unmatched)} of {len(pairs)} layers unmatched): a LoRA for another architecture; "
                         "--force loads the layers that match")
    out, ranks, layer_alphas = {}, {}, {}
    file_alpha = _file_alpha(metadata, config)
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
