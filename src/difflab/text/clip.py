"""CLIP's text tower, the frozen text encoder of Stable Diffusion 1.x and 2.x.

CLIP (Radford et al. 2021, §2.4) encodes text with a GPT-2-style Transformer (Radford et al.
2019, §2.3): learned position embeddings, pre-norm layers and a causal mask (each token attends to
itself and the tokens before it)::

    h₀ = E_token[ids] + E_position[0…L−1]
    a  = h + W_o · CausalAttention(W_q n, W_k n, W_v n),   n = LayerNorm₁(h)
    h' = a + W₂ · act(W₁ LayerNorm₂(a)),                   act = quick_gelu (x·σ(1.702x)) or gelu
    out = LayerNorm_final(h_K)

Latent diffusion (Rombach et al. 2022, §3.3) cross-attends to ``out``, all 77 positions of it:
SD 1.x uses OpenAI's ViT-L/14 text tower (12 layers, 768 wide, quick_gelu), SD 2.x OpenCLIP's
ViT-H/14 (1024 wide, gelu) taken at its penultimate layer, which diffusers stores by dropping the
last layer (23 of 24 are left), so a diffusers SD 2.x folder is used with ``skip=1``.

**Clip skip.** ``forward(ids, skip=k)`` applies the final LayerNorm to the output of layer
K − (k − 1): ``skip=1`` is the last layer (``last_hidden_state``), ``skip=2`` the penultimate.
This is AUTOMATIC1111's "Clip skip" setting as is; diffusers' ``encode_prompt(clip_skip=c)``
takes ``hidden_states[-(c + 1)]`` (then the final LayerNorm), so ``skip = clip_skip + 1`` and
diffusers' ``clip_skip=None`` is ``skip=1`` (tested against diffusers).

**Weights.** Parameter names are our own; :data:`TRANSFORMERS_NAMES` maps them onto
transformers' ``CLIPTextModel`` keys (``text_model.encoder.layers.3.self_attn.q_proj.weight`` →
``layers.3.query.weight``). Files are read from safetensors only, strictly: a missing,
unexpected or misshapen tensor fails with its name.

Unlike MiniLM's encoder, :class:`ClipTextEncoder` does not mask padding: see :meth:`ClipTextEncoder.encode`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from ..weight_files import read_safetensors_folder
from .bpe import PAD_CONVENTIONS, ClipTokenizer
from .encoding import TextEncoding, check_max_length

_ACTIVATIONS = {
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),  # OpenAI's GELU approximation
    "gelu": F.gelu,  # exact, erf-based (OpenCLIP)
}
LEGACY_EOS_ID = 2  # old CLIP config.json files (SD 1.x) say eos_token_id 2: pool at argmax(ids), as transformers
SINGLE_FILE_PREFIX = "cond_stage_model.transformer."  # SD 1.x single-file checkpoints
MODEL_FILE = "model.safetensors"


@dataclass(frozen=True)
class ClipTextConfig:
    """The fields of a transformers ``CLIPTextConfig`` (same names) that the text tower needs."""

    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    bos_token_id: int = 49406
    eos_token_id: int = 49407
    pad_token_id: int = 1

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by "
                             f"num_attention_heads={self.num_attention_heads}")
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"hidden_act={self.hidden_act!r} is not supported by the CLIP text encoder; "
                             f"use one of {sorted(_ACTIVATIONS)}")

    @classmethod
    def from_transformers(cls, config: dict) -> ClipTextConfig:
        """From a transformers ``config.json`` dict (a ``CLIPTextConfig``, or a ``CLIPConfig``'s
        ``text_config``); other keys are ignored."""
        config = config.get("text_config", config)
        return cls(**{f.name: config[f.name] for f in fields(cls) if f.name in config})

    def to_transformers(self) -> dict:
        """A ``config.json`` dict that ``transformers.CLIPTextModel.from_pretrained`` reads."""
        return {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model", **asdict(self),
                "attention_dropout": 0.0, "initializer_factor": 1.0, "initializer_range": 0.02}


def sd1_config() -> ClipTextConfig:
    """OpenAI CLIP ViT-L/14's text tower (Stable Diffusion 1.x)."""
    return ClipTextConfig(eos_token_id=LEGACY_EOS_ID)


def sd2_config() -> ClipTextConfig:
    """OpenCLIP ViT-H/14's text tower without its last layer, as diffusers stores SD 2.x."""
    return ClipTextConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                          hidden_act="gelu", eos_token_id=LEGACY_EOS_ID)


def check_skip(skip: int, layers: int) -> int:
    """``layers`` if ``skip`` names one of them (1 = the last), else a ValueError saying what to set."""
    if not isinstance(skip, int) or isinstance(skip, bool) or not 1 <= skip <= layers:
        raise ValueError(f"skip={skip!r} is out of range for a CLIP text encoder of {layers} layers: choose 1 "
                         f"(the last layer), 2 (the penultimate, A1111's 'Clip skip 2') ... up to {layers}")
    return layers


class ClipLayer(nn.Module):
    """One pre-norm Transformer layer with causal self-attention."""

    def __init__(self, config: ClipTextConfig):
        super().__init__()
        dim, eps = config.hidden_size, config.layer_norm_eps
        self.num_heads = config.num_attention_heads
        self.attn_norm = nn.LayerNorm(dim, eps=eps)
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.attn_out = nn.Linear(dim, dim)
        self.ff_norm = nn.LayerNorm(dim, eps=eps)
        self.ff_in = nn.Linear(dim, config.intermediate_size)
        self.ff_out = nn.Linear(config.intermediate_size, dim)
        self.activation = _ACTIVATIONS[config.hidden_act]

    def forward(self, h: Tensor) -> Tensor:
        n, length, dim = h.shape
        x = self.attn_norm(h)
        q, k, v = (p(x).reshape(n, length, self.num_heads, -1).transpose(1, 2)  # (N, heads, L, d)
                   for p in (self.query, self.key, self.value))
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (N, heads, L, d)
        h = h + self.attn_out(attn.transpose(1, 2).reshape(n, length, dim))  # (N, L, D)
        return h + self.ff_out(self.activation(self.ff_in(self.ff_norm(h))))  # (N, L, D)


class ClipTextTransformer(nn.Module):
    """Token ids (N, L) → token states (N, L, hidden_size) after the final LayerNorm."""

    def __init__(self, config: ClipTextConfig):
        super().__init__()
        self.config = config
        dim = config.hidden_size
        # "word_embeddings", as BERT's: textual inversion (text/inversion.py) extends this table.
        self.word_embeddings = nn.Embedding(config.vocab_size, dim)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, dim)
        self.layers = nn.ModuleList(ClipLayer(config) for _ in range(config.num_hidden_layers))
        self.final_norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)

    def forward(self, input_ids: Tensor, skip: int = 1) -> Tensor:
        """The final LayerNorm of the output of layer K − (skip − 1) (see the module docstring)."""
        layers = check_skip(skip, self.config.num_hidden_layers)
        length = input_ids.shape[1]
        if length > self.config.max_position_embeddings:
            raise ValueError(f"{length} tokens are more than the CLIP text encoder's "
                             f"{self.config.max_position_embeddings} positions; tokenize with a smaller max_length")
        positions = torch.arange(length, device=input_ids.device)
        h = self.word_embeddings(input_ids) + self.position_embeddings(positions)  # (N, L, D)
        for layer in self.layers[: layers - (skip - 1)]:
            h = layer(h)
        return self.final_norm(h)

    def pool(self, states: Tensor, input_ids: Tensor) -> Tensor:
        """The states (N, L, D) at each text's end token, (N, D): CLIP's sentence feature.

        As transformers: the first ``eos_token_id``, or, for configs with the legacy id 2,
        ``argmax(ids)`` (the end token has the largest id of the base vocabulary).
        """
        ids = input_ids.to(torch.int)
        legacy = self.config.eos_token_id == LEGACY_EOS_ID
        end = ids.argmax(-1) if legacy else (ids == self.config.eos_token_id).int().argmax(-1)  # (N,)
        return states[torch.arange(len(states), device=states.device), end.to(states.device)]

    def pooled(self, input_ids: Tensor) -> Tensor:
        """The pooled output (N, D) of the last layer (transformers' ``pooler_output``)."""
        return self.pool(self(input_ids), input_ids)

    # ------------------------------------------------------------------ weights

    @classmethod
    def from_diffusers(cls, folder: str | Path, variant: str | None = None) -> ClipTextTransformer:
        """Build from ``folder/config.json`` and load ``folder/model.safetensors`` (a diffusers
        ``text_encoder/`` folder, or any ``CLIPTextModel.save_pretrained`` folder).

        Args:
            variant: read ``model.<variant>.safetensors`` (e.g. ``"fp16"``).

        Raises:
            FileNotFoundError: no config.json or no safetensors file (a pickled ``.bin`` is
                refused; the message says how to convert it).
            ValueError: the weights do not fit the config (the first offending keys named).
        """
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder} has no config.json; pass a diffusers text_encoder/ folder")
        config = ClipTextConfig.from_transformers(json.loads((folder / "config.json").read_text(encoding="utf-8")))
        return cls.from_state_dict(_read_safetensors(folder, variant), config, source=str(folder))

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor], config: ClipTextConfig | None = None,
                        source: str = "the state dict") -> ClipTextTransformer:
        """Load transformers-named weights: a ``CLIPTextModel`` state dict, or a whole SD 1.x
        single-file checkpoint, whose ``cond_stage_model.transformer.*`` keys are used.

        Args:
            config: the architecture; default :func:`sd1_config` (ViT-L/14).
            source: the file named in error messages.

        Raises:
            ValueError: a missing, unexpected or misshapen tensor (the first few named).
        """
        if any(k.startswith(SINGLE_FILE_PREFIX) for k in state):
            prefix = SINGLE_FILE_PREFIX
            state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        model = cls(config or sd1_config())
        ours = {}
        for key, value in state.items():
            name = ours_from_transformers(key)
            if name is not None:
                ours[name] = value
        expected = model.state_dict()
        missing = [to_transformers_key(k) for k in expected if k not in ours]
        unexpected = [k for k in state if ours_from_transformers(k) not in expected and not k.endswith("position_ids")]
        wrong = [f"{to_transformers_key(k)} {tuple(v.shape)} (expected {tuple(expected[k].shape)})"
                 for k, v in ours.items() if k in expected and v.shape != expected[k].shape]
        if missing or unexpected or wrong:
            problems = [f"{what} {keys[:3]}" for what, keys in
                        (("missing", missing), ("unexpected", unexpected), ("misshapen", wrong)) if keys]
            raise ValueError(f"{source} does not fit the CLIP text encoder of {model.config.num_hidden_layers} layers "
                             f"and width {model.config.hidden_size}: {'; '.join(problems)}; "
                             f"is it a CLIPTextModel of this config?")
        model.load_state_dict({k: v.to(expected[k].dtype) for k, v in ours.items()})
        return model

    def to_transformers_state_dict(self) -> dict[str, Tensor]:
        """The weights under transformers' ``CLIPTextModel`` names (``text_model.…``)."""
        return {to_transformers_key(k): v.detach().contiguous() for k, v in self.state_dict().items()}

    def save_diffusers(self, folder: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors``: a diffusers ``text_encoder/`` folder that
        ``transformers.CLIPTextModel.from_pretrained`` and :meth:`from_diffusers` load."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(self.config.to_transformers(), indent=2), encoding="utf-8")
        save_file({k: v.cpu() for k, v in self.to_transformers_state_dict().items()}, str(folder / MODEL_FILE),
                  metadata={"format": "pt"})
        return folder


TRANSFORMERS_NAMES = {  # ours → transformers' CLIPTextModel (under "text_model."; "{i}" is the layer)
    "word_embeddings": "embeddings.token_embedding",
    "position_embeddings": "embeddings.position_embedding",
    "layers.{i}.attn_norm": "encoder.layers.{i}.layer_norm1",
    "layers.{i}.query": "encoder.layers.{i}.self_attn.q_proj",
    "layers.{i}.key": "encoder.layers.{i}.self_attn.k_proj",
    "layers.{i}.value": "encoder.layers.{i}.self_attn.v_proj",
    "layers.{i}.attn_out": "encoder.layers.{i}.self_attn.out_proj",
    "layers.{i}.ff_norm": "encoder.layers.{i}.layer_norm2",
    "layers.{i}.ff_in": "encoder.layers.{i}.mlp.fc1",
    "layers.{i}.ff_out": "encoder.layers.{i}.mlp.fc2",
    "final_norm": "final_layer_norm",
}
_FROM_TRANSFORMERS = {theirs: ours for ours, theirs in TRANSFORMERS_NAMES.items()}


def _split_layer(module: str, prefix: str) -> tuple[str, str]:
    # "encoder.layers.3.mlp.fc1" → ("encoder.layers.{i}.mlp.fc1", "3")
    if module.startswith(prefix):
        index, _, rest = module.removeprefix(prefix).partition(".")
        if index.isdigit():
            return f"{prefix}{{i}}.{rest}", index
    return module, ""


def to_transformers_key(key: str) -> str:
    """transformers' name of our parameter: ``layers.3.query.weight`` →
    ``text_model.encoder.layers.3.self_attn.q_proj.weight``."""
    module, _, param = key.rpartition(".")
    pattern, index = _split_layer(module, "layers.")
    return f"text_model.{TRANSFORMERS_NAMES[pattern].format(i=index)}.{param}"


def ours_from_transformers(key: str) -> str | None:
    """Our name of a transformers ``CLIPTextModel`` key (with or without ``text_model.``, the
    prefix transformers 5 drops); None for a key that is not ours."""
    module, _, param = key.removeprefix("text_model.").rpartition(".")
    pattern, index = _split_layer(module, "encoder.layers.")
    ours = _FROM_TRANSFORMERS.get(pattern)
    return None if ours is None else f"{ours.format(i=index)}.{param}"


def _read_safetensors(folder: Path, variant: str | None) -> dict[str, Tensor]:
    name = MODEL_FILE if variant is None else f"model.{variant}.safetensors"
    weights = read_safetensors_folder(folder, name, "transformers' CLIPTextModel.from_pretrained(folder)"
                                      ".save_pretrained(folder) (safetensors by default)")
    if weights is None:
        raise FileNotFoundError(f"{folder} has no {name}; pass a diffusers text_encoder/ folder")
    return weights


# ---------------------------------------------------------------------- the TextEncoder


class ClipTextEncoder(nn.Module):
    """Frozen CLIP text tower and tokenizer: prompts → token states (N, L, dim), as Stable Diffusion uses them.

    Build it with :meth:`load` (a diffusers model folder) or :meth:`from_config`. Parameters never
    require gradients and :meth:`encode` runs under ``torch.no_grad()``.

    Args:
        encoder: the text tower.
        tokenizer: its BPE tokenizer.
        max_length: default token length L of :meth:`encode` (start and end tokens included).
        skip: which layer's states to use: 1 the last, 2 the penultimate (A1111's "Clip skip").
        folder: the model folder, recorded in :meth:`to_config`.
        pad: the open_clip padding convention used when the folder had no tokenizer, else None.
    """

    name = "clip"

    def __init__(self, encoder: ClipTextTransformer, tokenizer: ClipTokenizer, max_length: int = 77,
                 skip: int = 1, folder: str | Path | None = None, pad: str | None = None):
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.dim = encoder.config.hidden_size
        self.max_length = self._check_length(max_length)
        check_skip(skip, encoder.config.num_hidden_layers)
        self.skip, self.folder, self.pad = skip, folder, pad
        self.prompt_weights = False  # encode() reads (word:1.3) / (word) / [word] weights: encode_weighted
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def load(cls, folder: str | Path, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
             max_length: int = 77, skip: int = 1, pad: str = "end", variant: str | None = None,
             prompt_weights: bool = False) -> ClipTextEncoder:
        """Load ``folder/text_encoder`` and ``folder/tokenizer`` (a diffusers Stable Diffusion folder).

        Args:
            folder: relative paths are taken from the current directory.
            device, dtype: where and in which precision the weights live.
            max_length: default token length L; at most the model's positions (77).
            skip: see the class.
            pad: used only if ``folder/tokenizer`` has no ``vocab.json``: then the tokenizer is
                OpenAI's vocabulary from the open-clip-torch wheel, padded with the end token
                (``"end"``, SD 1.x) or ``!`` (``"zero"``, SD 2.x).
            variant: read ``model.<variant>.safetensors``.
            prompt_weights: :meth:`encode` reads A1111's prompt weights (:meth:`encode_weighted`).
        """
        folder = Path(folder)
        encoder = ClipTextTransformer.from_diffusers(folder / "text_encoder", variant).to(device=device, dtype=dtype)
        if (folder / "tokenizer" / "vocab.json").is_file():
            tokenizer, pad = ClipTokenizer.from_folder(folder / "tokenizer"), None
        else:
            tokenizer = ClipTokenizer.from_open_clip(pad)
        if len(tokenizer) != encoder.config.vocab_size:
            raise ValueError(f"the tokenizer of {folder} has {len(tokenizer)} tokens but its text encoder "
                             f"{encoder.config.vocab_size}: the two do not belong together")
        encoder = cls(encoder, tokenizer, max_length, skip, folder, pad)
        encoder.prompt_weights = bool(prompt_weights)
        return encoder

    @classmethod
    def from_config(cls, config: dict, device: torch.device | str | None = None) -> ClipTextEncoder:
        """Build from ``{"name": "clip", "folder": ..., "max_length": 77, "skip": 1}`` (see :meth:`to_config`)."""
        options = {k: v for k, v in config.items() if k != "name"}
        allowed = {"folder", "max_length", "skip", "pad", "variant", "prompt_weights"}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise ValueError(f"unknown clip text encoder option(s) {unknown}; the options are {sorted(allowed)}")
        if "folder" not in options:
            raise ValueError("the clip text encoder needs 'folder': a diffusers model folder with text_encoder/ "
                             "and tokenizer/")
        if options.get("pad", "end") not in PAD_CONVENTIONS:
            raise ValueError(f"pad={options['pad']!r} is unknown; use 'end' (SD 1.x) or 'zero' (SD 2.x)")
        return cls.load(device=device, **options)

    def to_config(self) -> dict:
        """The dictionary that rebuilds this encoder (the weights stay in ``folder``)."""
        config = {"name": self.name, "folder": str(self.folder), "max_length": self.max_length, "skip": self.skip}
        if self.prompt_weights:
            config["prompt_weights"] = True
        return config if self.pad is None else config | {"pad": self.pad}

    def _check_length(self, max_length: int) -> int:
        return check_max_length(max_length, self.encoder.config.max_position_embeddings, 2,
                                "the CLIP text encoder (start and end tokens included)")

    @torch.no_grad()
    def encode(self, texts: Sequence[str], max_length: int | None = None, padding: str = "max_length") -> TextEncoding:
        """Token states of ``texts``, Stable Diffusion's way: padding is neither zeroed nor masked.

        SD's U-Net was trained cross-attending to all 77 states, the padded positions included
        (no attention mask), and those states are real values: with the causal mask, a pad token
        at position i has seen the whole text. They carry meaning the model relies on, so the
        mask returned is all True and the states are left as computed, unlike MiniLM's encoder
        (see :mod:`.encoding`). The real tokens' mask is ``self.tokenizer(texts)[1]``.

        Args:
            texts: prompts; ``""`` (the null context) is ``<|startoftext|> <|endoftext|>`` + padding.
            max_length: token length L (default ``self.max_length``); longer texts are truncated.
            padding: ``"max_length"`` (L = max_length, SD's way) or ``"longest"``.

        Returns:
            states (N, L, dim) in the weights' dtype and an all-True mask (N, L), on the weights' device.
        """
        if self.prompt_weights:
            return self.encode_weighted(texts, max_length, padding)
        max_length = self.max_length if max_length is None else self._check_length(max_length)
        input_ids, _ = self.tokenizer(texts, max_length, padding)
        input_ids = input_ids.to(self.encoder.final_norm.weight.device)
        states = self.encoder(input_ids, self.skip)  # (N, L, dim)
        return TextEncoding(states, torch.ones(states.shape[:2], dtype=torch.bool, device=states.device))

    @torch.no_grad()
    def encode_weighted(self, texts: Sequence[str], max_length: int | None = None,
                        padding: str = "max_length") -> TextEncoding:
        """:meth:`encode` with prompt weights (``(word:1.3)``, ``(word)``, ``[word]``; see :mod:`.bpe`).

        As AUTOMATIC1111's "original" emphasis: each token's state is multiplied by its weight,
        then the prompt's states are rescaled so that their mean is the unweighted one. (A1111
        takes that mean over the whole batch; here it is per prompt, so a prompt's encoding does
        not depend on its batch.) The brackets are not tokenized; a prompt without them encodes
        as :meth:`encode` does.
        """
        max_length = self.max_length if max_length is None else self._check_length(max_length)
        input_ids, _, weights = self.tokenizer.weighted(texts, max_length, padding)
        device = self.encoder.final_norm.weight.device
        states = self.encoder(input_ids.to(device), self.skip)  # (N, L, dim)
        weighted = states * weights.to(device=device, dtype=states.dtype)[..., None]
        before, after = states.mean(dim=(1, 2), keepdim=True), weighted.mean(dim=(1, 2), keepdim=True)
        # a mean of zero (final LayerNorm states without bias, e.g. random weights) has nothing to restore
        weighted = weighted * torch.where(after.abs() > 1e-6, before / after.where(after.abs() > 1e-6, 1.0), 1.0)
        return TextEncoding(weighted, torch.ones(states.shape[:2], dtype=torch.bool, device=device))
