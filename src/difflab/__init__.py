"""difflab: diffusion models from DDPM to DiT, trainable and usable offline.

The three flows (train, sample, evaluate) share one noise process:
:mod:`difflab.schedules` (αₜ, σₜ, log-SNR), :mod:`difflab.process` (q(xₜ|x₀), posteriors,
parametrizations), :mod:`difflab.denoiser` (any model → ``D(x, sigma) -> x0``) and
:mod:`difflab.sampling` (every solver behind :func:`difflab.sampling.sample`).
``difflab.Pipeline.load(run)`` is the object Python users call to make images.
"""

__version__ = "0.1.0"

# ``difflab.Pipeline`` and ``difflab.save_png`` load torch and the models on first use only, so
# ``import difflab`` (and ``difflab --help``) stay fast.
_LAZY = {"Pipeline": "difflab.pipelines.pipeline", "save_png": "difflab.pipelines.png_info"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'difflab' has no attribute {name!r}")
