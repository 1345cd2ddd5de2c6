"""Fit the generic tuned levels of ``difflab.sampling.generic_levels``: UniPC-3's noise levels
for one schedule and number of steps, tuned once on a family of Gaussian mixtures with exact
probability-flow ODE solutions (in the manner of Align Your Steps, Sabour et al. 2024).

The family: 12 mixtures of 8 components (stds 0.3–0.6) in 8, 16, 32 and 64 dimensions, seeds 101–112
(``--mixtures`` for more), and 3 Gaussians; 128 noises each. None is a problem of
``sampler_accuracy.py`` (seed 0), which scores the result. The objective is the *regret* of the
levels: per problem, log of UniPC-3's relative error on them over the least error of every fixed
configuration (each deterministic sampler on each named spacing, at the same model calls), both
floored at 2e-5 (a Gaussian can be solved exactly by accident); its smooth maximum over the family,
1/τ · log mean exp(τ·regret) with τ = 3, is minimised. Nelder–Mead starts from the best of the
shipped generic levels and the log-SNR, Karras and trailing spacings; a second, shorter search also
counts UniPC-2 and DPM-Solver++ 2M / 3M on the candidate levels among the rivals (the default should
not be beaten on its own levels either). Prints the table entries to paste into ``GENERIC_LEVELS``.

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
from difflab.sampling import DETERMINISTIC, sample
from difflab.sampling.spacing import SPACINGS, get_sigmas
from difflab.sampling.tuning import logits_from_sigmas, sigmas_from_logits
from sampler_accuracy import Ours, Problem

FLOOR = 2e-5
STARTS = ("generic", "log_snr", "karras", "trailing")  # "generic": the shipped levels, so a refit refines them
TEMPERATURE = 3.0  # of the smooth maximum over the family: 1/τ · log mean exp(τ·regret)
RIVALS = ("unipc", "dpmpp_2m", "dpmpp_3m")  # other solvers that may beat UniPC-3 on the candidate levels
MIXTURES = 12  # mixtures in the family, beside its three Gaussians


def family(schedule, mixtures: int = MIXTURES) -> list[Problem]:
    """Every problem of the family, each with its noise and exact solution (``sampler_accuracy.Problem``):
    ``mixtures`` mixtures (dimensions 8, 16, 32, 64 in turn, seeds from 101) and three Gaussians."""
    problems = [GaussianMixture.random(8, (8, 16, 32, 64)[k % 4], spread=1.0, std_range=(0.3, 0.6), seed=101 + k)
                for k in range(mixtures)]
    problems += [GaussianMixture.gaussian(dim=8, mean=mean, std=std) for mean, std in ((0.3, 0.4), (0.8, 0.7),
                                                                                     (0.5, 0.3))]
    return [Problem(f"family{k}", data, schedule,
                    torch.randn(128, data.dim, generator=torch.Generator().manual_seed(7 + k), dtype=torch.float64))
            for k, data in enumerate(problems)]


def solve(problem: Problem, method: str, sigmas) -> float:
    """Relative error of ``method`` on ``problem`` with the levels ``sigmas``."""
    model = problem.data.model(problem.schedule, "epsilon")
    return problem.error(sample(model, problem.noise, problem.schedule, method=method, sigmas=sigmas))


def best_fixed(problems: list[Problem], steps: int) -> np.ndarray:
    """Per problem, the least error of every fixed configuration at ``steps`` model calls: each
    deterministic sampler on each named spacing but the generic levels being fitted, run as
    ``sampler_accuracy.py`` runs them (Heun on the steps whose calls fit)."""
    configs = [Ours(f"{m}/{s}", m, s) for m in DETERMINISTIC for s in SPACINGS if s != "generic"]
    return np.array([min(p.error(c.run(p, steps)[0]) for c in configs) for p in problems])


def regret(problems: list[Problem], best: np.ndarray, sigmas, rivals=()) -> np.ndarray:
    """log(error of UniPC-3 on the levels / the best fixed configuration's), per problem (both
    floored at 2e-5); ``rivals``: solvers whose error on the same levels joins the best."""
    errors = np.array([solve(p, "unipc_3", sigmas) for p in problems])
    for method in rivals:
        best = np.minimum(best, [solve(p, method, sigmas) for p in problems])
    return np.log(np.maximum(errors, FLOOR)) - np.log(np.maximum(best, FLOOR))


def smooth_max(values: np.ndarray) -> float:
    return float(np.log(np.mean(np.exp(TEMPERATURE * values))) / TEMPERATURE)


def fit(schedule, steps: int, evals: int, rival_evals: int, mixtures: int = MIXTURES) -> tuple[list[float], dict]:
    """The interior levels as fractions of the log-σ range, and how the fit went: ``evals``
    solves of the family against the fixed configurations, then ``rival_evals`` with the rival
    solvers on the same levels counted too."""
    problems = family(schedule, mixtures)
    best = best_fixed(problems, steps)
    sigma_max, sigma_min = float(schedule.sigma_max), float(schedule.sigma_min)
    starts = {name: smooth_max(regret(problems, best, get_sigmas(schedule, steps, name))) for name in STARTS}
    start = min(starts, key=starts.get)
    x = logits_from_sigmas(get_sigmas(schedule, steps, start), sigma_min)
    for budget, rivals in ((evals, ()), (rival_evals, RIVALS)):
        found = {"value": math.inf, "logits": x}

        def objective(logits, rivals=rivals, found=found) -> float:
            value = smooth_max(regret(problems, best, sigmas_from_logits(logits, sigma_max, sigma_min), rivals))
            if value < found["value"]:
                found.update(value=value, logits=np.array(logits))
            return value

        if budget:
            minimize(objective, x, method="Nelder-Mead", options={"maxfev": budget, "xatol": 1e-5, "fatol": 1e-5,
                                                                   "adaptive": True})
            x = found["logits"]
    sigmas = sigmas_from_logits(x, sigma_max, sigma_min)
    final = regret(problems, best, sigmas, RIVALS)
    span = math.log(sigma_max) - math.log(sigma_min)
    fractions = [(math.log(sigma_max) - math.log(float(s))) / span for s in sigmas[1:-1]]  # drop σ_max and 0
    return fractions, {"starts": starts, "start": start, "objective": smooth_max(final),
                       "worst": float(np.exp(final.max()))}


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
    p.add_argument("--evals", type=int, default=2000,
                   help="Nelder-Mead's budget of solves of the family, against the fixed configurations")
    p.add_argument("--rival-evals", type=int, default=600,
                   help="then this many more with UniPC-2 and DPM-Solver++ 2M/3M on the same levels counted as rivals")
    p.add_argument("--mixtures", type=int, default=MIXTURES,
                   help="Gaussian mixtures in the family (beside its 3 Gaussians)")
    p.add_argument("--check", nargs="+", metavar="RUN", help="score the shipped levels on these trained runs instead")
    p.add_argument("--plot", metavar="PNG", help="draw the shipped 20-step levels beside the named spacings instead")
    args = p.parse_args(argv)
    if args.mixtures < 1:
        p.error(f"--mixtures must be at least 1 (the family's mixtures beside its 3 Gaussians), got {args.mixtures}")
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
            fractions, how = fit(schedule, steps, args.evals, args.rival_evals, args.mixtures)
            entries[steps] = fractions
            print(f"# {name}, {steps} steps: from {how['start']} ({how['starts'][how['start']]:.3f}) to "
                  f"{how['objective']:.3f} (worst problem {how['worst']:.2f}x the best fixed configuration) "
                  f"in {time.perf_counter() - start:.0f} s", flush=True)
        table = ", ".join(f"{steps}: ({', '.join(f'{u:.6f}' for u in fr)})" for steps, fr in entries.items())
        print(f'"{name}": ({float(schedule.sigma_max)!r}, {float(schedule.sigma_min)!r}, {{{table}}}),', flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
