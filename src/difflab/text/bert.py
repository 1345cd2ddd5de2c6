"""A BERT encoder for inference, loading Hugging Face ``BertModel`` safetensors weights.

BERT (Devlin et al. 2019, §3) with the original Transformer's post-norm layers (Vaswani et al.
2017, §3.1)::

    h₀ = LayerNorm(E_word[ids] + E_position[0…L−1] + E_token_type[0])
    a  = LayerNorm(h + W_o · Attention(W_q h, W_k h, W_v h))      (padded keys masked)
    h' = LayerNorm(a + W₂ · GELU(W₁ a))

The outputs are the last layer's token states (``last_hidden_state``); the pooler (a tanh layer on
``[CLS]``) is not used. There is no dropout: the encoder is only ever run frozen. Parameter names
are our own; :func:`rename_hf_key` maps the Hugging Face names onto them, and loading is strict,
so a file that does not fit fails with the names that differ.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from ..nn.attention import multi_head_attention

_ACTIVATIONS = {
    "gelu": F.gelu,  # exact, erf-based
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


@dataclass(frozen=True)
class BertConfig:
    """The fields of a Hugging Face BERT ``config.json`` that the encoder needs (same names)."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by "
                             f"num_attention_heads={self.num_attention_heads}")
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"hidden_act={self.hidden_act!r} is not supported; use one of {sorted(_ACTIVATIONS)}")

    @classmethod
    def from_json(cls, path: str | Path) -> BertConfig:
        """Read a ``config.json``, ignoring its other keys; a non-BERT model is refused."""
        config = json.loads(Path(path).read_text(encoding="utf-8"))
        kind = config.get("model_type", "bert"), config.get("position_embedding_type", "absolute")
        if kind != ("bert", "absolute"):
            raise ValueError(f"{path} describes a {kind[0]!r} model with {kind[1]!r} positions; "
                             f"only BERT with absolute position embeddings is supported")
        return cls(**{f.name: config[f.name] for f in fields(cls) if f.name in config})


class BertLayer(nn.Module):
    """One post-norm Transformer encoder layer."""

    def __init__(self, config: BertConfig):
        super().__init__()
        dim, eps = config.hidden_size, config.layer_norm_eps
        self.num_heads = config.num_attention_heads
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.attn_out = nn.Linear(dim, dim)
        self.attn_norm = nn.LayerNorm(dim, eps=eps)
        self.ff_in = nn.Linear(dim, config.intermediate_size)
        self.ff_out = nn.Linear(config.intermediate_size, dim)
        self.ff_norm = nn.LayerNorm(dim, eps=eps)
        self.activation = _ACTIVATIONS[config.hidden_act]

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        attn = multi_head_attention(self.query(h), self.key(h), self.value(h), self.num_heads, mask)
        h = self.attn_norm(h + self.attn_out(attn))  # (N, L, C)
        return self.ff_norm(h + self.ff_out(self.activation(self.ff_in(h))))  # (N, L, C)


class BertEncoder(nn.Module):
    """Token ids (N, L) and their mask → last-layer token states (N, L, hidden_size)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        dim = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, dim, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, dim)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, dim)
        self.embed_norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, input_ids: Tensor, mask: Tensor) -> Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        # One segment: every token has token type 0.
        h = self.word_embeddings(input_ids) + self.position_embeddings(positions) + self.token_type_embeddings.weight[0]
        h = self.embed_norm(h)  # (N, L, C)
        for layer in self.layers:
            h = layer(h, mask)
        return h

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> BertEncoder:
        """Build from ``folder/config.json`` and load ``folder/model.safetensors`` (no pickle)."""
        folder = Path(folder)
        model = cls(BertConfig.from_json(folder / "config.json"))
        hf_state = load_file(str(folder / "model.safetensors"))
        state = {rename_hf_key(k): v for k, v in hf_state.items()}
        state = {k: v for k, v in state.items() if k is not None}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{folder / 'model.safetensors'} does not fit the BERT encoder of its config.json: "
                             f"missing {missing[:5]}, unexpected {unexpected[:5]}; is it a BertModel checkpoint?")
        return model


_EMBEDDING_NAMES = {
    "embeddings.word_embeddings": "word_embeddings",
    "embeddings.position_embeddings": "position_embeddings",
    "embeddings.token_type_embeddings": "token_type_embeddings",
    "embeddings.LayerNorm": "embed_norm",
}
_LAYER_NAMES = {
    "attention.self.query": "query",
    "attention.self.key": "key",
    "attention.self.value": "value",
    "attention.output.dense": "attn_out",
    "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "ff_in",
    "output.dense": "ff_out",
    "output.LayerNorm": "ff_norm",
}


def rename_hf_key(key: str) -> str | None:
    """Our parameter name for a Hugging Face ``BertModel`` key; None for tensors we do not use.

    ``encoder.layer.3.attention.self.query.weight`` → ``layers.3.query.weight``; the pooler and
    the ``position_ids`` buffer are dropped. A ``bert.`` prefix (pre-training checkpoints) is
    accepted; old TensorFlow-style ``gamma`` / ``beta`` LayerNorm names are mapped.
    """
    key = key.removeprefix("bert.")
    module, _, param = key.rpartition(".")
    param = {"gamma": "weight", "beta": "bias"}.get(param, param)
    if module in _EMBEDDING_NAMES:
        return f"{_EMBEDDING_NAMES[module]}.{param}"
    if module.startswith("encoder.layer."):
        index, _, rest = module.removeprefix("encoder.layer.").partition(".")
        if rest in _LAYER_NAMES:
            return f"layers.{index}.{_LAYER_NAMES[rest]}.{param}"
    if module.startswith("pooler") or key == "embeddings.position_ids":
        return None
    return key  # unknown: reported as unexpected by the strict check
