"""Diffusion checkpoints: what a trained model needs to sample, and what a run needs to resume.

A checkpoint folder (written atomically by :mod:`difflab.checkpoint`) holds

* ``config.json``: ``kind: "diffusion"`` (``"noisy_classifier"`` for ADM's classifier, ``"autoencoder"``
  for the KL / VQ autoencoders, with the latent shape and scale instead of the noise process;
  see :mod:`difflab.training.objectives`), the model config, the schedule, the prediction type,
  the data shape and class names, the step, and the whole training config;
* ``model.safetensors`` and ``ema.safetensors``: the raw and the averaged weights;
* ``extra.pt``: optimizer and learning-rate-scheduler state and the step (tensors and plain
  values only; read back with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

from pathlib import Path

from .. import checkpoint

KIND = "diffusion"
CLASSIFIER_KIND = "noisy_classifier"  # ADM's noisy classifier, trained by the same loop
AUTOENCODER_KIND = "autoencoder"  # latent diffusion's KL / VQ autoencoders, trained by the same loop


def save_training_state(path, *, config: dict, model, ema, optimizer, lr_scheduler, step: int, kind: str = KIND,
                        extra_tensors: dict | None = None) -> Path:
    """``extra_tensors``: more weight groups to store (e.g. a latent model's ``autoencoder``)."""
    return checkpoint.save_checkpoint(
        path,
        {**config, "kind": kind, "step": step},
        {"model": model.state_dict(), "ema": ema.state_dict(), **(extra_tensors or {})},
        {"optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict(), "step": step},
    )


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder holding one in ``checkpoint/``."""
    path = Path(path)
    if (path / "checkpoint" / checkpoint.CONFIG_FILE).exists():
        return path / "checkpoint"
    return path


def load_state(path: str | Path, kind: str = KIND):
    """(config, tensors, extra) of a checkpoint of this kind; a clear error for anything else."""
    return checkpoint.load_checkpoint(find_checkpoint(path), kind=kind)
