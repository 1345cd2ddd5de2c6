"""Samplers: one function each, all of ``(denoise, x, sigmas, **options)``, behind :func:`sample`."""

from .common import NoiseSource, Step
from .consistency import consistency, consistency_levels
from .ddim import ddim, ddim_invert
from .ddpm import ddpm
from .dpm_solver import dpmpp_multistep
from .euler import edm_ode, euler, heun
from .sample import (
    DEFAULT_METHOD,
    DEFAULT_SPACING,
    DEFAULT_STEPS,
    DETERMINISTIC,
    SAMPLERS,
    check_options,
    get_sampler,
    invert,
    model_calls,
    sample,
)
from .spacing import (
    SPACINGS,
    default_spacing,
    get_sigmas,
    karras,
    leading,
    linspace,
    log_snr,
    strength_tail,
    trailing,
)
from .unipc import unipc

__all__ = [
    "DEFAULT_METHOD", "DEFAULT_SPACING", "DEFAULT_STEPS", "DETERMINISTIC", "NoiseSource", "SAMPLERS", "SPACINGS",
    "Step", "check_options", "consistency", "consistency_levels", "ddim", "ddim_invert", "ddpm", "default_spacing",
    "dpmpp_multistep", "edm_ode", "euler",
    "get_sampler", "get_sigmas", "heun", "invert", "karras", "leading", "linspace", "log_snr", "model_calls", "sample",
    "strength_tail", "trailing", "unipc",
]
