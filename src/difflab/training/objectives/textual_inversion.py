"""Textual inversion (Gal et al. 2022, "An Image is Worth One Word"): a new word's embedding
vectors learned from a few pictures, everything else frozen.

``difflab train-embedding CONFIG --base RUN --images DIR --prompt "a photo of a sks boot" --word sks
--initializer boot``: the word joins the base's text encoder (:mod:`difflab.text.inversion`: new
ids after the vocabulary, their rows in an extended embedding table) starting from the
initializer's embedding; each step encodes the prompt through the frozen encoder (all-MiniLM-L6-v2,
or the base's own small encoder) with gradients reaching only the new rows, and the base's loss
trains them. Every other row is never a trained parameter, so it stays bit-identical. The run
writes ``embedding.safetensors`` (``{word: vectors}``) for ``difflab sample BASE --embedding FILE``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ...checkpoint import EMBEDDING_KIND
from ...images import save_grid
from ...pipelines.embeddings import EMBEDDING_FILE, LoadedWord
from ...pipelines.generate import SamplerSettings, plan, run
from ...pipelines.loading import DiffusionModel
from ...pipelines.png_info import png_text
from ...text.inversion import TokenEmbedding, add_word, encoder_parts, initial_vectors, save_embeddings, teach_tokenizer
from ...text.small import split_words
from ..config import Config, ConfigError
from .base import Inputs, TrainingData
from .personalisation import PersonalisationObjective


class TextualInversionObjective(PersonalisationObjective):
    """A new word for a frozen text model; ``difflab train-embedding``."""

    kind = EMBEDDING_KIND

    def settings(self, config: Config):
        return config.embedding.base, config.embedding.prompt, None, "embedding"

    def __init__(self, config: Config, data: TrainingData):
        super().__init__(config, data)
        e = config.embedding
        if self.text is None:
            raise ConfigError("textual inversion teaches a text encoder a word: the base must be text-conditioned")
        if e.word not in split_words(e.prompt):
            raise ConfigError(f"the prompt {e.prompt!r} must hold the new word {e.word!r} (e.g. 'a photo of a "
                              f"{e.word} boot')")
        # the encoder whose table gets the word: the frozen one, or the base network's own
        self.encoder = self.text.encoder if self.text.frozen else self.base.network.text_encoder
        try:
            self.initial = initial_vectors(self.encoder, e.initializer or "a", e.num_vectors)
        except ValueError as err:
            raise ConfigError(f"config key 'embedding.initializer': {err}") from None
        self.word = None

    def model_spec(self) -> dict:
        e = self.config.embedding
        return {"name": "textual_inversion", "word": e.word, "num_vectors": e.num_vectors,
                "dim": self.initial.shape[1]}

    def attach(self, model) -> None:
        super().attach(model)
        with torch.no_grad():
            model.vectors.copy_(self.initial.to(model.vectors.device))
        try:  # the live parameter becomes the word's rows: gradients reach it, and only it
            add_word(*encoder_parts(self.encoder), TokenEmbedding(self.config.embedding.word, model.vectors))
            if not self.text.frozen:  # the conditioning's tokenizer gives the same new ids
                teach_tokenizer(self.text.tokenizer, self.config.embedding.word, len(model.vectors))
        except ValueError as err:
            raise ConfigError(f"config key 'embedding.word': {err}") from None
        count, limit = self.text.token_count(self.prompt), self.text.max_length
        if count > limit:  # the encoder would never see the last vectors (or the words after them)
            e = self.config.embedding
            fits = e.num_vectors - (count - limit)
            raise ConfigError(f"the prompt {self.prompt!r} is {count} tokens with the {e.num_vectors} vectors of "
                              f"{e.word!r}, but the text encoder reads {limit}: "
                              + (f"set embedding.num_vectors to at most {fits}, or shorten the prompt" if fits >= 1
                                 else "shorten the prompt"))
        ids, mask = encoder_parts(self.encoder)[0]([self.prompt], self.text.max_length)
        self.prompt_ids, self.prompt_mask = ids.to(self.data.device), mask.to(self.data.device)
        model.bind(self.forward)
        self.word = model

    def forward(self, x_t: Tensor, t: Tensor, input_ids: Tensor, token_mask: Tensor, **cond) -> Tensor:
        """The base's prediction for token ids holding the word, encoded with the live vectors."""
        if self.text.frozen:
            n = input_ids.shape[0]
            if n > 1 and bool((input_ids == input_ids[:1]).all() and (token_mask == token_mask[:1]).all()):
                # one prompt for the whole batch (training): encode it once, the same states and gradient
                states = self.encoder.encoder(input_ids[:1], token_mask[:1]) * token_mask[:1, :, None]
                states, token_mask = states.expand(n, -1, -1), token_mask[:1].expand(n, -1)
            else:
                states = self.encoder.encoder(input_ids, token_mask) * token_mask[..., None]
            return self.base.network(x_t, t, context=states, context_mask=token_mask, **cond)
        return self.base.network(x_t, t, input_ids=input_ids, token_mask=token_mask, **cond)

    def draw(self, x0: Tensor, idx: Tensor, step: int, generator: torch.Generator, pixels=None) -> Inputs:
        n = x0.shape[0]
        t, noise = self.draw_t_and_noise(x0, step, generator)
        cond = {"input_ids": self.prompt_ids.expand(n, -1), "token_mask": self.prompt_mask.expand(n, -1)}
        return {"x0": x0, "t": t, "noise": noise, "cond": cond}

    @torch.no_grad()
    def preview(self, model, path: Path) -> Path:
        """Samples of the prompt with the EMA vectors (in the live rows meanwhile: a small encoder
        inside the network reads them there)."""
        n, base = self.config.train.num_preview, self.base
        live = self.word.vectors
        saved = live.detach().clone()
        live.copy_(model.vectors)
        try:
            word = LoadedWord(TokenEmbedding(self.config.embedding.word, model.vectors.detach().clone()),
                              Path("(training)"))
            tuned = DiffusionModel(base.network, base.record, base.schedule, base.latent, base.path, [], [word])
            out = run(plan(tuned, n, SamplerSettings.resolve(tuned), seed=self.config.train.seed,
                           prompts=[self.prompt]), batch_size=n)
        finally:
            live.copy_(saved)
        return save_grid(out.images, path, upscale=max(1, 64 // out.images.shape[-1]),
                         pnginfo=png_text(out.grid_record()))

    def checkpoint_config(self, init_from: dict | None = None) -> dict:
        e = self.config.embedding
        return {"model": self.spec, "base": self.base_info(), "prompt": self.prompt, "word": e.word,
                "initializer": e.initializer, "text_encoder": self.base.record.text_encoder,
                "train_config": self.config.to_dict(), **({"init_from": init_from} if init_from else {})}

    def finalize(self, model) -> dict:
        """Write the EMA vectors as ``embedding.safetensors``."""
        word = TokenEmbedding(self.config.embedding.word, model.vectors.detach())
        path = save_embeddings(Path(self.config.train.out_dir) / EMBEDDING_FILE, [word],
                               self.base.record.text_encoder, self.base_info())
        return {"embedding_file": str(path)}
