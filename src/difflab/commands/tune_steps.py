"""``difflab tune-steps CHECKPOINT --steps N``: fit a few-step sampler's noise levels to a model."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from ..sampling import DETERMINISTIC, SPACINGS

    p = subparsers.add_parser(
        "tune-steps",
        help="tune the noise levels of a few-step sampler to a trained model (then `sample` uses them)",
        description="Choose the N noise levels a deterministic sampler visits so that its samples match "
        "a many-step solve of the same model (docs/sampling.md, 'Tuned step schedules'). Tunes on "
        "--n calibration noises, checks on --n fresh ones, and writes the schedule into the checkpoint "
        "(checkpoint/tuned-steps/METHOD-STEPS.json), where `difflab sample` and `difflab eval` pick it "
        "up when the method, steps and guidance scale match and no --spacing is given.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", help="a run folder or its checkpoint/ folder")
    p.add_argument("--steps", type=int, required=True, help="number of sampler steps to tune (>= 2)")
    p.add_argument("--method", choices=sorted(DETERMINISTIC), help="deterministic sampler (default: the checkpoint's)")
    p.add_argument("--init", nargs="+", choices=sorted(SPACINGS), default=["trailing", "generic"],
                   help="spacing(s) the search may start from: each is scored on the calibration noise and the search "
                        "starts from the best ('generic': the levels tuned once per schedule, docs/sampling.md)")
    p.add_argument("--n", type=int, default=64, help="calibration images (and as many fresh ones for the check)")
    p.add_argument("--seed", type=int, default=10_000_000,
                   help="calibration noise seeds SEED..SEED+n-1 (keep them apart from the seeds you sample with)")
    p.add_argument("--reference-steps", type=int, default=200,
                   help="steps of the UniPC-3 / log-SNR solve taken as the exact answer")
    p.add_argument("--max-evals", type=int, help="solver runs the search may use (default: 150 per step, at most 3000)")
    p.add_argument("--max-seconds", type=float,
                   help="wall-clock budget of the search and its check; the best levels found by then are kept "
                        "(default: none, --max-evals alone)")
    p.add_argument("--class", dest="class_index", type=int,
                   help="tune for one class of a class-conditional model (default: every class in turn)")
    p.add_argument("--prompt", action="append", metavar="TEXT", help="caption(s) to tune a text-conditioned model with")
    p.add_argument("--prompts", metavar="FILE", help="a text file with one prompt per line")
    from .sample import add_guidance_arguments

    add_guidance_arguments(p)
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--out", help="where to write the JSON (default: inside the checkpoint, where sample finds it)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the sampler's model call (CUDA graphs on a GPU) for the search's thousands of "
                        "solves: ~1.2x faster solves on 2 CPU cores with the demo model, after ~30 s of compiling")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..device import pick_device
    from ..pipelines import DiffusionModel, SamplerSettings, tune_steps, tuned_path
    from .sample import guidance_from_args, read_prompts

    if args.n < 1:
        raise ValueError("--n must be at least 1")
    if args.max_seconds is not None and not args.max_seconds > 0:
        raise ValueError(f"--max-seconds must be above 0, got {args.max_seconds:g}")
    device = pick_device(args.device)
    model = DiffusionModel.load(args.checkpoint, use_ema=not args.no_ema, device=device)
    settings = SamplerSettings.resolve(model, args.method, args.steps)
    method, steps = settings.method, settings.steps
    guidance = guidance_from_args(args, device)
    tuned = tune_steps(model, method=method, steps=steps, n=args.n, seed=args.seed, init=tuple(args.init),
                       class_index=args.class_index, guidance=guidance, prompts=read_prompts(args),
                       reference_steps=args.reference_steps, max_evals=args.max_evals, max_seconds=args.max_seconds,
                       progress=True,
                       compile=args.compile)
    if not tuned.evaluations:
        print(f"difflab tune-steps: nothing tuned: --max-seconds {args.max_seconds:g} went to the "
              f"{tuned.reference_steps}-step reference solve; give it more time")
        return 1
    levels = ", ".join(f"{s:.4g}" for s in tuned.sigmas)
    print(f"difflab tune-steps: {method}, {steps} steps, relative error against a {tuned.reference_steps}-step solve:\n"
          f"  calibration noise: {tuned.init} {tuned.error_init:.3g} -> tuned {tuned.error_tuned:.3g}\n"
          f"  fresh noise:       {tuned.init} {tuned.heldout_error_init:.3g} -> tuned {tuned.heldout_error:.3g}\n"
          f"  sigmas: {levels}")
    if tuned.heldout_error >= tuned.heldout_error_init:
        print(f"difflab tune-steps: not written: the tuned levels are no better than {tuned.init} spacing on fresh "
              "noise; tune on more images (--n) or keep the plain spacing")
        return 1
    path = tuned.save(args.out or tuned_path(model, method, steps))
    print(f"written to {path}; `difflab sample {args.checkpoint} --method {method} --steps {steps}` uses it")
    return 0
