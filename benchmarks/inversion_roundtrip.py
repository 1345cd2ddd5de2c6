"""DDIM inversion round trip (issue 19 acceptance): held-out images inverted to noise and sampled
back by the same model with the same DDIM walk; PSNR of the reconstruction against the image.

Each of the first N test images is inverted (:func:`difflab.pipelines.inversion.invert_images`,
``difflab invert``) under its true class at guidance 1 (inversion always runs unguided), then
sampled back from that noise by deterministic DDIM (η = 0) with the same steps, spacing and class
(``generate(..., noise=noise)``, ``difflab sample --noise``), once per sampling guidance scale.
At guidance 1 the sample retraces the inverted ODE path; at w > 1 classifier-free guidance changes
every step's x̂₀, so the path and the image are not recovered: why exact editing under CFG needs
null-text inversion (Mokady et al. 2023; benchmarks/null_text_roundtrip.py for text models).

The acceptance: mean PSNR >= 30 dB at guidance 1.

    python benchmarks/inversion_roundtrip.py runs/fashion-mnist-16-cfg --n 200 --steps 50 \\
        --guidance-scales 1 3 --out benchmarks/results/inversion_roundtrip

Prints per sampling guidance scale the mean, median and minimum PSNR (dB, per image, data range
255) and the fraction of images at >= 30 dB; writes ``OUT/results.json`` and ``OUT/grid.png``
(row 0: the inputs; then one row of reconstructions per guidance scale).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from difflab.data import load_dataset, to_float
from difflab.images import save_grid
from difflab.models.autoencoder import psnr
from difflab.pipelines import DiffusionModel, Guidance, generate
from difflab.pipelines.generate import SamplerSettings
from difflab.pipelines.inversion import invert_images


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="a pixel-space run (class-conditional: each image inverted under its label)")
    p.add_argument("--ref", default=None, help="dataset of the inputs (default: the checkpoint's training set)")
    p.add_argument("--split", default="test", help="split the inputs come from (held out)")
    p.add_argument("--n", type=int, default=200, help="inputs: the first N of the split")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps of inversion and of sampling")
    p.add_argument("--spacing", default=None, help="step spacing of both (default: the checkpoint's)")
    p.add_argument("--guidance-scales", type=float, nargs="+", default=[1.0, 3.0],
                   help="CFG weights of the sampling back (inversion is always at 1)")
    p.add_argument("--threshold-db", type=float, default=30.0, help="acceptance: mean PSNR at guidance 1")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--grid-columns", type=int, default=10, help="images shown in the grid")
    p.add_argument("--out", type=Path, help="write grid.png and results.json here")
    return p.parse_args(argv)


def by_class(labels: torch.Tensor | None, n: int):
    """(class index or None, image indices) groups: each image under its own label."""
    if labels is None:
        return [(None, torch.arange(n))]
    return [(int(c), (labels == c).nonzero().flatten()) for c in labels.unique()]


def main(argv=None) -> int:
    args = parse_args(argv)
    began = time.perf_counter()
    model = DiffusionModel.load(args.checkpoint)
    if model.latent is not None or model.text_encoder:
        raise SystemExit("this benchmark takes a pixel-space unconditional or class-conditional model")
    dataset = args.ref or model.record.train_config["data"]["dataset"]
    data = load_dataset(dataset, args.split, resolution=model.image_shape[-1], channels=model.image_shape[0])
    images = data.images[: args.n]
    labels = data.labels[: args.n].long() if model.num_classes and data.labels is not None else None
    settings = SamplerSettings.resolve(model, "ddim", args.steps, args.spacing)
    print(f"{len(images)} {dataset}:{args.split} images, DDIM {settings.steps} steps ({settings.spacing} spacing), "
          f"{'each under its true class' if labels is not None else 'unconditional'}; inversion at guidance 1")

    start = time.perf_counter()
    noise = torch.empty((len(images), *model.image_shape))
    for c, index in by_class(labels, len(images)):
        noise[index] = invert_images(model, images[index], steps=settings.steps, spacing=settings.spacing,
                                     class_index=c).cpu()
    invert_seconds = time.perf_counter() - start
    print(f"inverted in {invert_seconds:.0f} s; noise std {float(noise.std()):.3f}, mean {float(noise.mean()):+.3f}")

    rows, grid = [], [images[: args.grid_columns]]
    at = f">= {args.threshold_db:g} dB"
    print(f"{'guidance':>9} {'mean PSNR':>10} {'median':>8} {'min':>7} {at:>9} {'s':>5}")
    for scale in args.guidance_scales:
        start = time.perf_counter()
        back = torch.empty_like(images)
        for c, index in by_class(labels, len(images)):
            back[index], _ = generate(model, len(index), method="ddim", steps=settings.steps, spacing=settings.spacing,
                                      class_index=c, guidance=Guidance(scale=scale), noise=noise[index], eta=0.0,
                                      batch_size=args.batch_size)
        db = psnr(to_float(back), to_float(images))
        row = {"guidance_scale": scale, "psnr_mean": float(db.mean()), "psnr_median": float(db.median()),
               "psnr_min": float(db.min()), "psnr_max": float(db.max()),
               "fraction_at_threshold": float((db >= args.threshold_db).float().mean()),
               "mean_abs_error_255": float((back.float() - images.float()).abs().mean()),
               "seconds": time.perf_counter() - start}
        rows.append(row)
        grid.append(back[: args.grid_columns])
        print(f"{scale:>9g} {row['psnr_mean']:>10.2f} {row['psnr_median']:>8.2f} {row['psnr_min']:>7.2f} "
              f"{row['fraction_at_threshold']:>9.3f} {row['seconds']:>5.0f}", flush=True)

    at_one = [r for r in rows if r["guidance_scale"] == 1.0]
    checks = {}
    if at_one:
        checks[f"mean_psnr_at_guidance_1_ge_{args.threshold_db:g}"] = at_one[0]["psnr_mean"] >= args.threshold_db
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    total = time.perf_counter() - began
    print(f"wall time {total:.0f} s ({torch.get_num_threads()} torch threads)")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        save_grid(torch.cat(grid), args.out / "grid.png", nrow=len(grid[0]),
                  upscale=max(1, 64 // model.image_shape[-1]))
        (args.out / "results.json").write_text(json.dumps(
            {"checkpoint": args.checkpoint, "checkpoint_step": model.record.step,
             "inputs": f"{dataset}:{args.split}[:{len(images)}]", "n": len(images), "method": "ddim", "eta": 0.0,
             "steps": settings.steps, "spacing": settings.spacing, "inversion_guidance_scale": 1.0,
             "conditioning": "true class" if labels is not None else "unconditional",
             "invert_seconds": invert_seconds, "noise_std": float(noise.std()), "rows": rows, "checks": checks,
             "torch_threads": torch.get_num_threads(), "wall_seconds": total}, indent=1) + "\n")
        print(f"wrote {args.out / 'results.json'} and {args.out / 'grid.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
