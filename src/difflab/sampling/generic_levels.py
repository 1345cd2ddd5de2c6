"""Generic tuned levels: the default sampler's noise levels, tuned once per built-in schedule and
step count on a family of Gaussian mixtures, in the manner of "Align Your Steps" (Sabour et al.
2024), whose schedules, optimised on some data, carry over to other models of the same kind.

A fixed spacing (trailing, log-SNR, Karras) is a formula; :mod:`difflab.sampling.tuning` fits the
levels to one model. In between, these levels were fitted to many problems at once, to be never
far from the best fixed configuration on any of them (a minimax regret):

    rₖ(σ) = log max(eₖ(UniPC-3; σ), 2·10⁻⁵) − log max(min over fixed configurations c of eₖ(c), 2·10⁻⁵)
    min over σ₁ > … > σₙ₋₁ of  1/τ · log meanₖ exp(τ·rₖ(σ)),  τ = 3

with eₖ the relative error against problem k's exact probability-flow ODE solution, the fixed
configurations every deterministic sampler on every named spacing at the same number of model
calls (and, in a second, shorter search, UniPC-2 and DPM-Solver++ 2M / 3M on the candidate levels
themselves), and the problems 12 Gaussian mixtures (8 components, stds 0.3–0.6, in 8, 16, 32 and
64 dimensions, seeds 101–112) and 3 Gaussians — none of them the problems
``benchmarks/sampler_accuracy.py`` scores. The smooth maximum (τ = 3) weighs the worst problems
most; the floor keeps a Gaussian, which any deterministic solver can get exactly right by
accident, from deciding the fit. Nelder–Mead from the best of the previous table and the log-SNR,
Karras and trailing spacings; ``benchmarks/generic_levels.py`` repeats the fit and prints the
table below. (The first table minimised the family's mean log error instead; on the benchmark's
problems it was up to 3.5× the best fixed configuration, and its errors about twice these.)

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
            0.238608, 0.342330, 0.399606, 0.457721, 0.510858, 0.548995, 0.645969, 0.674095, 0.771823
        ),
        20: (
            0.193728, 0.237322, 0.342414, 0.385358, 0.400747, 0.446723, 0.454712, 0.488919, 0.495842, 0.529537,
            0.535427, 0.567611, 0.609268, 0.634796, 0.674358, 0.767963, 0.801942, 0.861940, 1.000000
        ),
    }),
    "scaled_linear": (14.614641229333644, 0.029167158151720367, {
        10: (
            0.156089, 0.232066, 0.361952, 0.458263, 0.528171, 0.708929, 0.755136, 0.858654, 1.000000
        ),
        20: (
            0.047506, 0.181830, 0.202907, 0.273563, 0.317861, 0.324300, 0.363575, 0.400410, 0.405795, 0.449701,
            0.490620, 0.533192, 0.593411, 0.633852, 0.741482, 0.768029, 0.860191, 0.915559, 1.000000
        ),
    }),
    "cosine": (20291.169610019904, 0.006425412771142062, {
        10: (
            0.536071, 0.564166, 0.607919, 0.636530, 0.677800, 0.689894, 0.754447, 0.771600, 0.831779
        ),
        20: (
            0.480175, 0.525191, 0.545214, 0.583793, 0.590972, 0.614203, 0.618724, 0.635696, 0.647624, 0.657508,
            0.672235, 0.688037, 0.698885, 0.724718, 0.734941, 0.782505, 0.797095, 0.825994, 0.875630
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
