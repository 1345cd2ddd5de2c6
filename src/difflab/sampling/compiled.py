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

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..denoiser import Denoiser, DenoiserOutput


def default_mode(device: torch.device) -> str:
    """``reduce-overhead`` (CUDA graphs) on CUDA, inductor's ``default`` elsewhere."""
    return "reduce-overhead" if device.type == "cuda" else "default"


def compile_denoiser(denoiser: Denoiser, mode: str | None = None) -> CompiledDenoiser:
    """``denoiser`` (possibly guided) with its tensor work compiled; the same denoiser in every
    other respect. ``mode``: a ``torch.compile`` mode; None picks :func:`default_mode` for the
    device of the first input."""
    fields = {f.name: getattr(denoiser, f.name) for f in dataclasses.fields(Denoiser)}
    return CompiledDenoiser(**fields, mode=mode)


@dataclass
class CompiledDenoiser(Denoiser):
    """A :class:`~difflab.denoiser.Denoiser` whose :meth:`network_x0` runs under ``torch.compile``
    (build one with :func:`compile_denoiser`)."""

    mode: str | None = None
    _compiled: object = field(default=None, init=False, repr=False)  # built on the first call

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
