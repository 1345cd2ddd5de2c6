"""What a run needs to resume, written beside the weights.

A training checkpoint (written atomically by :mod:`difflab.checkpoint`) holds

* ``config.json``: a :class:`~difflab.checkpoint.ModelRecord` (diffusion models and noisy
  classifiers) or an autoencoder's record (:mod:`difflab.training.objectives`), with the step;
* ``model.safetensors`` and ``ema.safetensors``: the raw and the averaged weights;
* ``extra.pt``: optimizer and learning-rate-scheduler state and the step (tensors and plain
  values only; read back with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

from pathlib import Path

from .. import checkpoint


def save_training_state(path, *, config: dict, model, ema, optimizer, lr_scheduler, step: int, kind: str,
                        extra_tensors: dict | None = None) -> Path:
    """``extra_tensors``: more weight groups to store (e.g. a latent model's ``autoencoder``)."""
    return checkpoint.save_checkpoint(
        path,
        {**config, "kind": kind, "step": step},
        {"model": model.state_dict(), "ema": ema.state_dict(), **(extra_tensors or {})},
        {"optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict(), "step": step},
    )
