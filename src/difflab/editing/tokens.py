"""Token positions of a prompt in the cross-attention keys, and the alignment of two prompts.

The keys of a text model's cross-attention are the token positions of its caption, whichever the
encoder: ``[CLS] words…`` for the trainable word tokenizer (``small``), ``[CLS] WordPieces…
[SEP]`` for the frozen MiniLM encoder, each padded to the encoder's ``max_length``. A word
swap keeps every position when both words have as many tokens (prompt-to-prompt's *replace*);
otherwise the edit's tokens are aligned to the source's by their longest common subsequences
(*refine*: the source's maps go to the matched positions, new words keep their own).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
from torch import Tensor

from ..conditioning import TextConditioning


def word_pieces(text: TextConditioning, words: str) -> list[str]:
    """The tokens of ``words`` without the special tokens, as the model's tokenizer splits them."""
    if text.frozen:
        return text.encoder.tokenizer.tokenize(words)
    from ..text.small import split_words

    return split_words(words)


def prompt_tokens(text: TextConditioning, prompt: str) -> list[str]:
    """The real tokens of ``prompt`` at their key positions (special tokens included, truncated)."""
    pieces = word_pieces(text, prompt)
    if text.frozen:
        return ["[CLS]", *pieces[: text.max_length - 2], "[SEP]"]
    return ["[CLS]", *pieces][: text.max_length]


@dataclass
class TokenMap:
    """Where each key position of the edit prompt takes its attention from (length ``max_length``).

    Attributes:
        source: the source position each edit position copies (its own where ``alpha`` is 0).
        alpha: 1 where the edit position takes the source's map, 0 where it keeps its own (new
            words and padding).
        scale: the per-position reweighting factor of the edit's maps (1: unchanged).
    """

    source: Tensor  # long (L,)
    alpha: Tensor  # float (L,)
    scale: Tensor  # float (L,)


def token_map(text: TextConditioning, prompt: str, edit: str, mode: str,
              reweight: dict[str, float] | None = None) -> TokenMap:
    """The key-position map of the edit for ``mode`` ``replace``, ``refine`` or ``reweight``.

    Raises:
        ValueError: replace mode with prompts of different token counts; a reweighted word that is
            not in the edit prompt.
    """
    length = text.max_length
    src, dst = prompt_tokens(text, prompt), prompt_tokens(text, edit)
    source, alpha = torch.arange(length), torch.zeros(length)
    if mode == "replace":
        if len(src) != len(dst):
            raise ValueError(f"replace mode swaps words of the same token count, but {prompt!r} has {len(src)} tokens "
                             f"and {edit!r} has {len(dst)} ({src} vs {dst}); use --mode refine for added or "
                             "longer words")
        alpha[: len(dst)] = 1.0
    elif mode in ("refine", "reweight"):
        matcher = difflib.SequenceMatcher(a=src, b=dst, autojunk=False)
        for block in matcher.get_matching_blocks():
            for offset in range(block.size):
                source[block.b + offset], alpha[block.b + offset] = block.a + offset, 1.0
    else:
        raise ValueError(f"unknown prompt-to-prompt mode {mode!r}; choose replace, refine or reweight")
    scale = torch.ones(length)
    for word, factor in (reweight or {}).items():
        positions = find_positions(dst, word_pieces(text, word))
        if not positions:
            raise ValueError(f"--reweight {word}: {word!r} is not a word of the edit prompt {edit!r} (tokens {dst})")
        scale[positions] = float(factor)
    return TokenMap(source, alpha, scale)


def find_positions(tokens: list[str], pieces: list[str]) -> list[int]:
    """Every position of ``tokens`` inside an occurrence of the sequence ``pieces``."""
    width = len(pieces)
    return [start + i for start in range(len(tokens) - width + 1) if width and tokens[start : start + width] == pieces
            for i in range(width)]


def word_positions(text: TextConditioning, prompt: str, words: list[str]) -> Tensor:
    """A bool (max_length,) mask of the key positions of ``words`` in ``prompt`` (absent words: none)."""
    tokens, mask = prompt_tokens(text, prompt), torch.zeros(text.max_length, dtype=torch.bool)
    for word in words:
        mask[find_positions(tokens, word_pieces(text, word))] = True
    return mask
