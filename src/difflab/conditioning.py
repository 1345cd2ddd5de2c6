"""Captions → the model's text inputs, for training, sampling and classifier-free guidance.

A text-conditioned U-Net (``UNetConfig.context_dim > 0``) takes its caption one of two ways:

* **frozen encoder** (``{"name": "minilm"}``, all-MiniLM-L6-v2): the model gets the token states
  ``context`` (N, L, 384) and ``context_mask`` (N, L). The encoder never changes, so the states
  of every distinct caption are computed once and looked up per batch; the encoder is not part
  of the checkpoint (it comes from its package).
* **trainable encoder** (``{"name": "small", ...}``): the encoder lives inside the U-Net
  (``UNetConfig.text_encoder``) and is trained with it; the model gets token ids ``input_ids``
  and ``token_mask`` (N, L) from the word tokenizer, whose vocabulary is stored in the config.

Either way :class:`TextConditioning` turns captions into a dict of tensors (the ``cond`` of
:func:`difflab.sampling.sample`), and the empty caption ``""`` is the null condition: label
dropout during training replaces captions by it (GLIDE's caption dropout) and classifier-free
guidance uses it as the unconditional input.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

FROZEN_ENCODERS = ("minilm", "clip")
TRAINABLE_ENCODERS = ("small",)


class TextConditioning:
    """Captions → ``{"context", "context_mask"}`` (frozen encoder) or ``{"input_ids", "token_mask"}``.

    Args:
        encoder_config: the text encoder's dictionary (see :func:`difflab.text.build_text_encoder`);
            for ``"small"`` it must hold the vocabulary.
        device: where the tensors (and a frozen encoder) live.
        words: learned words to add (textual inversion, :meth:`add_words`).
    """

    def __init__(self, encoder_config: dict, device: torch.device | str = "cpu", words: Sequence = ()):
        name = encoder_config.get("name")
        if name not in FROZEN_ENCODERS + TRAINABLE_ENCODERS:
            raise ValueError(f"unknown text encoder {name!r}; "
                             f"choose one of {list(FROZEN_ENCODERS + TRAINABLE_ENCODERS)}")
        self.config, self.device, self.frozen = dict(encoder_config), torch.device(device), name in FROZEN_ENCODERS
        if self.frozen:
            from .text import build_text_encoder

            self.encoder = build_text_encoder(self.config, device=self.device)
            self.max_length = self.encoder.max_length
        else:
            from .text import WordTokenizer

            self.tokenizer = WordTokenizer(self.config["vocab"])
            self.max_length = self.config.get("max_length", 77)
        self.add_words(words)

    def add_words(self, words: Sequence) -> None:
        """Learned words (:class:`~difflab.text.inversion.TokenEmbedding`, textual inversion): the
        frozen encoder gets their vectors, the trainable one's tokenizer their ids (the network's
        own encoder holds its vectors)."""
        from .text.inversion import add_word, encoder_parts, teach_tokenizer

        for word in words:
            if self.frozen:
                add_word(*encoder_parts(self.encoder), word)
            else:
                teach_tokenizer(self.tokenizer, word.word, len(word.vectors))

    def token_count(self, caption: str) -> int:
        """How many tokens ``caption`` is before truncation to :attr:`max_length` (start and end
        tokens included; a learned word counts its vectors)."""
        if self.frozen and getattr(self.encoder, "prompt_weights", False):  # "(word:1.2)": brackets are no tokens
            return int(self.encoder.tokenizer.weighted([caption], max_length=10**6, padding="longest")[1].sum())
        tokenizer = self.encoder.tokenizer if self.frozen else self.tokenizer
        return int(tokenizer([caption], max_length=10**6, padding="longest")[1].sum())

    def truncated(self, captions: Sequence[str]) -> dict[str, int]:
        """The distinct ``captions`` longer than :attr:`max_length` tokens, with their token counts:
        the encoder reads only their first ``max_length`` tokens (the end token kept)."""
        counts = {caption: self.token_count(caption) for caption in set(captions)}
        return {caption: count for caption, count in counts.items() if count > self.max_length}

    @property
    def dim(self) -> int:
        """The width of the context tokens the U-Net attends to."""
        return self.encoder.dim if self.frozen else self.config.get("dim", 256)

    def encode(self, captions: Sequence[str], batch_size: int = 256) -> dict[str, Tensor]:
        """The model inputs for ``captions`` (no gradients; a trainable encoder runs in the model)."""
        if isinstance(captions, str):
            raise TypeError("pass a list of captions")
        if not self.frozen:
            ids, mask = self.tokenizer(list(captions), self.max_length)
            return {"input_ids": ids.to(self.device), "token_mask": mask.to(self.device)}
        parts = [self.encoder.encode(list(captions[i : i + batch_size])) for i in range(0, len(captions), batch_size)]
        return {"context": torch.cat([p.states for p in parts]), "context_mask": torch.cat([p.mask for p in parts])}

    def null(self) -> dict[str, Tensor]:
        """The null condition: the empty caption, batch 1 (broadcast by classifier-free guidance)."""
        return self.encode([""])

    def table(self, captions: Sequence[str]) -> tuple[dict[str, Tensor], Tensor]:
        """The inputs of every distinct caption once, and each caption's row in that table.

        A dataset's captions repeat (Fashion-MNIST has 40 distinct ones), so a training step
        gathers rows instead of re-encoding.
        """
        distinct = sorted(set(captions))
        row = {caption: i for i, caption in enumerate(distinct)}
        index = torch.tensor([row[c] for c in captions], dtype=torch.long, device=self.device)
        return self.encode(distinct), index


def select(table: dict[str, Tensor], rows: Tensor, null: dict[str, Tensor],
           drop: Tensor | None = None) -> dict[str, Tensor]:
    """``table``'s ``rows`` as a batch, with the rows where ``drop`` is True replaced by ``null``."""
    out = {}
    for key, values in table.items():
        batch = values[rows]
        if drop is not None:
            dropped = drop.reshape(-1, *([1] * (batch.ndim - 1)))
            batch = torch.where(dropped, null[key].expand_as(batch), batch)
        out[key] = batch
    return out
