"""``difflab train CONFIG``: train a diffusion model from a YAML config.

    difflab train CONFIG [--set KEY=VALUE]... [--resume RUN | --init-from RUN] [--out DIR]

``--init-from RUN`` fine-tunes: the new run starts from RUN's model and EMA weights with a fresh
optimizer, learning-rate schedule and step count (docs/training.md).
"""

from __future__ import annotations

import argparse
import json

INIT_FROM_HELP = ("fine-tune: start a new run from the model and EMA weights of RUN's checkpoint (a run folder "
                  "or its checkpoint/ folder), with a fresh optimizer, LR schedule and step 0; the model config "
                  "must match RUN's (a mismatch names the first differing tensor); not with --resume")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a diffusion model from a YAML config",
        description="Train a diffusion model. Runs on the GPU when one is visible, else on the CPU; "
        "under `torchrun --nproc_per_node=N` it trains with DDP. Writes checkpoint/, samples/ and "
        "metrics.jsonl into train.out_dir. --resume continues a run; --init-from RUN fine-tunes: a new run "
        "that starts from RUN's weights (docs/training.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("config", nargs="?", help="YAML config file (see configs/); omitted: all defaults")
    add_run_arguments(p)
    p.set_defaults(func=run)


def add_run_arguments(p, init_from: bool = True) -> None:
    """The flags every training command shares: --set, --resume, (--init-from,) --out, --no-progress."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set optim.lr=3e-4 --set train.steps=500 (repeatable)")
    p.add_argument("--resume", metavar="DIR",
                   help="continue a run from its checkpoint (the run folder or its checkpoint/ folder)")
    if init_from:
        p.add_argument("--init-from", metavar="RUN", help=INIT_FROM_HELP)
    p.add_argument("--out", metavar="DIR", help="shorthand for --set train.out_dir=DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to metrics.jsonl)")


def section_overrides(section: str, base: str | None, images: str | None, **values) -> list[str]:
    """A personalisation command's flags as config overrides: ``{section}.base``, ``data.dataset``
    and each given value as ``{section}.{key}``, JSON-quoted so text stays text even where it
    looks like YAML (a prompt with a colon, the class name ``3``)."""
    extra = [f"{section}.base={base}"] if base else []
    extra += [f"data.dataset={images}"] if images else []
    return extra + [f"{section}.{key}={json.dumps(value)}" for key, value in values.items() if value is not None]


def config_from_args(args, path):
    """The training config of ``path`` with the command line's --set and --out applied."""
    from ..training.config import load_config

    return load_config(path, list(args.overrides) + ([f"train.out_dir={args.out}"] if args.out else []))


def run(args) -> int:
    from ..training.trainer import train

    config = config_from_args(args, args.config)
    path = train(config, resume=args.resume, init_from=args.init_from, progress=not args.no_progress)
    print(f"difflab train: checkpoint in {path}")
    return 0
