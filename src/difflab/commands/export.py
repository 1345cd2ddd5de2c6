"""``difflab export RUN --format diffusers --out DIR``: a difflab run as a diffusers folder.

    difflab export runs/demo-digits --format diffusers --out exported/digits
    python -c "import diffusers; diffusers.UNet2DModel.from_pretrained('exported/digits/unet')"

The network (EMA weights), its scheduler, a latent model's autoencoder and an imported CLIP, with
a model_index.json where a diffusers pipeline fits; settings with no diffusers equivalent are
refused by name (docs/interop.md; the code: :mod:`difflab.interop.exporter`).
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="write a difflab run as a folder diffusers' from_pretrained loads",
        description="Export a difflab diffusion run: the U-Net as UNet2DModel / UNet2DConditionModel or the DiT as "
        "DiTTransformer2DModel (EMA weights), the schedule as a DDIMScheduler config, a latent model's "
        "autoencoder as AutoencoderKL, an imported CLIP text encoder and tokenizer, and model_index.json where a "
        "pipeline fits (DDPMPipeline, StableDiffusionPipeline, DiTPipeline). A setting with no diffusers "
        "equivalent is an error naming it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run", help="a difflab diffusion run folder (or its checkpoint/)")
    p.add_argument("--format", choices=["diffusers"], default="diffusers", help="the layout to write")
    p.add_argument("--out", required=True, help="folder to write (created; files in it are replaced)")
    p.add_argument("--network-only", action="store_true",
                   help="write the network and scheduler alone, without autoencoder, text encoder or pipeline "
                        "(for a model whose text encoder or image conditioning diffusers' pipelines do not take)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..interop.exporter import export_diffusers

    out = export_diffusers(args.run, args.out, network_only=args.network_only)
    written = sorted(p.name for p in out.iterdir())
    print(f"difflab export: wrote {', '.join(written)} in {out}")
    return 0
