"""``difflab train CONFIG``: train a diffusion model from a YAML config."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a diffusion model from a YAML config",
        description="Train a diffusion model. Runs on the GPU when one is visible, else on the CPU; "
        "under `torchrun --nproc_per_node=N` it trains with DDP. Writes checkpoint/, samples/ and "
        "metrics.jsonl into train.out_dir.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("config", nargs="?", help="YAML config file (see configs/); omitted: all defaults")
    add_run_arguments(p)
    p.set_defaults(func=run)


def add_run_arguments(p) -> None:
    """The flags every training command shares: --set, --resume, --out, --no-progress."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set optim.lr=3e-4 --set train.steps=500 (repeatable)")
    p.add_argument("--resume", metavar="DIR",
                   help="continue a run from its checkpoint (the run folder or its checkpoint/ folder)")
    p.add_argument("--out", metavar="DIR", help="shorthand for --set train.out_dir=DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to metrics.jsonl)")


def config_from_args(args, path):
    """The training config of ``path`` with the command line's --set and --out applied."""
    from ..training.config import load_config

    return load_config(path, list(args.overrides) + ([f"train.out_dir={args.out}"] if args.out else []))


def run(args) -> int:
    from ..training.trainer import train

    config = config_from_args(args, args.config)
    path = train(config, resume=args.resume, progress=not args.no_progress)
    print(f"difflab train: checkpoint in {path}")
    return 0
