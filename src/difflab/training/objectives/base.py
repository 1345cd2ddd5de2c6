"""The interface between the training loop and what it trains.

:func:`difflab.training.trainer.train` owns everything every run shares: the data (decoded once,
flipped, cropped, encoded to latents), the per-step generators, DDP slicing, gradient
accumulation, the optimizer, EMA, logs, checkpoints and the time budget. An :class:`Objective`
owns what differs between a diffusion model, ADM's noisy classifier and an autoencoder: which
network to build, the randomness of a step besides the batch, the loss, the preview grid and what
the checkpoint's ``config.json`` records. A new objective is a new subclass, not new branches in
the loop.

The loop calls, in order::

    objective = Objective(config, data)           # checks the config against the data
    model = build_model(objective.model_spec())   # seeded by train.seed
    objective.attach(model)                       # the built network (its full config, shapes)
    record = objective.checkpoint_config(init_from)
    for step ...:
        inputs = objective.draw(x0, idx, step, g)   # the global batch's tensors, batch first
                                                    # (+ pixels=... when objective.needs_pixels)
        ... sliced to this process, then to each micro-batch ...
        out = objective.loss(net, micro_inputs)     # StepLoss(loss, metrics, per_sample)
        objective.observe(inputs, per_sample)       # once a step, if loss() gave per_sample: the global
                                                    # batch's inputs and losses (all processes)
        objective.preview(ema_model, path)          # every train.sample_every steps (None: no grid)
    record |= objective.finalize(ema_model)         # once, before the last checkpoint
    if objective.ships_tuned_levels:                # after it: the sampler's levels tuned to the
        ... objective.calibration_prompts(n) ...    # model (train.tune_steps), on process 0

An objective that learns from its own losses (importance sampling of t) keeps that state in
:meth:`Objective.state_dict`, which every checkpoint saves and ``--resume`` restores
(:meth:`Objective.load_state_dict`), so a resumed run draws what the uninterrupted one drew.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ...checkpoint import DIFFUSION_KIND
from ...models import model_config_dict
from ..config import Config


@dataclass
class TrainingData:
    """The run's data as the trainer loaded it.

    Attributes:
        dataset: the :class:`~difflab.data.ImageDataset` (labels, class names, captions, name).
        images: its uint8 images (N, C, H, W), already on ``device``.
        latent: latent diffusion's frozen autoencoder (``data.autoencoder``), or None.
        device: where the run trains.
    """

    dataset: object
    images: Tensor
    latent: object | None
    device: torch.device

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of what the network sees: the latents' shape in latent diffusion."""
        return tuple(self.latent.latent_shape) if self.latent is not None else tuple(self.images.shape[1:])


@dataclass
class StepLoss:
    """One micro-batch's loss and the detached scalars to log beside it (averaged by the trainer
    over accumulation steps and the logging window). ``per_sample``: the detached (rows,) losses
    the objective wants back through :meth:`Objective.observe` (None: it wants none)."""

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)
    per_sample: Tensor | None = None


Inputs = dict[str, "Tensor | dict[str, Tensor]"]  # every tensor has the batch as its first dimension


def take_rows(inputs: Inputs, rows: slice) -> Inputs:
    """The same rows of every tensor in ``inputs`` (nested one level, as ``cond``)."""
    return {k: take_rows(v, rows) if isinstance(v, dict) else v[rows] for k, v in inputs.items()}


class Objective(ABC):
    """What one run trains. Subclasses set :attr:`kind` and implement the abstract methods.

    Attributes:
        kind: the checkpoint's kind (:mod:`difflab.checkpoint`); ``--resume`` and ``--init-from``
            read only checkpoints of this kind.
        config: the run's :class:`~difflab.training.config.Config`.
        data: the run's :class:`TrainingData`.
        spec: the built network's complete config (set by :meth:`attach`).
    """

    kind: str = DIFFUSION_KIND
    needs_pixels: bool = False  # draw() gets the batch's pixels beside latents (an inpainting model's masked image)
    # the trainer tunes the trained model's sampler afterwards (train.tune_steps; difflab.pipelines.tune)
    ships_tuned_levels: bool = False

    def __init__(self, config: Config, data: TrainingData):
        """Check ``config`` against the data (a :class:`~difflab.training.config.ConfigError`
        naming the key) and prepare what every step needs (labels, caption tables, ...)."""
        self.config, self.data = config, data
        self.spec: dict = {}

    @abstractmethod
    def model_spec(self) -> dict:
        """The network's config for :func:`difflab.models.build_model`: ``config.model``'s preset
        and options completed from the data (channels, size, classes, ...)."""

    def attach(self, model) -> None:
        """Called once with the built network, before any step: record its complete config and
        check what needs the network (a crop against the autoencoder's factor, ...)."""
        self.spec = model_config_dict(model)

    @abstractmethod
    def draw(self, x0: Tensor, idx: Tensor, step: int, generator: torch.Generator,
             pixels: Tensor | None = None) -> Inputs:
        """The inputs of step ``step`` for the whole *global* batch: ``x0`` (the batch's images or
        latents, in [−1, 1] for pixels), ``idx`` (their dataset rows), ``pixels`` (passed only to
        an objective with :attr:`needs_pixels`: the same images in pixels, flipped alike, when x0
        are latents, else None)
        and every random draw the
        loss needs (t, ε, label dropout, ...). Draws come from ``generator`` (seeded by (seed,
        step)) or from generators seeded by (seed, step) in the same way, never from global state,
        so a resumed run and N processes repeat them; the trainer slices the rows afterwards."""

    @abstractmethod
    def loss(self, net, inputs: Inputs) -> StepLoss:
        """The loss of one micro-batch (``inputs`` sliced to its rows); ``net`` is the network as
        trained (maybe wrapped in DDP or compiled)."""

    def observe(self, inputs: Inputs, per_sample: Tensor) -> None:  # noqa: B027 (an optional hook)
        """Called once per step, after the micro-batches and before the optimizer step, when
        :meth:`loss` returned ``per_sample``: ``inputs`` are the step's global-batch inputs (as
        :meth:`draw` returned them) and ``per_sample`` the global batch's losses in the same row
        order, gathered from every process and micro-batch, so every process sees the same values.
        What the objective learns here must go into :meth:`state_dict`. The default learns nothing."""

    def state_dict(self) -> dict[str, Tensor]:
        """The objective's own state that a resumed run needs (tensors only; saved in every
        checkpoint's ``extra.pt``); empty by default."""
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore :meth:`state_dict` on ``--resume`` (an empty dict from a checkpoint written
        without it). The default keeps none and refuses a state it would drop."""
        if state:
            raise ValueError(f"the checkpoint holds objective state ({', '.join(sorted(state))}) that "
                             f"{type(self).__name__} does not keep; resume it with the objective that wrote it")

    def preview(self, model, path: Path) -> Path | None:
        """Write the preview grid of ``model`` (the EMA weights) to ``path``; None when the
        objective has no preview."""
        return None

    @abstractmethod
    def checkpoint_config(self, init_from: dict | None = None) -> dict:
        """What the checkpoint's ``config.json`` records besides ``kind`` and ``step`` (which the
        trainer adds); ``init_from`` is the provenance of ``--init-from`` ({"path", "step"})."""

    def calibration_prompts(self, n: int) -> list[str] | None:
        """n captions to tune a text-conditioned model's sampler with after training (None: the
        model takes no text)."""
        return None

    def finalize(self, model) -> dict:
        """Entries added to the last checkpoint's ``config.json``, computed once on ``model``
        (the EMA weights) when training ends: e.g. an autoencoder's latent scale and PSNR."""
        return {}
