"""Pipelines: short compositions of a loaded model, a denoiser, guidance and a sampler."""

from .generate import DiffusionModel, Guidance, NoisyClassifierModel, generate
from .tune import find_tuned, tune_steps, tuned_path

__all__ = ["DiffusionModel", "Guidance", "NoisyClassifierModel", "find_tuned", "generate", "tune_steps", "tuned_path"]
