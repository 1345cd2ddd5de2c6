"""What a run needs to resume, written beside the weights, and how a resumed run takes its new settings.

A training checkpoint (written atomically by :mod:`difflab.checkpoint`) holds

* ``config.json``: a :class:`~difflab.checkpoint.ModelRecord` (diffusion models and noisy
  classifiers) or an autoencoder's record (:mod:`difflab.training.objectives`), with the step;
* ``model.safetensors`` and ``ema.safetensors``: the raw and the averaged weights;
* ``extra.pt``: optimizer and learning-rate-scheduler state and the step (tensors and plain
  values only; read back with ``torch.load(weights_only=True)``), and under ``objective`` the
  objective's own state when it has one (:meth:`~difflab.training.objectives.Objective.state_dict`:
  e.g. the loss history of importance-sampled t).

On ``--resume`` the config given now is the one that runs (and that the next checkpoint
records): its learning rate, betas, weight decay, schedule and warm-up, gradient clipping, EMA,
step count and intervals apply from the first resumed step (:func:`apply_optimizer_settings`;
the schedule's factor depends on the step alone, so the new curve continues at the saved step).
The keys of :data:`FIXED_ON_RESUME` cannot change — :func:`check_resume_config` refuses them with
one :class:`~difflab.training.config.ConfigError` naming the key, the saved and the new value.
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import checkpoint
from .config import Config, ConfigError, OptimConfig

# What a resumed run cannot change: the network and its inputs (the weights would not fit, or would
# mean something else), the noise process it learned, and the order of the batches (the global batch
# and the seed choose it; gradient accumulation does not, so optim.grad_accum may change), and the
# widths of the post-hoc averages the checkpoint carries.
FIXED_ON_RESUME = (
    "data.dataset", "data.split", "data.resolution", "data.channels", "data.random_crop", "data.class_conditional",
    "data.text_conditional", "data.autoencoder", "model.name", "model.preset", "model.options",
    "model.text_encoder", "diffusion.schedule", "diffusion.schedule_options", "diffusion.prediction",
    "diffusion.learned_variance", "optim.batch_size", "train.seed", "train.posthoc_ema_sigma_rels",
)


def save_training_state(path, *, config: dict, model, ema, optimizer, lr_scheduler, step: int, kind: str,
                        extra_tensors: dict | None = None, objective_state: dict | None = None) -> Path:
    """``extra_tensors``: more weight groups to store (e.g. a latent model's ``autoencoder``);
    ``objective_state``: the objective's own state (stored only when not empty)."""
    extra = {"optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict(), "step": step}
    if objective_state:
        extra["objective"] = objective_state
    return checkpoint.save_checkpoint(
        path,
        {**config, "kind": kind, "step": step},
        {"model": model.state_dict(), "ema": ema.state_dict(), **(extra_tensors or {})},
        extra,
    )


def check_resume_config(saved: dict, config: Config, where) -> None:
    """Refuse to resume the checkpoint whose ``config.json`` is ``saved`` with a ``config`` that
    changes a key of :data:`FIXED_ON_RESUME` (a checkpoint without its training config is not
    checked here; its weights still must fit the model)."""
    before = saved.get("train_config")
    if not isinstance(before, dict):
        return
    now = json.loads(json.dumps(config.to_dict()))  # tuples as lists, as config.json has them
    for key in FIXED_ON_RESUME:
        section, name = key.split(".")
        if name not in (before.get(section) or {}):  # a key older checkpoints did not record
            continue
        if key == "model.text_encoder" and not now["data"]["text_conditional"]:
            continue  # unused without captions
        old, new = before[section][name], now[section][name]
        if old != new:
            raise ConfigError(f"cannot resume {where} with {key}={json.dumps(new)}: the run was trained with "
                              f"{key}={json.dumps(old)}, and {key} cannot change on resume (the weights or the "
                              f"batches depend on it); set it back, or start a new run (--init-from {where} "
                              "keeps the weights when the architecture is the same)")


def apply_optimizer_settings(optimizer, optim: OptimConfig) -> None:
    """This run's learning rate, betas and weight decay in every parameter group, after loading a
    checkpoint's optimizer state (which brings the saved ones). ``initial_lr`` is the base rate
    that ``LambdaLR`` scales by the schedule's factor (create the scheduler afterwards with
    ``last_epoch=step - 1``)."""
    for group in optimizer.param_groups:
        group.update(lr=optim.lr, initial_lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay)
