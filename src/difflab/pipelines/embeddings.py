"""Learned words at sampling (textual inversion): ``difflab sample RUN --embedding FILE`` and
``Pipeline.load_embedding``. Each word of the file joins the model's text encoder (its vectors
appended to the embedding table, :mod:`difflab.text.inversion`); every other word's embedding is
untouched, so prompts without the new words give the same images as before."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..text.inversion import TokenEmbedding, add_word, encoder_parts, read_embeddings
from .loading import DiffusionModel

EMBEDDING_FILE = "embedding.safetensors"  # what a train-embedding run writes


@dataclass
class LoadedWord:
    """A learned word on a model, and the file it came from."""

    token: TokenEmbedding
    path: Path


def add_embedding(model: DiffusionModel, path: str | Path) -> list[LoadedWord]:
    """Add the words of the embedding file (or train-embedding run) at ``path`` to ``model``."""
    from ..conditioning import TextConditioning

    path = Path(path)
    if path.is_dir():
        path = path / EMBEDDING_FILE
    if not model.text_encoder:
        raise UserError(f"--embedding {path}: this model has no text encoder to add words to")
    try:
        words = read_embeddings(path)
        probe = TextConditioning(model.text_encoder, model.device, [w.token for w in model.embeddings])
        probe.add_words(words)  # checks each word: new, of the encoder's width
        network_encoder = getattr(model.network, "text_encoder", None)
        if network_encoder is not None:  # a trainable encoder inside the network holds the vectors
            for word in words:
                add_word(*encoder_parts(network_encoder), word)
    except (ValueError, OSError) as err:
        raise UserError(f"--embedding {path}: {err}") from None
    loaded = [LoadedWord(word, path) for word in words]
    model.embeddings.extend(loaded)
    return loaded
