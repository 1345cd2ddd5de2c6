"""A Canny ControlNet on emoji: do the outputs' edges follow the control edges?

Held-out emoji (the test split: code points never trained on) give Canny edges (the ControlNet's
own preprocessing) and prompts (their names). The base text model is sampled alone and with the
ControlNet at each scale; the Canny edges of every output are matched to the control edges with a
2-pixel tolerance (precision, recall, F1, :func:`difflab.metrics.control.edge_f1`; also at 1 and 0
pixels, which separate the models better at 32×32). Acceptance
(docs/benchmarks.md): F1 ≥ 0.5 at scale 1, at least twice the base's, and rising with the scale.

    python benchmarks/controlnet_canny.py --base runs/emoji-text-32-cpu \\
        --controlnet runs/controlnet-canny-emoji-32 --out benchmarks/results/controlnet_canny
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from difflab.controls import make_controls
from difflab.data import load_dataset
from difflab.data.convert import random_placement
from difflab.images import save_grid
from difflab.metrics.control import edge_f1
from difflab.pipelines import DiffusionModel, generate
from difflab.pipelines.controlnet import Control, ControlNetModel
from difflab.pipelines.img2img import InitImages, pixel_shape


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--base", default="runs/emoji-text-32-cpu", help="the base text model")
    p.add_argument("--controlnet", default="runs/controlnet-canny-emoji-32", help="the Canny ControlNet run")
    p.add_argument("--split", default="test", help="the emoji split whose edges and names are used")
    p.add_argument("--n", type=int, default=256, help="images (the split's emoji, repeated with new seeds)")
    p.add_argument("--scales", type=float, nargs="+", default=[0.0, 0.5, 1.0], help="control scales")
    p.add_argument("--steps", type=int, default=20, help="sampler steps (the checkpoint's sampler)")
    p.add_argument("--tolerances", type=int, nargs="+", default=[2, 1, 0],
                   help="edge matching tolerances in pixels (the first is the headline)")
    p.add_argument("--prompts", choices=["own", "shuffled", "empty"], default="own",
                   help="each image's own name; the name of another held-out emoji (half the split away), so the "
                        "prompt does not give the layout and only the control can; or no prompt")
    p.add_argument("--placement", type=float, nargs=2, metavar=("MIN", "MAX"),
                   help="shrink each held-out emoji by a scale in [MIN, MAX] and place it at random (seed 0) before "
                        "its edges are taken: layouts the base never draws from a name, so only the control can "
                        "set them (a ControlNet trained with data.random_placement)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--out", type=Path, help="write results.json and grid.png here")
    args = p.parse_args(argv)

    base, net = DiffusionModel.load(args.base), ControlNetModel.load(args.controlnet)
    channels, side, _ = pixel_shape(base)
    data = load_dataset(base.record.train_config["data"]["dataset"], args.split, resolution=side, channels=channels)
    index = [i % len(data) for i in range(args.n)]
    pictures = data.images[index]
    if args.placement:
        pictures = random_placement(pictures, tuple(args.placement), torch.Generator().manual_seed(0))
    named = {"own": index, "shuffled": [(i + len(data) // 2) % len(data) for i in index], "empty": None}[args.prompts]
    prompts = [""] * args.n if named is None else [data.captions[i] for i in named]
    edges = make_controls(net.control, pictures)
    print(f"{args.n} images from {len(data)} held-out emoji ({data.name}, {args.split}); prompts: {args.prompts}; "
          f"control: {net.control}")

    def score(images) -> dict:
        found = make_controls(net.control, images) > 0
        out = {}
        for tolerance in args.tolerances:
            scores = edge_f1(found, edges > 0, tolerance)
            suffix = "" if tolerance == args.tolerances[0] else f"_tol{tolerance}"
            out.update({f"{k}{suffix}": v for k, v in scores.items() if k != "f1_per_image"})
        return out

    rows, columns = [], [pictures[:8], edges[:8].expand(-1, 3, -1, -1)]
    seeds = list(range(args.n))
    plain, _ = generate(base, args.n, seeds=seeds, prompts=prompts, steps=args.steps, batch_size=args.batch_size)
    rows.append({"model": "base alone", "scale": None, **score(plain)})
    columns.append(plain[:8])
    for scale in args.scales:
        control = Control(net, InitImages(edges, [None] * args.n), scale)
        images, _ = generate(base, args.n, seeds=seeds, prompts=prompts, steps=args.steps, controls=[control],
                             batch_size=args.batch_size)
        rows.append({"model": "base + ControlNet", "scale": scale, **score(images)})
        columns.append(images[:8])
    for row in rows:
        scale = "" if row["scale"] is None else f" at scale {row['scale']:.2f}"
        others = ", ".join(f"tolerance {t}: {row[f'f1_tol{t}']:.3f}" for t in args.tolerances[1:])
        print(f"{row['model']}{scale}: edge F1 {row['f1']:.3f} (precision {row['precision']:.3f}, recall "
              f"{row['recall']:.3f}){'; F1 at ' + others if others else ''}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        summary = {"base": args.base, "controlnet": args.controlnet, "split": args.split, "n": args.n,
                   "prompts_from": args.prompts, "placement": args.placement,
                   "steps": args.steps, "tolerances": args.tolerances, "rows": rows, "prompts": prompts[:8]}
        (args.out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
        # rows: the held-out emoji, its Canny edges, base alone, then the ControlNet at each scale
        save_grid(torch.stack(columns).flatten(0, 1), args.out / "grid.png", nrow=8, upscale=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
