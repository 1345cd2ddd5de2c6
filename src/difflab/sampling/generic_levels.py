"""Generic tuned levels: the default sampler's noise levels, tuned once per built-in schedule and
step count on a family of Gaussian mixtures, in the manner of "Align Your Steps" (Sabour et al.
2024), whose schedules, optimised on some data, carry over to other models of the same kind.

A fixed spacing (trailing, log-SNR, Karras) is a formula; :mod:`difflab.sampling.tuning` fits the
levels to one model. In between, these levels were fitted to many problems at once:

    min over σ₁ > … > σₙ₋₁ of  mean_k log max(‖S(x_T; σ_max, σ₁, …, σₙ₋₁, 0) − x*_k‖ / ‖x*_k‖, 2·10⁻⁵)

with S UniPC-3 (the default sampler), x*_k the exact probability-flow ODE solution of problem k,
and the problems 12 Gaussian mixtures (8 components, stds 0.3–0.6, in 8, 16, 32 and 64
dimensions, seeds 101–112) and 3 Gaussians — none of them the problems
``benchmarks/sampler_accuracy.py`` scores. The floor keeps a Gaussian, which any deterministic
solver can get exactly right by accident, from outweighing the mixtures. Nelder–Mead from the
best of the log-SNR, Karras and trailing spacings; ``benchmarks/generic_levels.py`` repeats the
fit and prints the table below.

Each entry stores the interior levels as fractions u of the log-σ range,
σᵢ = σ_max · (σ_min/σ_max)^uᵢ, for one schedule (recognised by its σ_max and σ_min) and one
number of steps. Other schedules and step counts have no entry: :func:`generic_levels` returns
None and the caller falls back to the rule of :func:`~difflab.sampling.spacing.rule_spacing`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# schedule name: (σ_max, σ_min, {steps: interior levels as fractions of ln σ_max − ln σ_min})
GENERIC_LEVELS: dict[str, tuple[float, float, dict[int, tuple[float, ...]]]] = {
    "linear": (157.40728081040763, 0.010000500037502575, {
        10: (
            0.106341, 0.209076, 0.318672, 0.396239, 0.452124, 0.523108, 0.611401, 0.646760, 0.723728
        ),
        20: (
            0.052751, 0.107087, 0.155925, 0.211833, 0.269987, 0.358691, 0.407592, 0.435033, 0.478291, 0.526718,
            0.578224, 0.624676, 0.668806, 0.718879, 0.766226, 0.816206, 0.865383, 0.921051, 1.000000
        ),
    }),
    "scaled_linear": (14.614641229333644, 0.029167158151720367, {
        10: (
            0.126290, 0.234755, 0.350281, 0.471633, 0.595449, 0.687948, 0.764756, 0.885898, 0.999998
        ),
        20: (
            0.080961, 0.160670, 0.207594, 0.265995, 0.324602, 0.333860, 0.374284, 0.404021, 0.425954, 0.478130,
            0.522041, 0.583836, 0.631467, 0.689366, 0.749592, 0.778345, 0.856343, 0.926614, 0.999977
        ),
    }),
    "cosine": (20291.169610019904, 0.006425412771142062, {
        10: (
            0.518754, 0.572974, 0.599724, 0.640936, 0.668335, 0.713266, 0.733666, 0.760927, 0.808639
        ),
        20: (
            0.491503, 0.539974, 0.564569, 0.585264, 0.600068, 0.614337, 0.624385, 0.640298, 0.651034, 0.665011,
            0.679115, 0.692661, 0.706079, 0.720661, 0.734720, 0.751769, 0.769224, 0.798309, 0.847557
        ),
    }),
}


def generic_levels(schedule, steps: int) -> Tensor | None:
    """The ``steps`` tuned levels σ_max, σ₁ … σₙ₋₁ (float64, descending) of ``schedule``, or None
    where the table has no entry for its σ range and this number of steps."""
    for sigma_max, sigma_min, table in GENERIC_LEVELS.values():
        if steps in table and _same(schedule.sigma_max, sigma_max) and _same(schedule.sigma_min, sigma_min):
            u = torch.tensor((0.0, *table[steps]), dtype=torch.float64)
            return torch.exp(math.log(sigma_max) + u * (math.log(sigma_min) - math.log(sigma_max)))
    return None


def _same(a, b) -> bool:
    a = float(a)
    return math.isfinite(a) and abs(a - b) <= 1e-9 * abs(b)
