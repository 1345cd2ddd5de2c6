"""Textual inversion (Gal et al. 2022, "An Image is Worth One Word"): new words whose embedding
vectors are learned, in a frozen text encoder.

A new word (e.g. ``sks``) stands for ``k`` new token ids appended after the
vocabulary (``k = num_vectors``); each id's embedding row is one learned vector. The encoder's
embedding table becomes an :class:`ExtendedEmbedding`: ids below the vocabulary size read the
original table, untouched (not even a parameter of the training), the new ids read the new rows.
Both tokenizers learn the word: WordPiece (MiniLM) matches it as a whole word before splitting
into pieces, the small encoder's word tokenizer looks it up before its vocabulary.

An embedding file is a ``.safetensors`` with one tensor per word, ``{word: (k, dim)}`` (diffusers'
textual-inversion layout keyed by the token), and difflab's metadata (the encoder's name and width).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

METADATA_KEY = "difflab_embedding"


@dataclass
class TokenEmbedding:
    """A learned word: ``word`` and its vectors (k, dim)."""

    word: str
    vectors: Tensor

    def __post_init__(self):
        if not self.word.isalnum() or self.word != self.word.lower():
            raise ValueError(f"a new word must be one lowercase word of letters and digits, got {self.word!r}")
        if self.vectors.ndim != 2 or len(self.vectors) < 1:
            raise ValueError(f"the vectors of {self.word!r} must be (num_vectors, dim), "
                             f"got {tuple(self.vectors.shape)}")


class ExtendedEmbedding(nn.Module):
    """An embedding table with rows appended: ``extra`` (a tensor, or a parameter being trained)."""

    def __init__(self, base: nn.Embedding | ExtendedEmbedding, extra: Tensor):
        super().__init__()
        self.base = base
        self.extra = extra if isinstance(extra, nn.Parameter) else nn.Parameter(extra, requires_grad=False)

    @property
    def weight(self) -> Tensor:
        return torch.cat([self.base.weight, self.extra.to(self.base.weight.dtype)])

    @property
    def num_embeddings(self) -> int:
        return self.base.num_embeddings + len(self.extra)

    def forward(self, ids: Tensor) -> Tensor:
        """Rows looked up in their own table: no copy of the whole vocabulary per call, and a
        gradient only as large as the new rows (the same values as ``F.embedding(ids, self.weight)``)."""
        first = self.base.num_embeddings
        new = ids >= first
        old_rows = self.base(ids.clamp(max=first - 1))
        new_rows = F.embedding((ids - first).clamp(min=0), self.extra.to(old_rows.dtype))
        return torch.where(new[..., None], new_rows, old_rows)


def vocabulary_size(tokenizer) -> int:
    return len(tokenizer.vocab)


def add_word(tokenizer, embedding_owner: nn.Module, attribute: str, token: TokenEmbedding) -> list[int]:
    """Teach ``tokenizer`` the new word and append its vectors to ``embedding_owner.<attribute>``
    (the encoder's embedding table); returns the word's new ids.

    Raises:
        ValueError: the word is already in the vocabulary (or added), or its vectors' width is
            not the encoder's.
    """
    table = getattr(embedding_owner, attribute)
    dim = table.weight.shape[1]
    if token.vectors.shape[1] != dim:
        raise ValueError(f"the embedding of {token.word!r} has vectors of width {token.vectors.shape[1]}, this text "
                         f"encoder's are {dim} wide: it was made for another encoder")
    if table.num_embeddings != vocabulary_size(tokenizer):
        raise ValueError("the tokenizer and the embedding table disagree on the vocabulary size")
    ids = teach_tokenizer(tokenizer, token.word, len(token.vectors))
    extra = token.vectors.to(device=table.weight.device)
    setattr(embedding_owner, attribute, ExtendedEmbedding(table, extra))
    return ids


def teach_tokenizer(tokenizer, word: str, num_vectors: int) -> list[int]:
    """Give ``tokenizer`` the new ``word`` as ``num_vectors`` new ids after its vocabulary.

    Raises:
        ValueError: the word is already in the vocabulary (or was added before).
    """
    if word in tokenizer.ids or word in getattr(tokenizer, "added", {}):
        raise ValueError(f"{word!r} is already in the text encoder's vocabulary: choose a new word (a rare one such "
                         "as 'sks')")
    first = vocabulary_size(tokenizer)
    names = [word] + [f"{word}#{i}" for i in range(1, num_vectors)]
    for name in names:
        tokenizer.ids[name] = len(tokenizer.vocab)
        tokenizer.vocab.append(name)
    if not hasattr(tokenizer, "added"):
        tokenizer.added = {}
    tokenizer.added[word] = names
    return list(range(first, first + len(names)))


def encoder_parts(encoder) -> tuple[object, nn.Module, str]:
    """(tokenizer, the module holding the embedding table, its attribute) of a text encoder:
    MiniLM's BERT word embeddings or the small encoder's token embeddings."""
    if hasattr(encoder, "token_embedding"):  # SmallTextEncoder
        return encoder.tokenizer, encoder, "token_embedding"
    return encoder.tokenizer, encoder.encoder, "word_embeddings"  # MiniLMTextEncoder


def initial_vectors(encoder, initializer: str, num_vectors: int) -> Tensor:
    """``num_vectors`` copies of the mean embedding of ``initializer``'s tokens (its word pieces)."""
    tokenizer, owner, attribute = encoder_parts(encoder)
    ids, mask = tokenizer([initializer], max_length=16, padding="longest")
    special = {tokenizer.pad_id, tokenizer.unk_id, tokenizer.cls_id, getattr(tokenizer, "sep_id", -1)}
    real = [i for i, m in zip(ids[0].tolist(), mask[0].tolist()) if m and i not in special]
    if not real:
        raise ValueError(f"the initializer word {initializer!r} is not in the text encoder's vocabulary: choose a "
                         "known word close to the subject (e.g. 'boot')")
    table = getattr(owner, attribute).weight.detach()
    return table[real].mean(0, keepdim=True).repeat(num_vectors, 1).clone()


def save_embeddings(path: str | Path, tokens: list[TokenEmbedding], encoder: dict | None = None,
                    base: dict | None = None) -> Path:
    """Write ``{word: vectors}`` with difflab's metadata (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {METADATA_KEY: json.dumps({"encoder": encoder, "base": base})}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file({t.word: t.vectors.detach().cpu().contiguous() for t in tokens}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_embeddings(path: str | Path) -> list[TokenEmbedding]:
    """The words of an embedding file (``{word: (k, dim)}``; a 1-D tensor is one vector).

    Raises:
        ValueError: not a readable safetensors file, or one without a word.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embedding file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as err:  # safetensors raises its own error types for a damaged or foreign file
        raise ValueError(f"{path} is not a readable .safetensors embedding file ({err})") from None
    if not tensors:
        raise ValueError(f"{path} holds no word")
    words = []
    for key, value in tensors.items():
        word = re.sub(r"[^0-9a-z]", "", key.lower())  # diffusers' "<cat-toy>" is the word "cattoy"
        words.append(TokenEmbedding(word, value[None] if value.ndim == 1 else value))
    return words


@dataclass
class LearnedWordSpec:
    """A word being learned, as a registered model (``{"name": "textual_inversion", ...}``)."""

    word: str
    num_vectors: int = 1
    dim: int = 384


class LearnedWord(nn.Module):
    """The vectors of one word being learned (num_vectors, dim): what textual inversion trains.
    Calling it runs the model function it is bound to (:meth:`bind`) with the vectors in place."""

    def __init__(self, spec: LearnedWordSpec):
        super().__init__()
        TokenEmbedding(spec.word, torch.zeros(spec.num_vectors, spec.dim))  # checks the word
        self.config = spec
        self.vectors = nn.Parameter(torch.zeros(spec.num_vectors, spec.dim))
        self._forward = []

    def bind(self, forward) -> None:
        self._forward = [forward]

    def forward(self, *args, **kwargs):
        if not self._forward:
            raise RuntimeError("bind the learned word to a model function first")
        return self._forward[0](*args, **kwargs)

    def num_parameters(self) -> int:
        return self.vectors.numel()

    def summary(self) -> str:
        cfg = self.config
        return f"textual inversion: the word {cfg.word!r}, {cfg.num_vectors} x {cfg.dim} vectors"
