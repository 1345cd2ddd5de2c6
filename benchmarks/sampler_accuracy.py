"""Sampler accuracy: difflab's deterministic samplers against diffusers' schedulers, on data whose
denoiser is exact in closed form (a Gaussian and a Gaussian mixture, :mod:`difflab.analytic`).

Every run starts from the same standard normal noise (x_T in the model's variance-preserving
space) and is scored against the probability-flow ODE solved to high accuracy (DOP853, 1e-11)
from σ_max to σ_min of the schedule, followed by the final denoise D(x, σ_min): a discrete-time
model is defined down to t = 0, where every sampler — ours and diffusers' — ends with its x̂₀.

    error = ‖x − x_ref‖ / ‖x_ref‖ over the whole batch (float64)

Budgets are counted in model calls (Heun: 2·steps − 1). Each solver gets the largest number of
steps whose model calls fit the budget, so Heun-type solvers run at odd call counts (9, 19, 49).
Stochastic samplers (DDPM, Euler-ancestral, SDE solvers) are left out: they do not converge to
the ODE solution.

    python benchmarks/sampler_accuracy.py            # full run, a few minutes on 2 CPU cores
    python benchmarks/sampler_accuracy.py --quick    # smoke run, under a minute
    python benchmarks/sampler_accuracy.py --defaults --schedule linear   # ~3 min per schedule

``--defaults`` checks ``sample()``'s default spacing (:func:`difflab.sampling.default_spacing`):
the Gaussian and mixtures in 8, 32 and 64 dimensions on the linear, scaled-linear and cosine
schedules (or ``--schedule``'s), every deterministic sampler × every named spacing of ours and
diffusers' grid; it prints the default's error as a ratio to the best fixed configuration of ours
and to the best of diffusers'.

Writes ``sampler_accuracy.json`` (every configuration's error at every budget, and the default's
ratios under ``"default"``) and ``sampler_accuracy.png`` (log-log error against model calls) into
``--out``.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from difflab import schedules
from difflab.analytic import GaussianMixture
from difflab.sampling import DETERMINISTIC, SPACINGS, model_calls, sample
from difflab.sampling.sample import DEFAULT_METHOD
from difflab.sampling.spacing import karras, log_snr
from difflab.sampling.tuning import tune_sigmas

BUDGETS = (5, 10, 20, 50)
PROBLEMS = ("gaussian", "mixture", "mixture32", "mixture64")
# --defaults: the problems and schedules on which sample()'s default spacing rule is checked.
DEFAULTS_CHECK = {"schedules": "linear,scaled_linear,cosine", "problems": ",".join(PROBLEMS)}
# The curves drawn by name in the plot besides best-ours / best-diffusers.
NAMED = (
    "ours:default",
    "ours:tuned unipc_3",
    "ours:dpmpp_2m/log_snr",
    "ours:ddim/trailing",
    "diffusers:DPMSolverMultistep(order=2)/linspace",
    "diffusers:UniPCMultistep(order=2,bh2)/linspace",
    "diffusers:EulerDiscrete/linspace/karras",
)


# ---------------------------------------------------------------------------------------------
# Problems and their references
# ---------------------------------------------------------------------------------------------
@dataclass
class Problem:
    name: str
    data: GaussianMixture
    schedule: schedules.DiscreteSchedule
    noise: torch.Tensor  # (N, dim) standard normal: the VP x_T every sampler starts from
    seed: int = 0
    _reference: torch.Tensor | None = field(default=None, repr=False)

    @property
    def reference(self) -> torch.Tensor:
        """ODE solution σ_max → σ_min, then D(x, σ_min); computed once per problem."""
        if self._reference is None:
            sch = self.schedule
            x = self.noise * float(sch.prior_std(sch.sigma_max))
            x = self.data.ode_solution(x, sch.sigma_max, sch.sigma_min)
            self._reference = self.data.denoise(x, sch.sigma_min)
        return self._reference

    def error(self, x: torch.Tensor) -> float:
        x = x.to(torch.float64)
        if not torch.isfinite(x).all():
            return math.inf
        return float((x - self.reference).norm() / self.reference.norm())


def make_problems(schedule_name: str, batch: int, seed: int, which: list[str]) -> list[Problem]:
    sch = schedules.get_schedule(schedule_name)
    if not sch.is_discrete:
        raise SystemExit(f"--schedule {schedule_name!r} is continuous; diffusers' schedulers need a discrete one")
    data = {
        # One Gaussian, off-centre so that the mean matters: its ODE has a closed form.
        "gaussian": GaussianMixture.gaussian(dim=8, mean=0.5, std=0.5),
        # 8 components in 8 dimensions, means ~ N(0, 1), stds in [0.3, 0.6].
        "mixture": GaussianMixture.random(8, 8, spread=1.0, std_range=(0.3, 0.6), seed=seed),
        # The same kind of mixture in 32 and 64 dimensions: farther-apart components, sharper
        # posterior weights, a probability-flow ODE that bends later (at smaller σ).
        "mixture32": GaussianMixture.random(8, 32, spread=1.0, std_range=(0.3, 0.6), seed=seed),
        "mixture64": GaussianMixture.random(8, 64, spread=1.0, std_range=(0.3, 0.6), seed=seed),
    }
    problems = []
    for name in which:
        gm = data[name]
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn(batch, gm.dim, generator=g, dtype=torch.float64)
        problems.append(Problem(f"{name}/{schedule_name}", gm, sch, noise, seed))
    return problems


# ---------------------------------------------------------------------------------------------
# Our configurations
# ---------------------------------------------------------------------------------------------
@dataclass
class Ours:
    name: str
    method: str
    spacing: object  # a SPACINGS name or f(schedule, steps); None: sample()'s default
    options: dict = field(default_factory=dict)

    def steps(self, budget: int) -> int:
        """The most steps whose model calls fit the budget (Heun: (budget + 1) // 2)."""
        steps = 1
        while model_calls(self.method, steps + 1) <= budget:
            steps += 1
        return steps

    def run(self, problem: Problem, budget: int) -> tuple[torch.Tensor, int]:
        steps = self.steps(budget)
        model = problem.data.model(problem.schedule, "epsilon")
        spacing = {} if self.spacing is None else {"spacing": self.spacing}
        x = sample(model, problem.noise, problem.schedule, method=self.method, steps=steps, **spacing,
                   **self.options)
        return x, model_calls(self.method, steps)


@dataclass
class OursTuned(Ours):
    """``difflab tune-steps``: the levels tuned to the problem's model on separate calibration
    noise (seed + 1), against a 200-step solve of the model — the exact ODE is never seen."""

    calibration: int = 1024
    max_evals: int | None = None  # the search's budget (None: tune_sigmas' default)

    def run(self, problem: Problem, budget: int) -> tuple[torch.Tensor, int]:
        steps = self.steps(budget)
        model = problem.data.model(problem.schedule, "epsilon")
        g = torch.Generator().manual_seed(problem.seed + 1)
        calib = torch.randn(self.calibration, *problem.noise.shape[1:], generator=g, dtype=torch.float64)
        tuned = tune_sigmas(model, calib, problem.schedule, method=self.method, steps=steps, init=self.spacing,
                            max_evals=self.max_evals, **self.options)
        x = sample(model, problem.noise, problem.schedule, method=self.method, sigmas=tuned.tensor(), **self.options)
        return x, model_calls(self.method, steps)


def _named_spacing(name: str, fn: Callable, **kwargs) -> Callable:
    f = functools.partial(fn, **kwargs)
    f.__name__ = name
    return f


def log_snr_clipped(schedule, steps: int, sigma_hi: float = 10.0, sigma_lo: float | None = None) -> torch.Tensor:
    """σ_max, then levels uniform in log-SNR on [σ_lo, σ_hi], then σ_min (if σ_lo is given).

    Plain log-SNR spacing spends about a quarter of a VP schedule's steps above σ = 10 and a
    quarter below σ = 0.03, where x̂₀ changes little for data of unit scale; this puts them in
    between. The first step σ_max → σ_hi stays one long step: only a solver with a corrector
    (UniPC) makes it second order; DPM-Solver++ keeps its first-order error there, which does not
    shrink with more steps (see the JSON: an error floor at 50 calls).
    """
    hi = min(sigma_hi, schedule.sigma_max / 2)
    use_lo = sigma_lo is not None and sigma_lo > 1.5 * schedule.sigma_min
    inner = steps - 1 - int(use_lo)
    if inner < 1:
        return torch.tensor([schedule.sigma_max, schedule.sigma_min][:steps], dtype=torch.float64)
    mid = log_snr(schedule, inner, sigma_min=sigma_lo if use_lo else None, sigma_max=hi)
    ends = [mid.new_tensor([schedule.sigma_max]), mid] + ([mid.new_tensor([schedule.sigma_min])] if use_lo else [])
    return torch.cat(ends)


def our_configs(extended: bool, tuned: bool = True, calibration: int = 1024,
                tune_evals: int | None = None) -> list[Ours]:
    """Every deterministic sampler × every spacing (plus Karras ρ = 3, 5); with ``tuned``, the
    default sampler on levels tuned to the model (``difflab tune-steps``); with ``extended``, the
    solver options and spacings of the investigation (orders, UniPC variants, final orders)."""
    spacings: dict[str, object] = {name: name for name in SPACINGS}
    spacings["karras_rho3"] = _named_spacing("karras_rho3", karras, rho=3.0)
    spacings["karras_rho5"] = _named_spacing("karras_rho5", karras, rho=5.0)
    methods = list(DETERMINISTIC)
    configs = [Ours(f"ours:{m}/{s}", m, sp) for m in methods for s, sp in spacings.items()]
    configs.append(Ours("ours:default", DEFAULT_METHOD, None))  # sample()'s default: default_spacing()
    if tuned:
        configs.append(OursTuned(f"ours:tuned {DEFAULT_METHOD}", DEFAULT_METHOD, "trailing",
                                 calibration=calibration, max_evals=tune_evals))
    if extended:
        extra_spacings = {
            "log_snr": "log_snr",
            "karras_rho3": spacings["karras_rho3"],
            "log_snr_clip10": log_snr_clipped,
            "log_snr_clip10_0.03": _named_spacing("log_snr_clip10_0.03", log_snr_clipped, sigma_lo=0.03),
        }
        variants = {
            "unipc": [{"variant": "bh1"}, {"lower_order_final": False}, {"variant": "bh1", "lower_order_final": False}],
            "unipc_3": [{"variant": "bh1"}, {"lower_order_final": False},
                        {"variant": "bh1", "lower_order_final": False}],
            "dpmpp_2m": [{"lower_order_final": False}],
            "dpmpp_3m": [{"lower_order_final": False}],
        }
        for method, option_sets in variants.items():
            for opts in option_sets:
                tag = ",".join(f"{k}={v}" for k, v in opts.items())
                for s, sp in extra_spacings.items():
                    configs.append(Ours(f"ours:{method}({tag})/{s}", method, sp, opts))
        for s in ("log_snr_clip10", "log_snr_clip10_0.03"):
            for method in methods:
                configs.append(Ours(f"ours:{method}/{s}", method, extra_spacings[s]))
    return configs


# ---------------------------------------------------------------------------------------------
# diffusers' configurations
# ---------------------------------------------------------------------------------------------
@dataclass
class Diffusers:
    name: str
    cls: type
    kwargs: dict

    def make(self, schedule):
        # The exact betas of our schedule (diffusers keeps them in float32).
        return self.cls(num_train_timesteps=schedule.num_steps, trained_betas=schedule.betas.tolist(),
                        prediction_type="epsilon", **self.kwargs)

    def run(self, problem: Problem, budget: int) -> tuple[torch.Tensor, int]:
        sched = self.make(problem.schedule)
        n = self._steps(sched, budget)
        sched.set_timesteps(n)
        model = problem.data.model(problem.schedule, "epsilon")
        x = problem.noise * sched.init_noise_sigma
        calls = 0
        for t in sched.timesteps:
            x_in = sched.scale_model_input(x, t)
            out = model(x_in, torch.full((x.shape[0],), float(t), dtype=torch.float64))
            calls += 1
            x = sched.step(out, t, x).prev_sample
        return x, calls

    @staticmethod
    def _steps(sched, budget: int) -> int:
        """The most inference steps whose timesteps (one model call each) fit the budget.

        Calls grow about linearly with steps (n, n + 1 for PLMS, 2n − 1 for Heun and DPM2), so
        scale down from n = budget, then step up while the next n still fits."""

        def calls(n):
            sched.set_timesteps(n)
            return len(sched.timesteps)

        n = budget
        while n > 1 and (c := calls(n)) > budget:
            n = max(1, min(n - 1, n * budget // c))
        while calls(n + 1) <= budget:
            n += 1
        return n


def diffusers_configs(full_grid: bool = True) -> list[Diffusers]:
    """Each solver x every timestep_spacing x every sigma option it accepts (``full_grid``), or
    each solver with its default spacing and sigmas only."""
    import diffusers

    zero_tau = _zero_tau
    solvers = [
        ("DDIM", "DDIMScheduler", {"clip_sample": False}),
        ("PNDM(plms)", "PNDMScheduler", {"skip_prk_steps": True}),
        ("EulerDiscrete", "EulerDiscreteScheduler", {}),
        ("HeunDiscrete", "HeunDiscreteScheduler", {}),
        ("KDPM2Discrete", "KDPM2DiscreteScheduler", {}),
        ("LMSDiscrete", "LMSDiscreteScheduler", {}),
        ("DPMSolverMultistep(order=2)", "DPMSolverMultistepScheduler", {"solver_order": 2}),
        ("DPMSolverMultistep(order=3)", "DPMSolverMultistepScheduler", {"solver_order": 3}),
        ("DPMSolverMultistep(order=2,heun)", "DPMSolverMultistepScheduler", {"solver_order": 2, "solver_type": "heun"}),
        ("DPMSolverMultistep(order=2,euler_at_final)", "DPMSolverMultistepScheduler",
         {"solver_order": 2, "euler_at_final": True}),
        ("DPMSolverMultistep(order=3,no_lower_final)", "DPMSolverMultistepScheduler",
         {"solver_order": 3, "lower_order_final": False}),
        ("DPMSolverSinglestep(order=2)", "DPMSolverSinglestepScheduler", {"solver_order": 2}),
        ("DPMSolverSinglestep(order=3)", "DPMSolverSinglestepScheduler", {"solver_order": 3}),
        ("UniPCMultistep(order=2,bh2)", "UniPCMultistepScheduler", {"solver_order": 2}),
        ("UniPCMultistep(order=3,bh2)", "UniPCMultistepScheduler", {"solver_order": 3}),
        ("UniPCMultistep(order=2,bh1)", "UniPCMultistepScheduler", {"solver_order": 2, "solver_type": "bh1"}),
        ("UniPCMultistep(order=3,bh1)", "UniPCMultistepScheduler", {"solver_order": 3, "solver_type": "bh1"}),
        ("UniPCMultistep(order=3,no_lower_final)", "UniPCMultistepScheduler",
         {"solver_order": 3, "lower_order_final": False}),
        ("DEISMultistep(order=2)", "DEISMultistepScheduler", {"solver_order": 2}),
        ("DEISMultistep(order=3)", "DEISMultistepScheduler", {"solver_order": 3}),
        ("SASolver(ode,2/2)", "SASolverScheduler", {"tau_func": zero_tau}),
        ("SASolver(ode,3/3)", "SASolverScheduler", {"tau_func": zero_tau, "predictor_order": 3, "corrector_order": 3}),
    ]
    sigma_options = ["use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas"]
    configs = []
    for name, cls_name, kwargs in solvers:
        cls = getattr(diffusers, cls_name, None)
        if cls is None:
            continue
        params = inspect.signature(cls.__init__).parameters
        spacings = ["leading", "linspace", "trailing"] if "timestep_spacing" in params else [None]
        options = [None] + [o for o in sigma_options if o in params]
        if not full_grid:
            spacings, options = spacings[1:2] or spacings, [None]
        for spacing in spacings:
            for option in options:
                kw = dict(kwargs)
                label = name
                if spacing is not None:
                    kw["timestep_spacing"] = spacing
                    label += f"/{spacing}"
                if option is not None:
                    kw[option] = True
                    label += "/" + option.removeprefix("use_").removesuffix("_sigmas")
                configs.append(Diffusers(f"diffusers:{label}", cls, kw))
    return configs


def _zero_tau(t):
    """SA-Solver's stochasticity τ(t) = 0: its deterministic (ODE) form."""
    return 0.0


# ---------------------------------------------------------------------------------------------
# Running, reporting
# ---------------------------------------------------------------------------------------------
def run_problem(problem: Problem, ours, theirs, budgets, log) -> dict:
    """table[config] = {"calls": [...], "error": [...]}, or {"skipped": why} if it raised."""
    t0 = time.perf_counter()
    _ = problem.reference
    log(f"[{problem.name}] reference in {time.perf_counter() - t0:.1f}s")
    table = {}
    for side, configs in (("ours", ours), ("diffusers", theirs)):
        t0 = time.perf_counter()
        skipped = 0
        for cfg in configs:
            row = {"calls": [], "error": []}
            try:
                for budget in budgets:
                    x, calls = cfg.run(problem, budget)
                    row["calls"].append(calls)
                    row["error"].append(problem.error(x))
            except Exception as e:  # a config a scheduler rejects: skip it, say why
                skipped += 1
                row = {"skipped": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"}
            table[cfg.name] = row
        log(f"[{problem.name}] {side}: {len(configs) - skipped} configurations run, "
            f"{skipped} skipped, {time.perf_counter() - t0:.1f}s")
    return table


def _log(message: str) -> None:
    print(message, flush=True)


def _tasks(args) -> list[tuple[str, str]]:
    """(schedule, problem) pairs, one per worker job."""
    return [(schedule, name) for schedule in args.schedules for name in args.which]


def _worker(args, index: int) -> tuple[str, dict]:
    """One problem in a worker process (configurations are rebuilt there, not pickled)."""
    _setup(args)
    schedule, name = _tasks(args)[index]
    problem = make_problems(schedule, args.batch, args.seed, [name])[0]
    theirs = diffusers_configs(full_grid=not args.quick) if args.with_diffusers else []
    ours = our_configs(args.extended, tuned=args.tuned, calibration=args.calibration, tune_evals=args.tune_evals)
    return problem.name, run_problem(problem, ours, theirs, args.budget_list, _log)


def run_all(args) -> dict:
    """results[problem][config]; problems run in parallel processes with ``--jobs`` > 1."""
    n = len(_tasks(args))
    if args.jobs > 1 and n > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(args.jobs, n)) as pool:
            return dict(pool.map(_worker, [args] * n, range(n)))
    return dict(_worker(args, i) for i in range(n))


def _setup(args) -> None:
    warnings.filterwarnings("ignore")
    if args.with_diffusers:
        import diffusers

        diffusers.utils.logging.set_verbosity_error()  # e.g. "Changing scheduler ... lower_order_final"
    # The tensors are tiny (batch x 8): threads only add overhead, and with 2 threads torch's
    # float64 softmax (the mixture's posterior weights) runs ~500x slower than with 1.
    torch.set_num_threads(args.threads)


def best(table: dict, side: str, i: int) -> tuple[str, float, int]:
    rows = [(r["error"][i], name, r["calls"][i]) for name, r in table.items()
            if name.startswith(side + ":") and "error" in r]
    err, name, calls = min(rows)
    return name, err, calls


def summarize(results: dict, budgets) -> list[dict]:
    summary = []
    for problem, table in results.items():
        for i, budget in enumerate(budgets):
            o_name, o_err, o_calls = best(table, "ours", i)
            d_name, d_err, d_calls = best(table, "diffusers", i)
            summary.append({
                "problem": problem, "budget": budget,
                "ours": o_name, "ours_error": o_err, "ours_calls": o_calls,
                "diffusers": d_name, "diffusers_error": d_err, "diffusers_calls": d_calls,
                "ratio": o_err / d_err if d_err > 0 else math.inf,
            })
    return summary


def fixed_names() -> set[str]:
    """Our fixed configurations: every deterministic sampler x every named spacing."""
    return {f"ours:{m}/{s}" for m in DETERMINISTIC for s in SPACINGS}


def default_report(results: dict, budgets) -> list[dict]:
    """Per problem and budget: sample()'s default against the best fixed configuration of ours
    (and the best diffusers configuration, where diffusers ran)."""
    fixed = fixed_names()
    rows = []
    for problem, table in results.items():
        default = table["ours:default"]
        for i, budget in enumerate(budgets):
            ours = min((r["error"][i], name) for name, r in table.items() if name in fixed and "error" in r)
            theirs = [(r["error"][i], name) for name, r in table.items()
                      if name.startswith("diffusers:") and "error" in r]
            d_err, d_name = min(theirs) if theirs else (math.nan, "")
            err = default["error"][i]
            rows.append({
                "problem": problem, "budget": budget, "default_error": err,
                "best_fixed": ours[1], "best_fixed_error": ours[0], "vs_fixed": err / ours[0] if ours[0] else math.inf,
                "best_diffusers": d_name, "best_diffusers_error": d_err,
                "vs_diffusers": err / d_err if d_err and d_err == d_err else math.nan,
            })
    return rows


def print_default_table(rows: list[dict], goal: float) -> None:
    """sample()'s default (UniPC-3, spacing by default_spacing()) as a ratio to the best."""
    print(f"{'problem':<24} {'calls':>5}  {'default':>9}  {'best fixed ours':<26} {'error':>9}  {'x fixed':>7}  "
          f"{'x diffusers':>11}  goal")
    for r in rows:
        mark = f"<= {goal}: " + ("met" if r["vs_fixed"] <= goal else "MISSED")
        print(f"{r['problem']:<24} {r['budget']:>5}  {r['default_error']:>9.2e}  {r['best_fixed'][5:]:<26} "
              f"{r['best_fixed_error']:>9.2e}  {r['vs_fixed']:>7.2f}  {r['vs_diffusers']:>11.2f}  {mark}")


def print_table(summary: list[dict], goals: dict) -> None:
    w_o = max(len(s["ours"]) for s in summary) - len("ours:")
    w_d = max(len(s["diffusers"]) for s in summary) - len("diffusers:")
    header = (f"{'problem':<18} {'calls':>5}  {'best ours':<{w_o}} {'error':>9}  "
              f"{'best diffusers':<{w_d}} {'error':>9}  {'ratio':>6}  goal")
    print(header)
    print("-" * len(header))
    for s in summary:
        goal = goals.get(s["budget"])
        mark = "" if goal is None else f"<= {goal}: " + ("met" if s["ratio"] <= goal else "MISSED")
        print(f"{s['problem']:<18} {s['budget']:>5}  {s['ours'][5:]:<{w_o}} {s['ours_error']:>9.2e}  "
              f"{s['diffusers'][10:]:<{w_d}} {s['diffusers_error']:>9.2e}  {s['ratio']:>6.3f}  {mark}")
    print("(calls: the budget; Heun-type solvers use one call fewer, see the JSON)")


def plot(results: dict, summary: list[dict], budgets, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    problems = list(results)
    fig, axes = plt.subplots(1, len(problems), figsize=(6.5 * len(problems), 5), squeeze=False)
    for ax, problem in zip(axes[0], problems):
        table = results[problem]
        rows = [s for s in summary if s["problem"] == problem]
        ax.plot(budgets, [s["ours_error"] for s in rows], "o-", lw=2.5, color="C3", label="best difflab (any config)")
        ax.plot(budgets, [s["diffusers_error"] for s in rows], "s-", lw=2.5, color="C0",
                label="best diffusers (any config)")
        for k, name in enumerate(NAMED):
            r = table.get(name)
            if r and "error" in r:
                ax.plot(r["calls"], r["error"], "--", marker=".", color=f"C{k + 4}", alpha=0.8, label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("model calls")
        ax.set_ylabel("relative error vs. ODE reference")
        ax.set_title(problem)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description="ODE error of difflab's deterministic samplers vs diffusers' schedulers on closed-form data.",
    )
    p.add_argument("--quick", action="store_true",
                   help="smoke run: the mixture problem only, 32 samples, budgets 5 and 10, no extended configs, "
                        "diffusers' schedulers with their default spacing only (seconds)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results",
                   help="folder for sampler_accuracy.json and sampler_accuracy.png (default: benchmarks/results/)")
    p.add_argument("--schedule",
                   help="comma-separated discrete noise schedules of the problems: linear (default), scaled_linear, "
                        f"cosine, sigmoid; every problem runs on each. --defaults: {DEFAULTS_CHECK['schedules']}")
    p.add_argument("--problems", default="gaussian,mixture",
                   help="comma-separated problems: gaussian (one Gaussian, mean 0.5, std 0.5, 8-d), "
                        "mixture (8 components, 8-d, stds 0.3-0.6), mixture32 and mixture64 (the same in 32 and "
                        f"64 dimensions); default: gaussian,mixture. --defaults: {DEFAULTS_CHECK['problems']}")
    p.add_argument("--defaults", action="store_true",
                   help="the check of sample()'s default spacing rule (docs/benchmarks.md): every problem on the "
                        "linear, scaled_linear and cosine schedules (or --schedule's), no extended or tuned "
                        "configurations")
    p.add_argument("--budgets", default=",".join(map(str, BUDGETS)),
                   help="comma-separated model-call budgets (default: 5,10,20,50)")
    p.add_argument("--batch", type=int, default=128, help="samples per problem (default: 128)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise and of the mixture's parameters (default: 0)")
    p.add_argument("--no-extended", dest="extended", action="store_false",
                   help="only samplers x spacings for ours, without the solver options of the investigation "
                        "(UniPC bh1, lower_order_final=False, log-SNR clipped to [0.03, 10] after one long first step)")
    p.add_argument("--no-tuned", dest="tuned", action="store_false",
                   help="leave out the tuned configuration (UniPC-3 on levels fitted by `difflab tune-steps` to "
                        "each problem's model on separate calibration noise; the slowest part of the run)")
    p.add_argument("--calibration", type=int, default=1024,
                   help="calibration noises of the tuned configuration (default: 1024; with 128 the tuned "
                        "levels overfit the few samples near component boundaries that dominate the mixture's error)")
    p.add_argument("--tune-evals", type=int, metavar="N",
                   help="solver runs the tuned configuration's search may use (default: 150 per step, at most 3000)")
    p.add_argument("--no-diffusers", dest="with_diffusers", action="store_false",
                   help="run only difflab's configurations (no ratio, no diffusers needed)")
    p.add_argument("--jobs", type=int, default=2, help="problems run in parallel processes (default: 2)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads per process (default: 1; the tensors are tiny and more threads are slower)")
    args = p.parse_args(argv)

    if args.quick:
        args.problems, args.batch, args.budgets, args.extended = "mixture", 32, "5,10", False
    if args.defaults:
        args.schedule = args.schedule or DEFAULTS_CHECK["schedules"]
        args.problems, args.extended, args.tuned = DEFAULTS_CHECK["problems"], False, False
    args.schedule = args.schedule or "linear"
    budgets = [int(b) for b in args.budgets.split(",")]
    which = [w.strip() for w in args.problems.split(",")]
    unknown = [w for w in which if w not in PROBLEMS]
    if unknown:
        raise SystemExit(f"unknown problem(s) {unknown}; --problems takes any of {', '.join(PROBLEMS)}")
    args.schedules = [s.strip() for s in args.schedule.split(",")]
    if args.with_diffusers:
        try:
            import diffusers  # noqa: F401
        except ImportError:
            raise SystemExit("diffusers is not installed: `pip install diffusers`, or pass --no-diffusers") from None

    args.budget_list, args.which = budgets, which
    start = time.perf_counter()
    results = run_all(args)
    elapsed = time.perf_counter() - start

    args.out.mkdir(parents=True, exist_ok=True)
    summary = summarize(results, budgets) if args.with_diffusers else []
    defaults = default_report(results, budgets)
    out_json = args.out / "sampler_accuracy.json"
    settings = {k: str(v) for k, v in vars(args).items() if k not in ("budget_list", "which", "schedules")}
    out_json.write_text(json.dumps({
        "settings": settings, "budgets": budgets, "seconds": round(elapsed, 1),
        "summary": summary, "default": defaults, "results": results,
    }, indent=1))
    print()
    if summary:
        print_table(summary, goals={10: 0.5, 20: 0.7})
        plot(results, summary, budgets, args.out / "sampler_accuracy.png")
    else:
        for problem, table in results.items():
            for i, budget in enumerate(budgets):
                name, err, _ = best(table, "ours", i)
                print(f"{problem:<18} {budget:>5}  {name:<50} {err:.2e}")
    print()
    print_default_table(defaults, goal=1.1)
    print(f"\n{elapsed:.0f}s; results in {out_json}" + (f" and {args.out / 'sampler_accuracy.png'}" if summary else ""))


if __name__ == "__main__":
    main()
