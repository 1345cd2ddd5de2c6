"""What every text encoder returns, and the padding both tokenizers share.

A caption batch becomes token states ``(N, L, D)`` and a boolean mask ``(N, L)`` that is True at
real tokens and False at padding. Cross-attention uses the mask to drop padded keys, so a
caption's conditioning does not depend on how long the other captions of its batch are (or on
``L``). Encoders also zero the states at padded positions, so code that ignores the mask still
sees no leftovers there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor


@dataclass(frozen=True)
class TextEncoding:
    """Token states of a caption batch and the mask of its real tokens.

    Attributes:
        states: float tensor (N, L, D), one D-vector per token; zero at padding.
        mask: bool tensor (N, L), True at real tokens (including the encoder's start / end
            tokens), False at padding. Every row has at least one True: an empty caption keeps
            its start token, so attention over a caption is never empty.
    """

    states: Tensor
    mask: Tensor

    def __post_init__(self):
        if self.states.ndim != 3 or self.mask.shape != self.states.shape[:2]:
            raise ValueError(
                f"TextEncoding needs states (N, L, D) and mask (N, L); got states "
                f"{tuple(self.states.shape)} and mask {tuple(self.mask.shape)}"
            )
        if self.mask.dtype != torch.bool:
            raise ValueError(f"TextEncoding.mask must be a bool tensor, got {self.mask.dtype}")

    def __len__(self) -> int:
        return self.states.shape[0]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TextEncoding:
        """The same encoding on ``device``, with the states cast to ``dtype`` (the mask stays bool)."""
        return TextEncoding(self.states.to(device=device, dtype=dtype), self.mask.to(device=device))

    def mean_pooled(self, normalize: bool = False) -> Tensor:
        """The mean of the real tokens' states, (N, D); L2-normalised if ``normalize``.

        This is Sentence-BERT's mean pooling (Reimers & Gurevych 2019, §3), the sentence
        embedding all-MiniLM-L6-v2 was trained for when followed by normalisation.
        """
        weights = self.mask.to(self.states.dtype)[..., None]  # (N, L, 1)
        pooled = (self.states * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1e-9)  # (N, D)
        return torch.nn.functional.normalize(pooled, dim=-1) if normalize else pooled

    @staticmethod
    def cat(encodings: Sequence[TextEncoding]) -> TextEncoding:
        """Stack encodings of the same length L along the batch (e.g. conditional + null context).

        Raises:
            ValueError: the token lengths differ; encode with the same ``max_length`` and
                ``padding="max_length"`` (the default) to get equal lengths.
        """
        lengths = sorted({e.states.shape[1] for e in encodings})
        if len(lengths) > 1:
            raise ValueError(
                f"cannot concatenate text encodings of token lengths {lengths}; encode them with the "
                f"same max_length and padding='max_length'"
            )
        return TextEncoding(torch.cat([e.states for e in encodings]), torch.cat([e.mask for e in encodings]))


class TextEncoder(Protocol):
    """The interface of difflab's text encoders (see :func:`difflab.text.build_text_encoder`)."""

    dim: int
    max_length: int

    def encode(self, texts: Sequence[str], max_length: int | None = None) -> TextEncoding: ...

    def to_config(self) -> dict: ...


PADDING_MODES = ("max_length", "longest")


def pad_token_ids(sequences: Sequence[Sequence[int]], pad_id: int, max_length: int,
                  padding: str = "max_length") -> tuple[Tensor, Tensor]:
    """Right-pad token id lists into a batch.

    Args:
        sequences: one list of token ids per text, each at most ``max_length`` long.
        pad_id: the id written at padded positions.
        max_length: the batch length L with ``padding="max_length"``.
        padding: ``"max_length"`` (every batch has length ``max_length``, so encodings of
            different batches can be concatenated) or ``"longest"`` (the longest text's length).

    Returns:
        ``(input_ids, mask)``: int64 (N, L) and bool (N, L), True at real tokens.
    """
    if padding not in PADDING_MODES:
        raise ValueError(f"padding={padding!r} is unknown; use one of {PADDING_MODES}")
    length = max_length if padding == "max_length" else max((len(s) for s in sequences), default=0)
    input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.bool)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[row, : len(ids)] = True
    return input_ids, mask


def check_max_length(max_length: int, limit: int, minimum: int, what: str) -> int:
    """``max_length`` if ``minimum <= max_length <= limit``, else a ValueError saying what to set."""
    if not isinstance(max_length, int) or not minimum <= max_length <= limit:
        raise ValueError(
            f"max_length={max_length!r} is out of range for {what}: choose an integer from {minimum} "
            f"to {limit} (the number of position embeddings)"
        )
    return max_length
