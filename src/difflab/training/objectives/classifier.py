"""ADM's noisy classifier p(y | xₜ, t) (Dhariwal & Nichol 2021, §4.1) as a training objective:
cross-entropy on xₜ ~ q(xₜ | x₀) at random t (:func:`difflab.losses.noisy_classifier_loss`), the
diffusion objective's noise process and draws without its label dropout; accuracy is logged and
there is no preview. ``model.name: noisy_classifier`` selects it (``difflab train-classifier --noisy``)."""

from __future__ import annotations

from torch import Tensor

from ... import losses
from ...checkpoint import CLASSIFIER_KIND
from ..config import ConfigError
from .base import Inputs, StepLoss
from .diffusion import DiffusionObjective


class NoisyClassifierObjective(DiffusionObjective):
    """The classifier behind classifier guidance, trained on the labels of the diffusion data."""

    kind = CLASSIFIER_KIND
    ships_tuned_levels = False  # a classifier has no sampler
    missing_labels = "a noisy classifier needs class labels, and dataset {name!r} has none"

    def uses_labels(self) -> bool:
        return True  # as targets, not as input: data.class_conditional does not matter

    def text_encoder_config(self) -> None:
        if self.config.data.text_conditional:
            raise ConfigError("a noisy classifier predicts class labels and takes no captions: "
                              "set data.text_conditional=false")

    def draw(self, x0: Tensor, idx, step: int, generator) -> Inputs:
        t, noise = self.draw_t_and_noise(x0, step, generator)
        return {"x0": x0, "t": t, "noise": noise, "labels": self.labels[idx]}

    def loss(self, net, inputs: Inputs) -> StepLoss:
        out = losses.noisy_classifier_loss(net, inputs["x0"], inputs["labels"], self.schedule,
                                           t=inputs["t"], noise=inputs["noise"])
        return StepLoss(out.loss, {"accuracy": out.accuracy})

    def preview(self, model, path) -> None:
        return None
