"""``difflab distill RUN --steps N --out OUT``: progressive distillation (Salimans & Ho 2022) of a
trained run into a student that samples in N DDIM steps, consistency distillation (Song et al.
2023, ``--method consistency``) into one that samples in any of 1 … ``--levels`` steps, or
adversarial refinement of a progressive student against real images (``--method adversarial``).

    difflab distill RUN --steps N --out OUT [--method progressive|consistency|adversarial] [--start-steps 64]
        [--levels 40] [--target-ema 0.95] [--adversarial-weight 0.1] [--discriminator pixel|teacher]
        [--regression-weight 1] [--distribution-weight 0]
        [--iterations-per-round K] [--lr LR] [--batch-size B] [--guidance-range LO,HI | none] [--spacing S]
        [--guidance-interval SIGMA_LO SIGMA_HI] [--seconds BUDGET] [--resume]
        [--set KEY=VALUE]... [--no-progress]

Each round halves the steps: a student of 32 steps learns RUN's 64-step DDIM sampler, a student of
16 learns that student's, and so on down to N. A round is one training run of
:class:`~difflab.training.objectives.DistillationObjective` (its own checkpoints, resume, time
budget, and the paper's learning rate decaying linearly to 0 within the round); the last round
writes OUT/checkpoint, the earlier ones OUT/rounds/<steps>-steps/checkpoint, each a normal run
that samples with its own step count. The rounds train on RUN's training config (data, seed, ...)
with the flags and ``--set`` applied. Consistency distillation is one round of
:class:`~difflab.training.objectives.ConsistencyDistillationObjective` writing OUT/checkpoint, and
adversarial refinement one round of :class:`~difflab.training.objectives.AdversarialDistillationObjective`
(RUN a progressive student, OUT a student of the same grid). docs/distillation.md.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

DEFAULT_GUIDANCE_RANGE = (1.0, 5.0)
DEFAULT_START = 64
DEFAULT_ITERATIONS = {"progressive": 2000, "consistency": 8000, "adversarial": 2400}
# adversarial refinement starts from a trained student: a small learning rate and GAN-style Adam moments
ADVERSARIAL_LR, ADVERSARIAL_BETAS = 5e-5, (0.0, 0.99)  # measured: docs/benchmarks.md


def register(subparsers) -> None:
    from ..training.config import DISCRIMINATORS, DISTILL_METHODS, DistillSection

    defaults = DistillSection()
    p = subparsers.add_parser(
        "distill",
        help="distil a trained run into a few-step sampler (progressive, consistency or adversarial distillation)",
        description="Progressive distillation (Salimans & Ho 2022): a student learns to take two of its teacher's "
        "DDIM steps in one, round after round (64 -> 32 -> ... -> --steps). Consistency distillation (Song et al. "
        "2023, --method consistency): in one round a student learns to map any point of the teacher's ODE trajectory "
        "to its origin, and samples in any of 1 ... --levels steps. A class-conditional run trained with label "
        "dropout is distilled with classifier-free guidance: the student takes the guidance scale w as an input "
        "(Meng et al. 2023). Adversarial distillation (--method adversarial, RUN a progressive student): the student "
        "samples its N steps with gradients, a discriminator compares the samples with real images, and a "
        "regression to RUN's own samples of the same noise keeps it on RUN's map (ADD, DMD2). The result OUT is a "
        "normal run: `difflab sample OUT --steps N` (docs/distillation.md).",
    )
    p.add_argument("run", metavar="RUN", help="the teacher: a difflab diffusion run (U-Net or DiT, unconditional or "
                   "class-conditional), or a distilled run to halve further")
    p.add_argument("--steps", type=int, required=True, help="the DDIM steps of the final student (consistency: its "
                   "default sampling steps; it samples with any of 1 ... --levels)")
    p.add_argument("--method", choices=DISTILL_METHODS, default="progressive",
                   help="progressive (halve the steps per round; default), consistency distillation (one round, "
                   "pseudo-Huber loss, an EMA target network), or adversarial: refine a progressive student RUN "
                   "against real images with a discriminator (one round, the same steps)")
    p.add_argument("--out", required=True, metavar="DIR", help="the final student's run folder (earlier rounds go to "
                   "DIR/rounds/<steps>-steps)")
    p.add_argument("--start-steps", type=int, metavar="N0", help="the teacher's DDIM steps in the first round: "
                   f"--steps times a power of two (default {DEFAULT_START}; a distilled RUN starts from its own)")
    p.add_argument("--levels", type=int, default=defaults.levels, metavar="N",
                   help="consistency: the N steps of the teacher's ODE the student learns to be consistent along "
                   f"(default {defaults.levels}; the paper: 18 at 32x32, 40 at 64x64)")
    p.add_argument("--target-ema", type=float, default=defaults.target_ema, metavar="MU",
                   help=f"consistency: the EMA rate of the target network (default {defaults.target_ema:g}, the "
                   "paper's)")
    p.add_argument("--adversarial-weight", type=float, default=defaults.adversarial_weight, metavar="LAMBDA",
                   help="adversarial: the weight of the discriminator's term beside the regression to RUN's own "
                   f"samples (default {defaults.adversarial_weight:g}; 0 keeps RUN)")
    p.add_argument("--regression-weight", type=float, default=defaults.regression_weight, metavar="W",
                   help="adversarial: the weight of the regression to RUN's own samples of the same noise (default "
                   f"{defaults.regression_weight:g}; 0 with --distribution-weight is DMD2's recipe)")
    p.add_argument("--distribution-weight", type=float, default=defaults.distribution_weight, metavar="W",
                   help="adversarial: the weight of DMD's distribution-matching term, the teacher's guided denoiser "
                   "against a denoiser trained online on the student's samples (Yin et al. 2024; default "
                   f"{defaults.distribution_weight:g}: off; its teacher is the run RUN was distilled from)")
    p.add_argument("--discriminator", choices=DISCRIMINATORS, default=defaults.discriminator,
                   help="adversarial: pixel, a projection discriminator trained from scratch on the images, or "
                   "teacher, projection heads on RUN's own frozen encoder at a random noise level (LADD, Sauer et al. "
                   f"2024) (default {defaults.discriminator})")
    p.add_argument("--iterations-per-round", type=int, metavar="K",
                   help=f"optimizer steps per round (default {DEFAULT_ITERATIONS['progressive']}; consistency: of its "
                   f"one round, default {DEFAULT_ITERATIONS['consistency']}; adversarial: default "
                   f"{DEFAULT_ITERATIONS['adversarial']}; the papers: 50k-800k at 32x32)")
    p.add_argument("--lr", type=float, help="the learning rate at the start of each round, decaying linearly to 0 "
                   f"(default: RUN's optim.lr; adversarial: {ADVERSARIAL_LR:g})")
    p.add_argument("--batch-size", type=int, metavar="B",
                   help="images per optimizer step (default: RUN's optim.batch_size)")
    p.add_argument("--guidance-range", metavar="LO,HI", help="the guidance scales w the student learns, drawn "
                   f"uniformly per image (a class-conditional RUN with label dropout; default "
                   f"{DEFAULT_GUIDANCE_RANGE[0]:g},{DEFAULT_GUIDANCE_RANGE[1]:g}; a distilled RUN's own, or a "
                   "range within it); 'none' distils the unguided sampler. Adversarial: the scales G is refined on, "
                   "and the only ones the result samples")
    p.add_argument("--guidance-interval", type=float, nargs=2, metavar=("SIGMA_LO", "SIGMA_HI"),
                   help="adversarial: refine the student to sample with its guidance on only at noise levels "
                   "SIGMA_LO < sigma <= SIGMA_HI (its w input 1 elsewhere; Kynkaanniemi et al. 2024); the result "
                   "samples so by default. E.g. 0 10 leaves a 4-step student's first level, pure noise, unguided "
                   "(docs/distillation.md)")
    p.add_argument("--spacing", default="trailing", help="the first teacher's step spacing, or the spacing of "
                   "consistency's levels (default trailing: it starts at pure noise, where the student starts)")
    p.add_argument("--seconds", type=float, metavar="BUDGET", help="stop after this much training time over all "
                   "rounds, at a checkpoint; --resume continues")
    p.add_argument("--resume", action="store_true", help="continue the distillation in --out: finished rounds are "
                   "kept, an interrupted one resumes from its checkpoint")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of every round's training config, e.g. --set train.log_every=10")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to metrics.jsonl)")
    p.set_defaults(func=run)


def halvings(start: int, steps: int) -> list[int]:
    """The students' step counts, start/2, start/4, …, steps; one clear error unless start = steps·2^k, k ≥ 1."""
    if steps < 1:
        raise ValueError(f"--steps must be at least 1, got {steps}")
    ratio = start // steps
    if start <= steps or start % steps or ratio & (ratio - 1):
        raise ValueError(f"the teacher's {start} steps must be --steps {steps} times a power of two (2, 4, 8, ...): "
                         f"e.g. --start-steps {steps * 16}")
    rounds, n = [], start // 2
    while n >= steps:
        rounds.append(n)
        n //= 2
    return rounds


def parse_range(text: str | None) -> tuple[float, float] | None | str:
    """--guidance-range LO,HI → (lo, hi); 'none' → None; not given → 'default'."""
    if text is None:
        return "default"
    if text.strip().lower() == "none":
        return None
    try:
        lo, hi = (float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"--guidance-range takes LO,HI (e.g. 1,5) or none, got {text!r}") from None
    if not lo <= hi:
        raise ValueError(f"--guidance-range needs LO <= HI, got {text!r}")
    return lo, hi


def recorded_step(folder: Path) -> int | None:
    """The step of the checkpoint in ``folder`` (None: no checkpoint there)."""
    from ..checkpoint import load_state

    try:
        config, _, _ = load_state(folder, groups=[], with_extra=False)
    except FileNotFoundError:
        return None
    return config.get("step")


def guidance_range(args, record) -> tuple[float, float] | None:
    """The w range of guided distillation for RUN's record, or None (unguided)."""
    asked = parse_range(args.guidance_range)
    taught = (record.distilled or {}).get("guidance_range")
    guidable = taught is not None or (record.num_classes > 0 and record.trained_with_label_dropout)
    if not guidable:
        if asked not in ("default", None):
            raise ValueError(f"{args.run} cannot be guided (it is not class-conditional with label dropout, "
                             "diffusion.cond_drop_prob > 0): drop --guidance-range")
        return None
    if asked == "default":
        return tuple(taught) if taught is not None else DEFAULT_GUIDANCE_RANGE
    return asked


def round_config(args, base: dict, teacher: str, n: int, folder: Path, bounds, budget: float | None):
    """The training config of the round whose student takes n steps: RUN's, with the flags applied."""
    from ..training.config import apply_override, config_from_dict

    raw = copy.deepcopy(base)
    iterations = args.iterations_per_round
    consistency, adversarial = args.method == "consistency", args.method == "adversarial"
    lr = args.lr if args.lr is not None else ADVERSARIAL_LR if adversarial else None
    sample = raw.setdefault("sample", {})
    scale = sample.get("guidance_scale", 1.0)
    settings = {
        "distill": {"teacher": str(teacher), "method": args.method, "steps": n, "spacing": args.spacing,
                    "levels": args.levels, "target_ema": args.target_ema,
                    "adversarial_weight": args.adversarial_weight, "discriminator": args.discriminator,
                    "regression_weight": args.regression_weight, "distribution_weight": args.distribution_weight,
                    "guidance_range": list(bounds) if bounds else None,
                    "guidance_interval": list(args.guidance_interval) if args.guidance_interval else None},
        "diffusion": {"cond_drop_prob": 0.0},  # the student learns the conditional sampler (guided by its w input)
        "optim": {"lr_schedule": "linear", "warmup_steps": 0, "min_lr_fraction": 0.0,
                  **({"lr": lr} if lr is not None else {}),
                  **({"betas": list(ADVERSARIAL_BETAS)} if adversarial else {}),
                  **({"batch_size": args.batch_size} if args.batch_size is not None else {})},
        "train": {"steps": iterations, "out_dir": str(folder), "max_seconds": budget, "sample_every": iterations,
                  "checkpoint_every": min(raw.get("train", {}).get("checkpoint_every", iterations), iterations)},
        "sample": {"method": "consistency" if consistency else "ddim", "steps": n,
                   "guidance_scale": min(max(scale, bounds[0]), bounds[1]) if bounds else 1.0},
    }
    for section, values in settings.items():
        raw.setdefault(section, {}).update(values)
    for assignment in args.overrides:
        apply_override(raw, assignment)
    return config_from_dict(raw)


def rounds(args, record) -> list[int]:
    """The students' step counts, one per round: the halvings of progressive distillation, or the one
    round of consistency distillation (its default sampling steps) or of adversarial refinement (RUN's)."""
    if args.method == "adversarial":
        if record.distilled and record.distilled.get("method") != "ddim":
            raise ValueError(f"{args.run} is a {record.distilled.get('method')} student: adversarial distillation "
                             "refines a progressive one (`difflab distill TEACHER --steps N --out STUDENT`)")
        if not record.distilled:
            raise ValueError(f"{args.run} is not a progressive student: adversarial distillation refines one "
                             f"(make it with `difflab distill {args.run} --steps {args.steps} --out STUDENT`)")
        if args.steps != record.distilled["steps"]:
            raise ValueError(f"{args.run} samples in {record.distilled['steps']} steps and adversarial distillation "
                             f"keeps its grid: give --steps {record.distilled['steps']}")
        if args.start_steps is not None:
            raise ValueError("--start-steps belongs to progressive distillation: drop it")
        return [args.steps]
    if args.method == "consistency":
        if record.distilled:
            raise ValueError(f"{args.run} is a distilled student; consistency distillation needs the diffusion run it "
                             "came from (its ODE)")
        if args.start_steps is not None:
            raise ValueError("--start-steps belongs to progressive distillation; consistency distillation walks "
                             "--levels steps of the teacher's ODE")
        if not 1 <= args.steps <= args.levels:
            raise ValueError(f"--steps must be in 1 ... --levels ({args.levels}), got {args.steps}")
        return [args.steps]
    start = record.distilled["steps"] if record.distilled else args.start_steps or DEFAULT_START
    if record.distilled and args.start_steps not in (None, start):
        raise ValueError(f"{args.run} is distilled for {start} steps, which is where the next round starts: drop "
                         "--start-steps")
    return halvings(start, args.steps)


def run(args) -> int:
    from ..checkpoint import ModelRecord, load_state
    from ..training.objectives import (
        AdversarialDistillationObjective,
        ConsistencyDistillationObjective,
        DistillationObjective,
    )
    from ..training.trainer import train

    config, _, _ = load_state(args.run, groups=[], with_extra=False)
    record = ModelRecord.from_dict(config, args.run)
    consistency = args.method == "consistency"
    steps = rounds(args, record)
    args.iterations_per_round = args.iterations_per_round or DEFAULT_ITERATIONS[args.method]
    if args.iterations_per_round < 1:
        raise ValueError(f"--iterations-per-round must be at least 1, got {args.iterations_per_round}")
    bounds = guidance_range(args, record)
    if args.guidance_interval is not None and args.method != "adversarial":
        raise ValueError(f"--guidance-interval refines whole trajectories (--method adversarial); a {args.method} "
                         "student takes an interval when it samples: `difflab sample OUT --guidance-interval LO HI`")
    out = Path(args.out)
    folders = {n: out if n == args.steps else out / "rounds" / f"{n}-steps" for n in steps}
    done = {n: recorded_step(folder) for n, folder in folders.items()}
    if not args.resume and any(step is not None for step in done.values()):
        raise ValueError(f"{out} already holds a distillation: give --resume to continue it, or another --out")
    clock = time.monotonic()
    teacher = args.run
    for k, n in enumerate(steps, 1):
        folder, iterations = folders[n], args.iterations_per_round
        if done[n] is not None and done[n] >= iterations:
            print(f"difflab distill: round {k}/{len(steps)} ({n} steps) is done: {folder}")
            teacher = folder
            continue
        budget = None if args.seconds is None else args.seconds - (time.monotonic() - clock)
        if budget is not None and budget <= 0:
            return _out_of_time(n, folder, done[n], iterations)
        what = (f"consistency along {args.levels} steps of the teacher's ODE" if consistency
                else f"adversarial refinement of the {n}-step student" if args.method == "adversarial"
                else f"round {k}/{len(steps)}: {2 * n} -> {n} steps")
        print(f"difflab distill: {what}, teacher {teacher}, student {folder}"
              + (f", guidance scales {bounds[0]:g}..{bounds[1]:g} as an input" if bounds else ""))
        config = round_config(args, record.train_config, teacher, n, folder, bounds, budget)
        train(config, resume=folder if done[n] is not None else None, progress=not args.no_progress,
              objective={"progressive": DistillationObjective, "consistency": ConsistencyDistillationObjective,
                         "adversarial": AdversarialDistillationObjective}[args.method])
        done[n] = recorded_step(folder)
        if done[n] is None or done[n] < iterations:
            return _out_of_time(n, folder, done[n], iterations)
        teacher = folder
    print(f"difflab distill: checkpoint in {out / 'checkpoint'}; sample it with `difflab sample {out} --steps "
          f"{args.steps}`" + (f" (any of 1 ... {args.levels})" if consistency else ""))
    return 0


def _out_of_time(n: int, folder: Path, step: int | None, iterations: int) -> int:
    print(f"difflab distill: time budget reached in the round of {n} steps ({folder}, step {step or 0} of "
          f"{iterations}); the same command with --resume continues")
    return 0
