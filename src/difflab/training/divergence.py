"""Stop a run that diverged before it overwrites its last good checkpoint.

A run diverges when its learning rate is far too high (or its data is broken): the loss becomes
NaN or inf, or — with Adam, whose steps have the size of the learning rate whatever the gradient —
it explodes while staying finite (``optim.lr=1e10``: 1e24 after a few hundred steps). The trainer
stops with :class:`TrainingDiverged` when

* a log window's mean loss (``train.log_every`` steps, over all processes) is NaN or inf, or a
  gradient norm in it was (the norm is computed when ``optim.grad_clip`` is set);
* a window's loss is above ``max(FACTOR × median of the earlier normal windows, FLOOR)`` for
  ``PATIENCE`` windows in a row (the median of the last ``HISTORY`` windows; a normal run's
  loss falls or wobbles, it does not stay ten times above its own median);
* before a checkpoint: a weight (parameter or buffer, model or EMA) is NaN or inf, or the loss of
  the new weights on the step's own last micro-batch (evaluated in eval mode, which changes no
  state) is not finite or above ``max(FACTOR × max(the loss before the step, the median), FLOOR)``:
  the step that would be saved blew the weights up.

While a window is suspect (above the threshold, fewer than ``PATIENCE`` in a row) no checkpoint is
written, and a run that ends suspect stops with the error: the checkpoint on disk is always from
before the trouble, and the message names its step (or says there is none).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from pathlib import Path

import torch

FACTOR = 10.0  # how far above its median the loss must be ...
FLOOR = 1.0  # ... and above this, so that tiny losses (1e-4 → 1e-3) are not suspect
PATIENCE = 3  # consecutive suspect windows that make a divergence
HISTORY = 50  # normal windows the median is taken over

__all__ = ["DivergenceGuard", "TrainingDiverged", "all_finite"]


class TrainingDiverged(FloatingPointError):
    """The run diverged (its loss, gradients or weights); the message names the last good checkpoint."""


@torch.no_grad()
def all_finite(*modules: torch.nn.Module) -> bool:
    """Whether every floating-point parameter and buffer of ``modules`` is finite."""
    return tensors_finite(t for m in modules for t in (*m.parameters(), *m.buffers()))


def tensors_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every floating-point tensor among ``tensors`` is finite: one fused max-abs per
    tensor list (NaN propagates through it), one host sync."""
    tensors = [t for t in tensors if t.is_floating_point() and t.numel()]
    if not tensors:
        return True
    return bool(torch.stack(torch._foreach_norm(tensors, math.inf)).isfinite().all())


class DivergenceGuard:
    """The checks of the module docstring, and the message that names the last good checkpoint.

    Args:
        good: (folder, step) of the checkpoint this run started from (``--resume``), or None.
    """

    def __init__(self, good: tuple[Path, int] | None = None):
        self.good = good
        self.history: list[float] = []  # the losses of the last HISTORY normal windows
        self.streak = 0  # suspect windows in a row

    @property
    def suspect(self) -> bool:
        """Whether the latest window's loss was above the threshold (no checkpoint now)."""
        return self.streak > 0

    def threshold(self, reference: float | None = None) -> float:
        base = statistics.median(self.history) if self.history else 0.0
        return max(FACTOR * max(base, reference or 0.0), FLOOR)

    def diverged(self, what: str) -> TrainingDiverged:
        if self.good is None:
            kept = "no checkpoint of this run was written before (none is good)"
        else:
            kept = f"the last good checkpoint ({self.good[0]}, step {self.good[1]}) is kept"
        return TrainingDiverged(f"{what}: training diverged. Lower optim.lr, set optim.grad_clip, or check the "
                                f"data; {kept}")

    def window(self, step: int, loss: float, gradients_finite: bool = True) -> None:
        """Judge the log window that ends at ``step`` (its mean loss); raises on divergence."""
        if not math.isfinite(loss):
            raise self.diverged(f"the loss became {loss} by step {step}")
        if not gradients_finite:
            raise self.diverged(f"the gradient norm became NaN or inf by step {step}")
        if self.history and loss > self.threshold():
            self.streak += 1
            if self.streak >= PATIENCE:
                raise self.diverged(
                    f"the loss exploded: {loss:.4g} at step {step}, above {FACTOR:g}x its median "
                    f"{statistics.median(self.history):.4g} for {self.streak} log windows in a row")
            return
        self.streak = 0
        self.history = [*self.history[-(HISTORY - 1):], loss]

    def before_save(self, step: int, weights_finite: bool, loss_before: float, loss_after: float,
                    final: bool) -> bool:
        """Whether the weights of ``step`` may be saved; raises when they are bad, or when the run
        ends while its loss is suspect. ``loss_before`` / ``loss_after``: the loss of the step's
        last micro-batch before and after the update."""
        if not weights_finite:
            raise self.diverged(f"the weights became NaN or inf at step {step} (not saved)")
        if not math.isfinite(loss_after) or loss_after > self.threshold(loss_before):
            raise self.diverged(f"the update of step {step} blew the loss up from {loss_before:.4g} to "
                                f"{loss_after:.4g} (not saved)")
        if self.suspect and final:
            raise self.diverged(f"the run ended at step {step} with its loss above {FACTOR:g}x its median "
                                f"(not saved)")
        return not self.suspect

    def saved(self, folder: Path, step: int) -> None:
        self.good = (folder, step)
