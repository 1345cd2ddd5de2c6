"""``difflab import SOURCE --out RUN``: diffusers folders and Stable Diffusion single files as difflab runs.

    difflab import ~/models/stable-diffusion-v1-5 --out runs/sd15 --image-size 512
    difflab import ~/models/ddpm-cifar10-32/unet --out runs/ddpm-cifar10
    difflab import ~/models/v1-5-pruned-emaonly.safetensors --out runs/sd15
    difflab sample runs/sd15 --prompt "a red bicycle" --method dpmpp_2m --steps 25

Local folders and files only (nothing is downloaded), safetensors only (no pickle is read). The
mappings and what does not map: docs/interop.md; the code: :mod:`difflab.interop.importer`.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "import", help="turn a diffusers folder or a Stable Diffusion single file into a difflab run",
        description="Convert weights saved by other projects into a difflab run that sample, eval, edit, ControlNet "
        "and LoRA use: a diffusers pipeline folder (model_index.json: unet or transformer, scheduler, vae, "
        "text_encoder and tokenizer), a diffusers UNet2DModel / DiTTransformer2DModel folder, or an original-layout "
        "Stable Diffusion 1.x/2.x .safetensors file. Nothing is downloaded and no pickle is read; settings difflab "
        "cannot map are refused by name (docs/interop.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("source", help="a diffusers pipeline or model folder, or a single .safetensors checkpoint")
    p.add_argument("--out", required=True, help="run folder to write (its checkpoint/, and text/ for a text model)")
    p.add_argument("--image-size", type=int, metavar="PIXELS",
                   help="the image side the run samples by default (a latent model's latents are this / the "
                        "autoencoder's factor); default: the model's sample_size (x the factor)")
    p.add_argument("--scheduler", metavar="FILE_OR_FOLDER",
                   help="a scheduler_config.json for a lone model folder; default: the folder's sibling scheduler/, "
                        "else diffusers' DDPMScheduler defaults (linear betas 1e-4..0.02, epsilon)")
    p.add_argument("--prediction", choices=["epsilon", "v_prediction", "sample"],
                   help="what a single file's network predicts (the file does not say): v_prediction for Stable "
                        "Diffusion 2.x 768-v models; default epsilon")
    p.add_argument("--heads", type=int,
                   help="a single file's attention heads (not in its shapes); default: SD's conventions (8 heads "
                        "for a 768-wide text context, 64-channel heads for 1024)")
    p.add_argument("--config", metavar="FOLDER",
                   help="a single file's architecture from the configs of a diffusers folder of the same model "
                        "(unet/, vae/, text_encoder/ config.json, and tokenizer/), instead of inferring it")
    p.add_argument("--steps", type=int, default=50, help="the run's default sampling steps")
    p.add_argument("--guidance-scale", type=float,
                   help="the run's default guidance scale; default 7.5 for text models, 4 for class models, else 1")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..interop.importer import import_source, write_run

    imported = import_source(args.source, scheduler=args.scheduler, image_size=args.image_size,
                             prediction=args.prediction, heads=args.heads, config=args.config)
    path = write_run(imported, args.out, steps=args.steps, guidance_scale=args.guidance_scale)
    params = sum(p.numel() for p in imported.network.parameters())
    extras = []
    if imported.autoencoder is not None:
        extras.append(f"autoencoder {sum(p.numel() for p in imported.autoencoder[0].parameters()) / 1e6:.2f}M")
    if imported.write_text is not None:
        extras.append("CLIP text encoder")
    print(f"difflab import: {type(imported.network).__name__} {params / 1e6:.2f}M parameters loaded"
          + "".join(f", {e}" for e in extras) + f"; checkpoint in {path}")
    return 0
