"""``difflab train-autoencoder CONFIG``: train latent diffusion's KL or VQ autoencoder.

    difflab train-autoencoder CONFIG [--set KEY=VALUE]... [--resume DIR | --init-from RUN] [--out DIR]

The diffusion trainer with ``model.name: autoencoder_kl | autoencoder_vq`` (checkpoints, resume,
DDP, EMA); at the end it prints the reconstruction PSNR on held-out images and the latent scale
that the checkpoint records (docs/autoencoders.md).
"""

from __future__ import annotations

import argparse

from difflab.cli import UserError

from .train import add_run_arguments, config_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train-autoencoder", help="train a KL or VQ autoencoder for latent diffusion",
        description="Train the first stage of latent diffusion (Rombach et al. 2022): a KL- or VQ-regularized "
        "autoencoder, from a YAML config whose model.name is autoencoder_kl or autoencoder_vq (see "
        "configs/autoencoder-*.yaml). Same trainer as `difflab train`: checkpoint/, reconstruction grids "
        "under samples/ and metrics.jsonl in train.out_dir. Prints the held-out PSNR and the latent scale.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("config", help="YAML config file, e.g. configs/autoencoder-kl-emoji64.yaml")
    add_run_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from ..models import AUTOENCODERS
    from ..training.trainer import train

    config = config_from_args(args, args.config)
    if config.model.name not in AUTOENCODERS:
        raise UserError(f"{args.config} trains a {config.model.name!r} model; set model.name to one of "
                        f"{', '.join(AUTOENCODERS)} (or use `difflab train` for diffusion models)")
    path = train(config, resume=args.resume, init_from=args.init_from, progress=not args.no_progress)
    saved = json.loads((path / "config.json").read_text())
    print(f"difflab train-autoencoder: checkpoint in {path}")
    if "latent_scale" in saved:
        print(f"PSNR {saved['psnr']:.2f} dB on {saved['psnr_images']} images of {saved['psnr_split']}; "
              f"latent scale {saved['latent_scale']:.5f} (1/std of the latents of {saved['latent_scale_images']} "
              f"training images); latent shape {'x'.join(map(str, saved['latent_shape']))}")
    return 0
