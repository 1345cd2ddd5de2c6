"""instruct-pix2pix on held-out programmatic edits: how close is each edit to its exact target?

Every held-out source image of an ``edits-*`` test split is edited by its instruction; the
edits are compared with the exact targets. Per image-guidance scale s_I (text guidance s_T
fixed) it prints the mean PSNR to the target, the same per instruction family, the do-nothing
baseline (the source itself as the output) and the PSNR to the source, which rises with s_I
when the image guidance works.

    python benchmarks/instruct_pix2pix_eval.py runs/fashion-mnist-16-ip2p --n 500 \\
        --image-scales 1.0 1.5 2.0 --out benchmarks/results/instruct_pix2pix
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from difflab.data import load_dataset
from difflab.images import save_grid
from difflab.metrics.super_resolution import psnr
from difflab.pipelines import DiffusionModel, Guidance, generate
from difflab.pipelines.img2img import InitImages, pixel_shape


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="an instruct-pix2pix run (diffusion.image_condition: source)")
    p.add_argument("--data", help="the paired-edit set (default: the run's data.dataset); its test split is used")
    p.add_argument("--n", type=int, default=500, help="held-out edits")
    p.add_argument("--image-scales", type=float, nargs="+", default=[1.0, 1.5, 2.0], help="s_I values")
    p.add_argument("--text-scale", type=float, help="s_T (default: the checkpoint's guidance scale)")
    p.add_argument("--method", default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--sweep-text-scales", type=float, nargs="+", metavar="S_T",
                   help="also write sweep.png: for the first 3 edits, rows s_I (--image-scales), columns s_T")
    p.add_argument("--out", type=Path, help="write results.json and grid.png here")
    args = p.parse_args(argv)

    model = DiffusionModel.load(args.checkpoint)
    channels, side, _ = pixel_shape(model)
    name = args.data or model.record.train_config["data"]["dataset"]
    test = load_dataset(name, "test", resolution=side, channels=channels)
    n = min(args.n, len(test))
    sources, targets, captions, families = test.sources[:n], test.images[:n], test.captions[:n], test.labels[:n]
    baseline = psnr(sources, targets)
    print(f"{n} held-out edits of {test.name}; do-nothing baseline (the source as the output): "
          f"{baseline[torch.isfinite(baseline)].mean():.2f} dB")
    rows, columns = [], [sources[:8], targets[:8]]
    for image_scale in args.image_scales:
        start = time.perf_counter()
        edits, _ = generate(model, n, seeds=list(range(n)), prompts=list(captions), method=args.method,
                            steps=args.steps, cond_images=InitImages(sources, [None] * n), batch_size=args.batch_size,
                            guidance=Guidance(scale=args.text_scale, image_scale=image_scale))
        to_target, to_source = psnr(edits, targets).clamp(max=100), psnr(edits, sources).clamp(max=100)
        per_family = {test.class_names[f]: float(to_target[families == f].mean()) for f in families.unique().tolist()}
        row = {"image_scale": image_scale, "psnr_to_target": float(to_target.mean()),
               "psnr_to_source": float(to_source.mean()), "per_family": per_family,
               "seconds": time.perf_counter() - start}
        rows.append(row)
        columns.append(edits[:8])
        families_text = "  ".join(f"{k} {v:.1f}" for k, v in per_family.items())
        print(f"s_I {image_scale:4.2f}: to target {row['psnr_to_target']:6.2f} dB, to source "
              f"{row['psnr_to_source']:6.2f} dB | {families_text}  ({row['seconds']:.0f} s)", flush=True)
    finite = baseline[torch.isfinite(baseline)]
    summary = {"checkpoint": args.checkpoint, "data": test.name, "n": n, "text_scale": args.text_scale,
               "baseline_psnr": float(finite.mean()), "rows": rows, "captions": captions[:8]}
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        grid = torch.stack(columns, 1).flatten(0, 1)  # row: source, target, then the edits per s_I
        save_grid(grid, args.out / "grid.png", nrow=len(columns), upscale=max(1, 64 // side))
        (args.out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
        if args.sweep_text_scales:
            sweep(model, sources[:3], captions[:3], args, args.out / "sweep.png")
    return 0


def sweep(model, sources, captions, args, path: Path) -> None:
    """For each edit: one block, rows s_I, columns the source then each s_T (seed 0 throughout)."""
    k, rows = len(sources), []
    for image_scale in args.image_scales:
        row = [sources]
        for text_scale in args.sweep_text_scales:
            edits, _ = generate(model, k, seeds=[0] * k, prompts=list(captions), method=args.method, steps=args.steps,
                                cond_images=InitImages(sources, [None] * k),
                                guidance=Guidance(scale=text_scale, image_scale=image_scale))
            row.append(edits)
        rows.append(torch.stack(row, 1))  # (k, 1 + len(s_T), C, H, W)
    blocks = torch.stack(rows, 1).flatten(0, 2)  # edit, then s_I, then column
    save_grid(blocks, path, nrow=1 + len(args.sweep_text_scales), upscale=max(1, 64 // sources.shape[-1]))
    print(f"sweep (rows s_I {args.image_scales}, columns: source, s_T {args.sweep_text_scales}) for "
          f"{', '.join(map(repr, captions))}: {path}")


if __name__ == "__main__":
    raise SystemExit(main())
