"""difflab: diffusion models from DDPM to DiT, trainable and usable offline.

The three flows (train, sample, evaluate) share one noise process:
:mod:`difflab.schedules` (αₜ, σₜ, log-SNR), :mod:`difflab.process` (q(xₜ|x₀), posteriors,
parametrizations), :mod:`difflab.denoiser` (any model → ``D(x, sigma) -> x0``) and
:mod:`difflab.sampling` (every solver behind :func:`difflab.sampling.sample`).
"""

__version__ = "0.1.0"
