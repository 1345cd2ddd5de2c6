"""Inpainting with a latent model (issue 19): is the unmasked region kept?

Held-out images are masked (centre square, left half, bottom half, random strokes) and inpainted
by blending in the latent space of the run's autoencoder, each under its own class or caption.
The unmasked region is compared with the input twice: with paste-back (difflab's default, the
input pasted back in pixel space after decoding: bit-exact, PSNR = inf) and without it
(``paste_back=False``, diffusers' output: the decoded latents, which the autoencoder's round trip
limits). The round trip itself (decode(encode(x)) of the unmasked input, no sampling) is printed
beside it. Acceptance: unmasked PSNR >= 35 dB with paste-back; the figure without it reported.

    python benchmarks/latent_inpainting.py runs/emoji-latent-text-64-cpu --data emoji --n 128 \\
        --out benchmarks/results/latent_inpainting
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from difflab.data import load_dataset
from difflab.data.convert import to_float, to_uint8
from difflab.images import save_grid
from difflab.pipelines import DiffusionModel, generate
from difflab.pipelines.generate import Edit
from difflab.pipelines.img2img import InitImages, pixel_shape
from difflab.pipelines.inpaint import Inpainting
from inpainting_quality import MASKS, make_masks


def psnr_where(images: torch.Tensor, originals: torch.Tensor, keep: torch.Tensor) -> float:
    """PSNR in dB of uint8 ``images`` against ``originals`` over the pixels where ``keep`` (all images pooled)."""
    mse = float((images.double() - originals.double())[keep].pow(2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="a latent diffusion run (data.autoencoder)")
    p.add_argument("--data", default="emoji", help="dataset whose test split is inpainted")
    p.add_argument("--n", type=int, default=128, help="held-out images per mask")
    p.add_argument("--masks", nargs="+", default=list(MASKS), choices=MASKS)
    p.add_argument("--method", help="sampler (default: the checkpoint's)")
    p.add_argument("--steps", type=int, help="sampler steps (default: the checkpoint's)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", type=Path, help="write results.json and grid.png here")
    args = p.parse_args(argv)

    model = DiffusionModel.load(args.checkpoint)
    if model.latent is None:
        raise SystemExit(f"{args.checkpoint} is a pixel-space model: this benchmark measures latent inpainting")
    channels, side, _ = pixel_shape(model)
    test = load_dataset(args.data, split="test", resolution=side, channels=channels)
    n = min(args.n, len(test))
    originals = test.images[:n]
    condition = {}
    if model.text_encoder:
        condition["prompts"] = list(test.captions[:n])
    elif model.num_classes:
        condition["labels"] = test.labels[:n]
    with torch.no_grad():
        round_trip = to_uint8(model.latent.decode(model.latent.encode(to_float(originals).to(model.device),
                                                                      mean=True))).cpu()
    paths = [f"{args.data}:test[{i}]" for i in range(n)]
    results, rows = [], []
    for mask_name in args.masks:
        masks = make_masks(mask_name, n, (side, side))
        keep = (masks == 0).expand_as(originals)
        figures = {"mask": mask_name, "round_trip_psnr": psnr_where(round_trip, originals, keep)}
        for paste_back in (True, False):
            start = time.perf_counter()
            edit = Edit(InitImages(originals, paths), inpaint=Inpainting(masks, "blend", paste_back=paste_back))
            images, _ = generate(model, n, seeds=list(range(n)), edit=edit, method=args.method, steps=args.steps,
                                 batch_size=args.batch_size, **condition)
            key = "pasted" if paste_back else "raw"
            figures[f"{key}_psnr"] = psnr_where(images, originals, keep)
            figures[f"{key}_exact"] = bool(torch.equal(images[keep], originals[keep]))
            figures[f"{key}_seconds"] = time.perf_counter() - start
            rows.append(images[:8])
        results.append(figures)
        print(f"{mask_name:12} unmasked PSNR: paste-back {figures['pasted_psnr']:6.2f} dB "
              f"(bit-exact: {figures['pasted_exact']}), without {figures['raw_psnr']:6.2f} dB, autoencoder round "
              f"trip {figures['round_trip_psnr']:6.2f} dB", flush=True)
    passed = all(r["pasted_psnr"] >= 35 for r in results)
    print(f"criterion unmasked PSNR with paste-back >= 35 dB: {'PASS' if passed else 'FAIL'}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps({"checkpoint": args.checkpoint, "data": args.data, "n": n,
                                                           "rows": results, "pass": passed}, indent=2,
                                                          default=str) + "\n")
        save_grid(torch.cat([originals[:8], *rows]), args.out / "grid.png", nrow=8, upscale=max(1, 64 // side))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
