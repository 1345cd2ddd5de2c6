"""``difflab train-controlnet CONFIG --base RUN``: train a ControlNet on a frozen base run.

    difflab train-controlnet CONFIG --base RUN [--set KEY=VALUE]... [--resume DIR] [--out DIR]

The config's ``data`` section gives the images (and their classes or captions, as the base was
trained), ``controlnet`` how the control images are made (``control: {kind: canny | soft_edges |
fill | tile | grayscale | folder, ...}``), the hint encoder, the prompt dropout and whether the
base's decoder is unlocked; ``optim`` and ``train`` work as for any run (resume, EMA, DDP, time
budget). docs/controlnet.md.
"""

from __future__ import annotations

import argparse

from .train import add_run_arguments, config_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train-controlnet",
        help="train a ControlNet (spatial control by edges, outlines, ...) on a frozen base run",
        description="Train a ControlNet (Zhang et al. 2023) on a trained U-Net run: the base stays frozen; a copy "
        "of its encoder reads the control images that controlnet.control makes from the data and feeds the base "
        "through zero convolutions. Writes checkpoint/ (the control branch only, with the base's path and weights' "
        "hash), samples/ (control images over samples) and metrics.jsonl into train.out_dir; "
        "`difflab sample BASE --controlnet RUN --control-image IMG` uses it (docs/controlnet.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("config", help="YAML config file (e.g. configs/controlnet-fill-32.yaml)")
    p.add_argument("--base", metavar="RUN", help="the base run to control (a difflab U-Net diffusion run; "
                   "default: the config's controlnet.base)")
    add_run_arguments(p, init_from=False)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..training.objectives import ControlNetObjective
    from ..training.trainer import train

    args.overrides = list(args.overrides) + ([f"controlnet.base={args.base}"] if args.base else [])
    config = config_from_args(args, args.config)
    path = train(config, resume=args.resume, progress=not args.no_progress, objective=ControlNetObjective)
    print(f"difflab train-controlnet: checkpoint in {path}")
    return 0
