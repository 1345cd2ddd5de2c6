"""A small trainable text encoder, for captioned data sets without the MiniLM package.

Words are the tokens: a caption is lowercased and split on everything that is not a letter or a
digit, and the vocabulary is built from the training captions (most frequent first). It is a
plain JSON list, stored in the encoder's config and so in a checkpoint's ``config.json``::

    ["[PAD]", "[UNK]", "[CLS]", "a", "shirt", ...]      # id = position; [PAD] = 0

Every text starts with ``[CLS]``, so even the empty caption (classifier-free guidance's null
context) has one real token and attention over it is never empty.

The network is a pre-norm Transformer encoder (Vaswani et al. 2017 with the pre-LN placement of
Xiong et al. 2020, as in GPT-2 and ViT), trained jointly with the diffusion model as GLIDE's
text transformer is (Nichol et al. 2022, §2.3)::

    h₀ = E_token[ids] + E_position[0…L−1]
    h  = h + W_o · Attention(LN(h))        (padded keys masked)
    h  = h + W₂ · GELU(W₁ · LN(h))
    states = LN(h)
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.attention import multi_head_attention
from .encoding import TextEncoding, check_max_length, pad_token_ids

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]")
_WORD = re.compile(r"[^\W_]+")  # runs of letters and digits (any script)


def split_words(text: str) -> list[str]:
    """Lowercase ``text`` and split it on every character that is not a letter or a digit."""
    return _WORD.findall(text.lower())


class WordTokenizer:
    """Word-level tokenizer over a fixed vocabulary; unknown words become ``[UNK]``.

    Args:
        vocab: ``["[PAD]", "[UNK]", "[CLS]", word, ...]``; a word's id is its position.
    """

    def __init__(self, vocab: Sequence[str]):
        vocab = list(vocab)
        if tuple(vocab[:3]) != SPECIAL_TOKENS:
            raise ValueError(f"a word vocabulary must start with {list(SPECIAL_TOKENS)}, got {vocab[:3]}; "
                             f"build one with WordTokenizer.build(captions)")
        if len(set(vocab)) != len(vocab):
            repeated = sorted(w for w, c in Counter(vocab).items() if c > 1)
            raise ValueError(f"the word vocabulary repeats {repeated[:5]}; each word must appear once")
        self.vocab = vocab
        self.ids = {word: i for i, word in enumerate(vocab)}
        self.pad_id, self.unk_id, self.cls_id = 0, 1, 2

    def __len__(self) -> int:
        return len(self.vocab)

    @classmethod
    def build(cls, captions: Iterable[str], max_size: int | None = None, min_count: int = 1) -> WordTokenizer:
        """A vocabulary of the words of ``captions``: most frequent first, ties alphabetical.

        Args:
            max_size: at most this many entries, special tokens included.
            min_count: words seen fewer times are left out (they will be ``[UNK]``).
        """
        counts = Counter(word for caption in captions for word in split_words(caption))
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[: max(max_size - len(SPECIAL_TOKENS), 0)]
        return cls([*SPECIAL_TOKENS, *words])

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as a JSON list."""
        Path(path).write_text(json.dumps(self.vocab, ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> WordTokenizer:
        """Read a vocabulary written by :meth:`save`."""
        vocab = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(vocab, list) or not all(isinstance(w, str) for w in vocab):
            raise ValueError(f"{path} is not a word vocabulary: expected a JSON list of strings")
        return cls(vocab)

    def __call__(self, texts: Sequence[str], max_length: int, padding: str = "max_length") -> tuple[Tensor, Tensor]:
        """Token ids ``[CLS] words… [PAD]…`` (truncated to ``max_length``) and the mask, both (N, L)."""
        if isinstance(texts, str):
            raise TypeError("pass a list of texts, e.g. tokenizer([caption], max_length=77)")
        check_max_length(max_length, limit=10**9, minimum=1, what="a word tokenizer ([CLS] included)")
        added = getattr(self, "added", {})  # learned words (text/inversion.py): each its own ids
        sequences = [[self.cls_id, *(i for w in split_words(text)
                                     for i in ([self.ids[t] for t in added[w]] if w in added
                                               else [self.ids.get(w, self.unk_id)]))][:max_length]
                     for text in texts]
        return pad_token_ids(sequences, self.pad_id, max_length, padding)


@dataclass
class SmallTextEncoderConfig:
    """Architecture of :class:`SmallTextEncoder`; the vocabulary is part of it.

    Attributes:
        vocab: the word vocabulary (see :class:`WordTokenizer`).
        dim: token width D (the states' last dimension).
        layers: Transformer layers.
        heads: attention heads; must divide ``dim``.
        max_length: number of position embeddings, the longest token length L.
    """

    vocab: list[str]
    dim: int = 256
    layers: int = 4
    heads: int = 4
    max_length: int = 77

    def __post_init__(self):
        if self.dim < 1 or self.heads < 1 or self.dim % self.heads:
            raise ValueError(f"small text encoder: heads={self.heads} must divide dim={self.dim}")
        if self.layers < 0:
            raise ValueError(f"small text encoder: layers={self.layers} must be >= 0")
        check_max_length(self.max_length, limit=10**6, minimum=1, what="the small text encoder")


class _Block(nn.Module):
    """One pre-norm Transformer layer: masked self-attention, then a 4×-wide GELU MLP."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.attn_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_out = nn.Linear(dim, dim)
        self.ff_norm = nn.LayerNorm(dim)
        self.ff_in = nn.Linear(dim, 4 * dim)
        self.ff_out = nn.Linear(4 * dim, dim)

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        q, k, v = self.qkv(self.attn_norm(h)).chunk(3, dim=-1)  # 3 × (N, L, D)
        h = h + self.attn_out(multi_head_attention(q, k, v, self.heads, mask))
        return h + self.ff_out(F.gelu(self.ff_in(self.ff_norm(h))))  # (N, L, D)


class SmallTextEncoder(nn.Module):
    """Trainable word-level Transformer: captions → token states (N, L, dim) and their mask."""

    name = "small"

    def __init__(self, config: SmallTextEncoderConfig):
        super().__init__()
        self.config = config
        self.tokenizer = WordTokenizer(config.vocab)
        self.dim, self.max_length = config.dim, config.max_length
        self.token_embedding = nn.Embedding(len(self.tokenizer), config.dim)
        self.position_embedding = nn.Parameter(torch.zeros(config.max_length, config.dim))
        self.blocks = nn.ModuleList(_Block(config.dim, config.heads) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.dim)
        self._init_weights()

    def _init_weights(self) -> None:
        # GPT-2 / BERT initialisation: N(0, 0.02²) weights and embeddings, zero biases.
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.position_embedding, std=0.02)

    @classmethod
    def from_captions(cls, captions: Iterable[str], max_size: int | None = None, min_count: int = 1,
                      **options) -> SmallTextEncoder:
        """An encoder whose vocabulary is built from ``captions`` (see :meth:`WordTokenizer.build`)."""
        vocab = WordTokenizer.build(captions, max_size=max_size, min_count=min_count).vocab
        return cls(SmallTextEncoderConfig(vocab=vocab, **options))

    @classmethod
    def from_config(cls, config: dict, device: torch.device | str | None = None) -> SmallTextEncoder:
        """Build (freshly initialised) from the dictionary :meth:`to_config` gives."""
        options = {k: v for k, v in config.items() if k != "name"}
        valid = {f.name for f in fields(SmallTextEncoderConfig)}
        unknown = sorted(set(options) - valid)
        if unknown:
            raise ValueError(f"unknown small text encoder option(s) {unknown}; valid options are {sorted(valid)}")
        if "vocab" not in options:
            raise ValueError("the small text encoder's config needs its 'vocab' (a JSON list of words); "
                             "build one with SmallTextEncoder.from_captions(captions)")
        return cls(SmallTextEncoderConfig(**options)).to(device)

    def to_config(self) -> dict:
        """``{"name": "small", "vocab": [...], "dim": ..., ...}``: plain JSON, for ``config.json``."""
        return {"name": self.name, **asdict(self.config)}

    def forward(self, input_ids: Tensor, mask: Tensor) -> Tensor:
        """Token ids and mask (N, L) → states (N, L, dim), zero at padding."""
        h = self.token_embedding(input_ids) + self.position_embedding[: input_ids.shape[1]]
        for block in self.blocks:
            h = block(h, mask)
        return self.norm(h) * mask[..., None]

    def encode(self, texts: Sequence[str], max_length: int | None = None, padding: str = "max_length") -> TextEncoding:
        """Token states of ``texts`` (differentiable: this encoder is trained).

        Args:
            texts: captions; ``""`` encodes to the single token ``[CLS]``.
            max_length: token length L (default and maximum: ``config.max_length``).
            padding: ``"max_length"`` (L = max_length) or ``"longest"``.
        """
        if max_length is None:
            max_length = self.max_length
        check_max_length(max_length, self.max_length, 1, "the small text encoder ([CLS] included)")
        input_ids, mask = self.tokenizer(texts, max_length, padding)
        device = next(self.parameters()).device
        input_ids, mask = input_ids.to(device), mask.to(device)
        return TextEncoding(self.forward(input_ids, mask), mask)
