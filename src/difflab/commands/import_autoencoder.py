"""``difflab import-autoencoder FOLDER --out RUN``: a diffusers AutoencoderKL as a difflab autoencoder run.

    difflab import-autoencoder ~/models/sd-vae --out runs/sd-vae --image-size 64
    difflab reconstruct runs/sd-vae --data emoji:test --out recon
    difflab train configs/emoji-latent-text-64.yaml --set data.autoencoder=runs/sd-vae

Reads a local folder (config.json + diffusion_pytorch_model.safetensors; nothing is downloaded
and no pickle is read) and writes a checkpoint of kind ``autoencoder`` with the folder's
``scaling_factor`` as the latent scale, so every difflab command that takes an autoencoder run
takes it (docs/autoencoders.md, "Weights from diffusers").
"""

from __future__ import annotations

import argparse

from difflab.cli import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "import-autoencoder", help="turn a local diffusers AutoencoderKL folder into a difflab autoencoder run",
        description="Convert a diffusers AutoencoderKL saved on disk (e.g. the vae/ folder of a Stable Diffusion "
        "pipeline) into a difflab autoencoder checkpoint: the same network (LDM's trunk with corner-padded "
        "downsampling and GroupNorm eps 1e-6), its scaling_factor as the latent scale. The result works "
        "with `difflab reconstruct` and as data.autoencoder of a latent diffusion config.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("folder",
                   help="a diffusers AutoencoderKL folder: config.json and diffusion_pytorch_model.safetensors")
    p.add_argument("--out", required=True, help="run folder to write (its checkpoint/ is created)")
    p.add_argument("--image-size", type=int, metavar="PIXELS",
                   help="the image side the run records (latent diffusion trains on images of this size; the "
                        "network takes any multiple of its factor); default: the folder's sample_size")
    p.add_argument("--latent-scale", type=float, help="override the folder's scaling_factor")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..checkpoint import AUTOENCODER_KIND, save_checkpoint
    from ..models import model_config_dict
    from ..models.diffusers_weights import load_diffusers_autoencoder_kl

    try:
        model, scale = load_diffusers_autoencoder_kl(args.folder, args.image_size)
    except (FileNotFoundError, ValueError) as err:
        raise UserError(str(err)) from None
    scale = args.latent_scale or scale
    cfg = model.config
    config = {"kind": AUTOENCODER_KIND, "step": 0, "model": model_config_dict(model),
              "image_shape": [cfg.in_channels, cfg.image_size, cfg.image_size], "latent_shape": list(cfg.latent_shape),
              "latent_scale": scale, "latent_scale_images": 0, "source": str(Path(args.folder).resolve())}
    weights = model.state_dict()
    path = save_checkpoint(Path(args.out) / "checkpoint", config, {"model": weights, "ema": weights})
    print(f"difflab import-autoencoder: {model.summary()}; latent scale {scale:g}; checkpoint in {path}")
    return 0
