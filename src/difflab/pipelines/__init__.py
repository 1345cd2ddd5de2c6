"""Pipelines: short compositions of a loaded model, a denoiser, guidance and a sampler."""

from .generate import DiffusionModel, generate

__all__ = ["DiffusionModel", "generate"]
