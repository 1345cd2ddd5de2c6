"""``difflab train-lora CONFIG --base RUN --images DIR_OR_DATASET --prompt TEXT``: train a LoRA.

    difflab train-lora CONFIG --base RUN --images DIR --prompt "a photo of a sks boot"
    difflab train-lora CONFIG --base RUN --images DIR --class "Ankle boot"      # a class-conditional base

Low-rank adapters on the base's attention projections (``lora.targets``, ``lora.rank``,
``lora.alpha``) learn the pictures under the prompt; the base stays frozen. The finished run holds
``lora.safetensors`` for ``difflab sample BASE --lora FILE[:SCALE]`` (docs/personalisation.md).
"""

from __future__ import annotations

import argparse

from .train import add_run_arguments, config_from_args, section_overrides


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train-lora",
        help="train a LoRA (low-rank adapters) on a few pictures, beside a frozen base run",
        description="Train a LoRA (Hu et al. 2021) on a trained diffusion run: adapters on the base's attention "
        "projections learn the training pictures under one prompt (or class) while the base stays frozen. Writes "
        "checkpoint/ (resume), samples/ and lora.safetensors (the adapters, with the base's path and weights' hash) "
        "into train.out_dir (docs/personalisation.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("config", help="YAML config file (e.g. configs/lora-fashion-mnist-16.yaml)")
    p.add_argument("--base", metavar="RUN", help="the base run (default: the config's lora.base)")
    p.add_argument("--images", metavar="DIR_OR_DATASET",
                   help="the training pictures: a folder of images or a dataset name (default: the config's data)")
    p.add_argument("--prompt", metavar="TEXT", help="their caption, for a text-conditioned base (e.g. 'a photo of a "
                   "sks boot')")
    p.add_argument("--class", dest="class_name", metavar="NAME", help="their class, for a class-conditional base")
    add_run_arguments(p, init_from=False)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..training.objectives import LoraObjective
    from ..training.trainer import train

    args.overrides = list(args.overrides) + section_overrides("lora", args.base, args.images, prompt=args.prompt,
                                                              class_name=args.class_name)
    config = config_from_args(args, args.config)
    path = train(config, resume=args.resume, progress=not args.no_progress, objective=LoraObjective)
    print(f"difflab train-lora: checkpoint in {path}; adapters in {path.parent / 'lora.safetensors'}")
    return 0
