"""The sampler's model call under ``torch.compile``, and CUDA graphs for the sampling loop on a GPU.

Every sampler step does two kinds of work. The schedule arithmetic (σ → s, d, t in float64,
the solver's coefficients) runs on the host in Python floats and never waits on the device. The
tensor work of the denoiser — xₜ = s·x, the network (both branches of classifier-free guidance
in one batch, and their combination), x̂₀ from the output, clipping — is
:meth:`~difflab.denoiser.Denoiser.network_x0`, a function of device tensors alone. That is what
:class:`CompiledDenoiser` compiles:

* on a GPU with ``mode="reduce-overhead"``: inductor's fused kernels, replayed as one CUDA graph
  per batch shape, so a step costs one graph launch instead of hundreds of kernel launches (the
  step's coefficients are inputs of the graph, copied into it, so one graph serves every step);
* on a CPU with inductor's default mode: fused C++ kernels.

The solver's own update (two to four element-wise operations on x with Python-float
coefficients that change every step) stays outside the graph: compiled, each step's coefficients
would be new constants and trigger a recompile.

CUDA graphs reuse their output memory on the next replay, and multistep solvers keep earlier
x̂₀ estimates, so each output is copied out of the graph's pool before it is returned.

Compilation takes seconds to minutes on the first call of each batch shape (the last, smaller
batch of a run is a second shape); it pays off on long runs: ``difflab eval``, big ``sample``
runs, benchmarks. The results equal the eager path's to float tolerance
(tests/test_compiled_sampling.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..denoiser import Denoiser, DenoiserOutput


def default_mode(device: torch.device) -> str:
    """``reduce-overhead`` (CUDA graphs) on CUDA, inductor's ``default`` elsewhere."""
    return "reduce-overhead" if device.type == "cuda" else "default"


class CompiledDenoiser(Denoiser):
    """``denoiser`` with its tensor work compiled; behaves as ``denoiser`` in every other respect.

    Args:
        denoiser: the (possibly guided) denoiser to speed up.
        mode: a ``torch.compile`` mode; None picks :func:`default_mode` for the device of the
            first input.
    """

    def __init__(self, denoiser: Denoiser, mode: str | None = None):
        super().__init__(denoiser.model, denoiser.schedule, denoiser.prediction, denoiser.learned_variance,
                         denoiser.clip_x0, denoiser.threshold)
        self.mode = mode
        self._compiled = None  # built on the first call, when the device is known

    def network_x0(self, x: Tensor, scale: Tensor, std: Tensor, t: Tensor, cond: dict) -> DenoiserOutput:
        if self._compiled is None:
            self._compiled = torch.compile(self._tensors, mode=self.mode or default_mode(x.device))
        graphed = self._graphed(x)
        if graphed:
            torch.compiler.cudagraph_mark_step_begin()  # a new step: earlier outputs may be reused
        outputs = self._compiled(x, scale, std, t, cond)
        if graphed:
            outputs = tuple(o.clone() if o is not None else None for o in outputs)
        return DenoiserOutput(*outputs)

    def _graphed(self, x: Tensor) -> bool:
        """Whether the step replays as a CUDA graph, whose next replay overwrites its outputs."""
        return (self.mode or default_mode(x.device)) == "reduce-overhead" and x.device.type == "cuda"

    def _tensors(self, x: Tensor, scale: Tensor, std: Tensor, t: Tensor, cond: dict):
        out = Denoiser.network_x0(self, x, scale, std, t, cond)
        return out.x0, out.variance_frac, out.mean_gradient
