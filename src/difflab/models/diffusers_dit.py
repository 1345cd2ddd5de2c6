"""diffusers' ``DiTTransformer2DModel`` as a difflab :class:`~.dit.DiT` and back: the config
translated, the weights renamed.

Both are DiT (Peebles & Xie 2023): the same patch embedding, fixed 2-D sin-cos positions,
adaLN-Zero blocks, final adaLN layer and unpatchify, so the conversion renames and splits or
concatenates W_q, W_k, W_v (diffusers' ``to_q``, ``to_k``, ``to_v``; difflab's fused ``qkv``,
heads contiguous within each in both). Three differences are settled here:

* **One conditioning embedder, or one per block.** diffusers' blocks each hold their own
  ``c = TimestepMLP(t) + E_label[y]`` (``norm1.emb``), and the final layer reuses block 0's;
  difflab's DiT computes c once. Checkpoints converted from DiT's code hold identical copies, so
  the import checks that every copy equals block 0's, and the export writes one per block.
* **Time features.** diffusers' DiT computes them with ``downscale_freq_shift=1``,
  ω_i = 10000^(−i/(half − 1)), DiT's code with 10000^(−i/half); both put the cosines first.
  The import sets ``DiTConfig.time_freq_shift = 1``; a DiT with another shift has no diffusers
  equivalent.
* **The MLP's layer norm.** diffusers uses ``norm_eps`` (1e-5 unless the config says otherwise)
  where DiT's code uses 1e-6; it becomes ``DiTConfig.mlp_norm_eps``.

The class table has num_classes + 1 rows in both, the last the null label of classifier-free
guidance. The position embedding is a buffer on both sides, recomputed rather than copied (one
found in a state dict is checked against ours). Only safetensors files are read: a folder holds
``config.json`` and ``diffusion_pytorch_model.safetensors`` (``DiTTransformer2DModel
.save_pretrained``; a DiT pipeline's ``transformer/`` folder). tests/test_diffusers_dit.py
checks both directions against diffusers to 1e-4.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from ..nn import sincos_position_embedding_2d
from ..weight_files import read_safetensors_folder
from .dit import DiT, DiTConfig

CLASS_NAME = "DiTTransformer2DModel"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
DIFFUSERS_VERSION = "0.42.1"  # the release whose DiTTransformer2DModel the tests compare with

# DiTTransformer2DModel's constructor defaults: a config.json may leave any of them out
# (facebook/DiT-XL-2-256's has no norm_eps, so 1e-5).
DEFAULTS = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=None, num_layers=28,
                dropout=0.0, norm_num_groups=32, attention_bias=True, sample_size=32, patch_size=2,
                activation_fn="gelu-approximate", num_embeds_ada_norm=1000, upcast_attention=False,
                norm_type="ada_norm_zero", norm_elementwise_affine=False, norm_eps=1e-5)

# diffusers hard-codes these: Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=1) and
# FeedForward(mult=4).
FREQUENCY_DIM, TIME_FREQ_SHIFT, MLP_RATIO = 256, 1.0, 4.0

EMBEDDER = "transformer_blocks.{k}.norm1.emb"  # block k's time and class embedder


def dit_config_from_diffusers(config: Mapping) -> DiTConfig:
    """The :class:`DiTConfig` of a diffusers ``DiTTransformer2DModel`` config (its config.json).

    Supported: adaLN-Zero blocks with tanh-GELU MLPs, biased attention, norms without affine
    parameters, class labels (``num_embeds_ada_norm`` ≥ 1). ``dropout`` and ``upcast_attention``
    do not change the function in evaluation and are not kept. Anything else is a ``ValueError``
    naming the key. ``out_channels = 2 · in_channels`` is read as learned sigma (the same outputs).
    """
    c = {**DEFAULTS, **{k: v for k, v in config.items() if k in DEFAULTS}}
    checks = {
        "norm_type": c["norm_type"] == "ada_norm_zero",
        "activation_fn": c["activation_fn"] == "gelu-approximate",
        "norm_elementwise_affine": not c["norm_elementwise_affine"],
        "attention_bias": c["attention_bias"],
        "num_embeds_ada_norm": isinstance(c["num_embeds_ada_norm"], int) and c["num_embeds_ada_norm"] >= 1,
        "patch_size": isinstance(c["patch_size"], int),
    }
    unsupported = [key for key, ok in checks.items() if not ok]
    if unsupported:
        raise ValueError(f"this diffusers DiT has settings difflab's DiT does not implement: "
                         f"{', '.join(f'{k}={c[k]!r}' for k in unsupported)}")
    in_channels = c["in_channels"]
    out_channels = c["out_channels"] or in_channels
    learned_sigma = out_channels == 2 * in_channels
    try:
        return DiTConfig(
            in_channels=in_channels, out_channels=in_channels if learned_sigma else out_channels,
            image_size=c["sample_size"], patch_size=c["patch_size"],
            hidden_size=c["num_attention_heads"] * c["attention_head_dim"], depth=c["num_layers"],
            num_heads=c["num_attention_heads"], mlp_ratio=MLP_RATIO, frequency_dim=FREQUENCY_DIM,
            learned_sigma=learned_sigma, num_classes=c["num_embeds_ada_norm"], time_freq_shift=TIME_FREQ_SHIFT,
            mlp_norm_eps=float(c["norm_eps"]),
        )
    except ValueError as err:
        raise ValueError(f"this diffusers DiT config makes no valid difflab DiT: {err}") from None


def dit_key_map(cfg: DiTConfig) -> dict[str, str | tuple[str, str, str]]:
    """difflab parameter name → diffusers parameter name; the fused ``qkv`` → (to_q, to_k, to_v).

    The time and class embedder map to block 0's copy (see :func:`embedder_copies`)."""
    emb = EMBEDDER.format(k=0)
    layers = {"patch_embed": "pos_embed.proj", "time_embed.mlp.0": f"{emb}.timestep_embedder.linear_1",
              "time_embed.mlp.2": f"{emb}.timestep_embedder.linear_2", "final.adaLN_modulation.1": "proj_out_1",
              "final.linear": "proj_out_2"}
    for k in range(cfg.depth):
        ours, theirs = f"blocks.{k}", f"transformer_blocks.{k}"
        layers.update({f"{ours}.adaLN_modulation.1": f"{theirs}.norm1.linear",
                       f"{ours}.attn.proj": f"{theirs}.attn1.to_out.0",
                       f"{ours}.mlp.fc1": f"{theirs}.ff.net.0.proj", f"{ours}.mlp.fc2": f"{theirs}.ff.net.2"})
    names: dict[str, str | tuple[str, str, str]] = {
        f"{a}.{p}": f"{b}.{p}" for a, b in layers.items() for p in ("weight", "bias")}
    if cfg.num_classes:
        names["label_embed.weight"] = f"{emb}.class_embedder.embedding_table.weight"
    for k in range(cfg.depth):
        for p in ("weight", "bias"):
            names[f"blocks.{k}.attn.qkv.{p}"] = tuple(f"transformer_blocks.{k}.attn1.to_{n}.{p}" for n in "qkv")
    return names


def diffusers_layer_names(cfg: DiTConfig) -> dict[str, tuple[str, int, int]]:
    """diffusers' layer names → (our layer, part, parts), as :func:`.diffusers_unet.diffusers_layer_names`."""
    names = {}
    for ours, theirs in dit_key_map(cfg).items():
        if ours.endswith(".weight"):
            parts = (theirs,) if isinstance(theirs, str) else theirs
            for part, name in enumerate(parts):
                names[name.removesuffix(".weight")] = (ours.removesuffix(".weight"), part, len(parts))
    return names


def embedder_copies(cfg: DiTConfig) -> dict[str, str]:
    """diffusers' per-block embedder parameters → block 0's, of which they are copies."""
    first = EMBEDDER.format(k=0)
    params = [f"timestep_embedder.linear_{i}.{p}" for i in (1, 2) for p in ("weight", "bias")]
    params += ["class_embedder.embedding_table.weight"] if cfg.num_classes else []
    return {f"{EMBEDDER.format(k=k)}.{p}": f"{first}.{p}" for k in range(1, cfg.depth) for p in params}


def dit_state_to_diffusers(state: Mapping[str, Tensor], cfg: DiTConfig) -> dict[str, Tensor]:
    """A diffusers ``DiTTransformer2DModel`` state dict from difflab's (every tensor a new copy)."""
    theirs = {}
    for mine, their_key in dit_key_map(cfg).items():
        if isinstance(their_key, tuple):  # (3D, ...) → 3 × (D, ...)
            theirs.update(zip(their_key, (piece.clone() for piece in state[mine].detach().chunk(3))))
        else:
            theirs[their_key] = state[mine].detach().clone()
    theirs.update({copy: theirs[first].clone() for copy, first in embedder_copies(cfg).items()})
    return theirs


def _first(keys, few: int = 3) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:few]) + (f" (and {len(keys) - few} more)" if len(keys) > few else "")


def _check_position_embedding(state: dict[str, Tensor], cfg: DiTConfig) -> None:
    """Drop a saved ``pos_embed.pos_embed`` after checking it is the fixed sin-cos embedding."""
    saved = state.pop("pos_embed.pos_embed", None)
    if saved is None:
        return
    ours = sincos_position_embedding_2d(cfg.hidden_size, cfg.grid_size)[None]  # (1, T, D)
    if saved.shape != ours.shape or not torch.allclose(saved.float(), ours, atol=1e-5):
        raise ValueError("pos_embed.pos_embed is not the fixed 2-D sine-cosine position embedding of "
                         f"{cfg.grid_size}×{cfg.grid_size} patches that difflab's DiT computes")


def _check_state(state: Mapping[str, Tensor], cfg: DiTConfig) -> None:
    """Raise one ``ValueError`` for missing or unexpected keys, wrong shapes, or untied embedders."""
    with torch.device("meta"):
        expected = {k: v.shape for k, v in dit_state_to_diffusers(DiT(cfg).state_dict(), cfg).items()}
    missing, unexpected = expected.keys() - state.keys(), state.keys() - expected.keys()
    problems = [f"missing {_first(missing)}"] if missing else []
    problems += [f"unexpected {_first(unexpected)}"] if unexpected else []
    wrong = {k: (tuple(state[k].shape), tuple(expected[k])) for k in expected.keys() & state.keys()
             if state[k].shape != expected[k]}
    problems += [f"{k} has shape {got}, the config makes {want}" for k, (got, want) in sorted(wrong.items())[:3]]
    if problems:
        raise ValueError(f"the diffusers DiT weights do not fit its config: {'; '.join(problems)}")
    untied = [copy for copy, first in embedder_copies(cfg).items() if not torch.equal(state[copy], state[first])]
    if untied:
        raise ValueError(f"{_first(untied, 1)} differs from block 0's: difflab's DiT has one time and class "
                         "embedder where diffusers' has one per block, so they must be copies (as in checkpoints "
                         "converted from DiT's code)")


def dit_state_from_diffusers(state: Mapping[str, Tensor], cfg: DiTConfig) -> dict[str, Tensor]:
    """difflab's DiT state dict for ``cfg`` from a diffusers ``DiTTransformer2DModel`` state dict.

    Strict: missing or unexpected keys, shapes the config does not make, per-block embedders that
    are not copies of block 0's and a saved position embedding other than ours raise ``ValueError``.
    """
    state = dict(state)
    _check_position_embedding(state, cfg)
    _check_state(state, cfg)
    return {mine: torch.cat([state[k] for k in theirs]) if isinstance(theirs, tuple) else state[theirs]
            for mine, theirs in dit_key_map(cfg).items()}  # qkv: 3 × (D, ...) → (3D, ...)


def dit_from_diffusers(config: Mapping, state: Mapping[str, Tensor]) -> DiT:
    """A difflab DiT with the weights of a diffusers one (config dict + state dict), in float32."""
    cfg = dit_config_from_diffusers(config)
    model = DiT(cfg)
    model.load_state_dict(dit_state_from_diffusers(state, cfg))
    return model


def _read_weights(folder: Path) -> dict[str, Tensor]:
    """The safetensors weights of a diffusers model folder, single-file or sharded; never a pickle."""
    weights = read_safetensors_folder(folder, WEIGHTS_FILE, "DiTTransformer2DModel.from_pretrained(folder)"
                                      ".save_pretrained(folder, safe_serialization=True)")
    if weights is None:
        raise FileNotFoundError(f"{folder / WEIGHTS_FILE} does not exist: point at a diffusers DiTTransformer2DModel "
                                f"folder (a DiT pipeline's transformer/) holding config.json and {WEIGHTS_FILE}")
    return weights


def load_diffusers_dit(folder: str | Path) -> DiT:
    """The DiT saved in a local diffusers folder (``DiTTransformer2DModel.save_pretrained``)."""
    folder = Path(folder)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} does not exist: point at a diffusers DiTTransformer2DModel folder "
                                f"(a DiT pipeline's transformer/, not the pipeline folder itself)")
    config = json.loads(config_file.read_text())
    name = config.get("_class_name", CLASS_NAME)
    if name not in (CLASS_NAME, "Transformer2DModel"):  # the latter: older exports, as diffusers remaps them
        raise ValueError(f"{folder} holds a diffusers {name}, not a {CLASS_NAME}")
    return dit_from_diffusers(config, _read_weights(folder))


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def dit_config_to_diffusers(cfg: DiTConfig) -> dict:
    """The config.json of the diffusers ``DiTTransformer2DModel`` equal to a DiT of ``cfg``.

    Raises:
        ValueError: naming every field of ``cfg`` diffusers' DiT has no equivalent of (cross-attention,
            text encoder, concatenated image, no classes, another MLP width or time features).
    """
    mappable = {
        "context_dim": cfg.context_dim == 0, "text_encoder": cfg.text_encoder is None,
        "concat_channels": cfg.concat_channels == 0, "aug_level": not cfg.aug_level, "num_classes": cfg.num_classes > 0,
        "guidance_embed": not cfg.guidance_embed,
        "mlp_ratio": cfg.mlp_ratio == MLP_RATIO, "frequency_dim": cfg.frequency_dim == FREQUENCY_DIM,
        "time_freq_shift": cfg.time_freq_shift == TIME_FREQ_SHIFT,
    }
    fields = [f"{k}={_short(getattr(cfg, k))}" for k, ok in mappable.items() if not ok]
    if fields:
        hint = (" (diffusers' time features use time_freq_shift=1: a DiT trained with another would be a different "
                "function there)" if cfg.time_freq_shift != TIME_FREQ_SHIFT else "")
        raise ValueError(f"{CLASS_NAME} has no equivalent of difflab's {', '.join(fields)}{hint}")
    out_channels = cfg.out_channels * (2 if cfg.learned_sigma else 1)
    return {"_class_name": CLASS_NAME, "_diffusers_version": DIFFUSERS_VERSION, **DEFAULTS,
            "num_attention_heads": cfg.num_heads, "attention_head_dim": cfg.hidden_size // cfg.num_heads,
            "in_channels": cfg.in_channels, "out_channels": out_channels, "num_layers": cfg.depth,
            "sample_size": cfg.image_size, "patch_size": cfg.patch_size, "num_embeds_ada_norm": cfg.num_classes,
            "norm_eps": cfg.mlp_norm_eps}


def dit_to_diffusers(model: DiT) -> tuple[dict, dict[str, Tensor]]:
    """The diffusers ``DiTTransformer2DModel`` config and state dict equal to ``model``."""
    config = dit_config_to_diffusers(model.config)
    return config, dit_state_to_diffusers(model.state_dict(), model.config)


def save_diffusers_dit(model: DiT, folder: str | Path) -> Path:
    """Write ``model`` as a diffusers folder (config.json + safetensors weights) that
    ``DiTTransformer2DModel.from_pretrained(folder)`` loads; returns the folder."""
    from safetensors.torch import save_file

    config, state = dit_to_diffusers(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file({k: v.contiguous().cpu() for k, v in state.items()}, folder / WEIGHTS_FILE, metadata={"format": "pt"})
    return folder
