"""``difflab reconstruct CKPT --data NAME:SPLIT --out DIR``: an autoencoder's reconstructions.

Writes ``samples.npz`` (uint8 NHWC, the layout ``difflab eval`` reads) and ``grid.png`` (rows of
inputs, each followed by their reconstructions) and prints the PSNR, so

    difflab reconstruct runs/autoencoder-kl-emoji64 --data emoji:test --out recon
    difflab eval recon/samples.npz --ref emoji:test

gives the reconstruction FID (rFID, as in LDM's Table 8).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from difflab.cli import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "reconstruct", help="reconstruct images with a trained autoencoder (for PSNR and rFID)",
        description="Encode and decode a dataset split with an autoencoder checkpoint of `difflab "
        "train-autoencoder` (the posterior mean of a KL autoencoder, the quantized latent of a VQ one). "
        "Writes samples.npz and grid.png into --out and prints the PSNR; `difflab eval OUT/samples.npz "
        "--ref NAME:SPLIT` then gives the reconstruction FID (rFID).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", help="a run folder of `difflab train-autoencoder` or its checkpoint/ folder")
    p.add_argument("--data", required=True, metavar="NAME:SPLIT",
                   help="images to reconstruct: a built-in split (emoji:test, digits:test) or an image folder; "
                        "resized to the autoencoder's training size")
    p.add_argument("--n", type=int, help="reconstruct only the first N images (default: all)")
    p.add_argument("--grid", type=int, default=32, metavar="N", help="images shown in grid.png")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--out", default="reconstructions", help="output folder")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..data import load_dataset, parse_spec, to_float
    from ..device import pick_device
    from ..images import save_npz
    from ..latent import load_autoencoder
    from ..models.autoencoder import psnr, reconstruct_images
    from ..training.objectives import preview_images, reconstruction_grid

    if (args.n is not None and args.n < 1) or args.batch_size < 1 or args.grid < 0:
        raise UserError("--n and --batch-size must be at least 1 and --grid at least 0")
    device = pick_device(args.device)
    model, info = load_autoencoder(args.checkpoint, device=device, use_ema=not args.no_ema)
    channels, size, _ = info.image_shape
    name, split = parse_spec(args.data, default_split="test")
    dataset = load_dataset(name, split, resolution=size, channels=channels)
    images = dataset.images[: args.n] if args.n else dataset.images
    recon = reconstruct_images(model, images, args.batch_size)
    out = Path(args.out)
    save_npz(recon, out / "samples.npz")
    if args.grid:
        reconstruction_grid(model, preview_images(images, args.grid).to(device), out / "grid.png")
    value = psnr(to_float(recon), to_float(images)).mean().item()
    print(f"difflab reconstruct: {len(images)} images of {args.data} -> {out / 'samples.npz'}; PSNR {value:.2f} dB "
          f"(uint8 reconstructions); rFID: difflab eval {out / 'samples.npz'} --ref {args.data}")
    return 0
