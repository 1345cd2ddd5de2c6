"""Pipelines: short compositions of a loaded model, a denoiser, guidance and a sampler.

``loading`` (checkpoints → :class:`DiffusionModel`, :class:`NoisyClassifierModel`),
``guidance_policy`` (which guidance a run uses), ``generate`` (settings resolved once, then the one
sampling path), ``pipeline`` (:class:`Pipeline`, the object Python users call), ``png_info``
(generation parameters inside PNGs), ``tune`` (tuned step schedules).
"""

from .generate import Generated, GenerationPlan, SamplerSettings, batches, generate, plan, run
from .guidance_policy import Guidance
from .loading import DiffusionModel, NoisyClassifierModel, is_diffusion_checkpoint
from .tune import find_tuned, tune_steps, tuned_path

__all__ = ["DiffusionModel", "Generated", "GenerationPlan", "Guidance", "NoisyClassifierModel", "SamplerSettings",
           "batches", "find_tuned", "generate", "is_diffusion_checkpoint", "plan", "run", "tune_steps", "tuned_path"]
