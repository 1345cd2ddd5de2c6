"""Pipelines: short compositions of a loaded model, a denoiser, guidance and a sampler."""

from .generate import DiffusionModel, Guidance, NoisyClassifierModel, generate

__all__ = ["DiffusionModel", "Guidance", "NoisyClassifierModel", "generate"]
