"""Fit the generic tuned levels of ``difflab.sampling.generic_levels``: UniPC-3's noise levels
for one schedule and number of steps, tuned once on a family of Gaussian mixtures with exact
probability-flow ODE solutions (in the manner of Align Your Steps, Sabour et al. 2024).

The family: 12 mixtures of 8 components (stds 0.3–0.6) in 8, 16, 32 and 64 dimensions, seeds
101–112, and 3 Gaussians; 128 noises each. None is a problem of ``sampler_accuracy.py`` (seed 0),
which scores the result. The objective is the mean over the family of log max(relative error,
2e-5) (the floor: a Gaussian can be solved exactly by accident and would outweigh the mixtures);
Nelder–Mead starts from the best of the log-SNR, Karras and trailing spacings. Prints the
table entries to paste into ``GENERIC_LEVELS``.

    python benchmarks/generic_levels.py --schedules linear scaled_linear cosine --steps 10 20

``--check RUN ...`` instead scores the shipped levels on trained runs: UniPC-3's relative error
against a 200-step UniPC-3 / log-SNR solve of the same network (256 fresh noises, the run's
guidance), for the generic levels and the named spacings.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from scipy.optimize import minimize

from difflab import schedules
from difflab.analytic import GaussianMixture
from difflab.sampling import sample
from difflab.sampling.spacing import get_sigmas
from difflab.sampling.tuning import logits_from_sigmas, sigmas_from_logits
from sampler_accuracy import Problem

FLOOR = 2e-5
STARTS = ("log_snr", "karras", "trailing")


def family(schedule) -> list[Problem]:
    """Every problem of the family, each with its noise and exact solution (``sampler_accuracy.Problem``)."""
    problems = [GaussianMixture.random(8, dim, spread=1.0, std_range=(0.3, 0.6), seed=101 + k)
                for k, dim in enumerate([8, 16, 32, 64] * 3)]
    problems += [GaussianMixture.gaussian(dim=8, mean=mean, std=std) for mean, std in ((0.3, 0.4), (0.8, 0.7),
                                                                                     (0.5, 0.3))]
    return [Problem(f"family{k}", data, schedule,
                    torch.randn(128, data.dim, generator=torch.Generator().manual_seed(7 + k), dtype=torch.float64))
            for k, data in enumerate(problems)]


def score(problems: list[Problem], schedule, sigmas) -> float:
    errors = [p.error(sample(p.data.model(schedule, "epsilon"), p.noise, schedule, method="unipc_3", sigmas=sigmas))
              for p in problems]
    return float(np.mean(np.log(np.maximum(errors, FLOOR))))


def fit(schedule, steps: int, evals: int) -> tuple[list[float], dict]:
    """The interior levels as fractions of the log-σ range, and how the fit went."""
    problems = family(schedule)
    sigma_max, sigma_min = float(schedule.sigma_max), float(schedule.sigma_min)
    starts = {name: score(problems, schedule, get_sigmas(schedule, steps, name)) for name in STARTS}
    start = min(starts, key=starts.get)
    best = {"value": math.inf, "logits": None}

    def objective(logits) -> float:
        value = score(problems, schedule, sigmas_from_logits(logits, sigma_max, sigma_min))
        if value < best["value"]:
            best.update(value=value, logits=np.array(logits))
        return value

    x0 = logits_from_sigmas(get_sigmas(schedule, steps, start), sigma_min)
    minimize(objective, x0, method="Nelder-Mead", options={"maxfev": evals, "xatol": 1e-5, "fatol": 1e-5,
                                                            "adaptive": True})
    sigmas = sigmas_from_logits(best["logits"], sigma_max, sigma_min)[:-1]  # drop the final 0
    span = math.log(sigma_max) - math.log(sigma_min)
    fractions = [(math.log(sigma_max) - math.log(float(s))) / span for s in sigmas[1:]]
    return fractions, {"starts": starts, "start": start, "objective": best["value"]}


def check_runs(runs: list[str], steps_list: list[int], n: int = 256) -> None:
    from difflab.pipelines import DiffusionModel
    from difflab.pipelines.generate import SamplerSettings, plan
    from difflab.pipelines.tune import starting_noise

    for run in runs:
        model = DiffusionModel.load(run)
        job = plan(model, n, SamplerSettings.resolve(model, "unipc_3", max(steps_list)), seed=20_000_000)
        noise, cond, schedule = starting_noise(model, job.seeds), job.cond(range(n)), model.schedule
        reference = sample(job.denoiser, noise, schedule, method="unipc_3", steps=200, spacing="log_snr", cond=cond)
        for steps in steps_list:
            row = {}
            for spacing in ("generic", "trailing", "log_snr", "karras"):
                x = sample(job.denoiser, noise, schedule, method="unipc_3", steps=steps, spacing=spacing, cond=cond)
                row[spacing] = float((x - reference).norm() / reference.norm())
            print(f"{run} ({schedule.name}), {steps} steps: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()),
                  flush=True)


def plot_levels(path: str, steps: int = 20) -> None:
    """log σ of each level against its index: the shipped generic levels beside the named spacings."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from difflab.sampling.generic_levels import GENERIC_LEVELS

    fig, axes = plt.subplots(1, len(GENERIC_LEVELS), figsize=(4.2 * len(GENERIC_LEVELS), 3.6))
    for ax, name in zip(axes, GENERIC_LEVELS):
        schedule = schedules.get_schedule(name)
        for spacing in ("generic", "trailing", "log_snr", "karras"):
            levels = get_sigmas(schedule, steps, spacing)[:-1]
            ax.plot(range(steps), levels.log10().numpy(), "o-" if spacing == "generic" else ".--", label=spacing,
                    markersize=4 if spacing == "generic" else 3)
        ax.set_title(f"{name}, {steps} steps")
        ax.set_xlabel("step")
        ax.set_ylabel("log10 sigma")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--schedules", nargs="+", default=["linear", "scaled_linear", "cosine"])
    p.add_argument("--steps", type=int, nargs="+", default=[10, 20])
    p.add_argument("--evals", type=int, default=2000, help="Nelder-Mead's budget of solves of the family")
    p.add_argument("--check", nargs="+", metavar="RUN", help="score the shipped levels on these trained runs instead")
    p.add_argument("--plot", metavar="PNG", help="draw the shipped 20-step levels beside the named spacings instead")
    args = p.parse_args(argv)
    if args.plot:
        plot_levels(args.plot)
        return 0
    if args.check:
        check_runs(args.check, args.steps)
        return 0
    for name in args.schedules:
        schedule = schedules.get_schedule(name)
        entries = {}
        for steps in args.steps:
            start = time.perf_counter()
            fractions, how = fit(schedule, steps, args.evals)
            entries[steps] = fractions
            print(f"# {name}, {steps} steps: from {how['start']} ({how['starts'][how['start']]:.3f}) to "
                  f"{how['objective']:.3f} in {time.perf_counter() - start:.0f} s", flush=True)
        table = ", ".join(f"{steps}: ({', '.join(f'{u:.6f}' for u in fr)})" for steps, fr in entries.items())
        print(f'"{name}": ({float(schedule.sigma_max)!r}, {float(schedule.sigma_min)!r}, {{{table}}}),', flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
