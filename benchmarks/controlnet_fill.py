"""ControlNet's fill task: does the generated disc fill the given outline, in the asked colour?

On held-out outlines of the fill set (:mod:`difflab.data.fill`, test split), the base model
(class = colour) is sampled alone and with the ControlNet at each control scale; the drawn disc
(pixels far from the border's grey) is compared with the outline's exact disc (IoU), and its
mean colour with the asked one (colour accuracy). Acceptance (docs/benchmarks.md): IoU ≥ 0.80
with the ControlNet at scale 1, ≤ 0.30 for the base alone, colour accuracy ≥ 0.90.

With ``--train CONFIG`` it first trains the ControlNet in chunks of ``--eval-every`` steps
(each chunk resumes the last: the same run as one uninterrupted training), scoring IoU after
each, until ``--budget`` seconds of training: the IoU-against-step curve (the paper's "sudden
convergence", §4.2 / Fig. 21).

    python benchmarks/controlnet_fill.py --base runs/fill-32 --controlnet runs/controlnet-fill-32 \\
        --train configs/controlnet-fill-32.yaml --eval-steps 25 50 75 100 150 200 300 400 600 800 1000 \\
        --out benchmarks/results/controlnet_fill
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from difflab.data.fill import COLOURS, SPLITS, disc_masks, draw_fill
from difflab.images import save_grid
from difflab.metrics.control import fill_scores
from difflab.pipelines import DiffusionModel, generate
from difflab.pipelines.controlnet import Control, ControlNetModel
from difflab.pipelines.img2img import InitImages

PALETTE = torch.tensor(list(COLOURS.values()))


def test_set(n: int, side: int):
    """The first n held-out fill images: outlines, exact discs, colour labels, originals."""
    data, circles = draw_fill(SPLITS["test"][0], side, SPLITS["test"][1])
    return data.controls[:n], disc_masks(circles, side)[:n], data.labels[:n], data.images[:n]


def sample(base, outlines, labels, controlnet=None, scale=1.0, steps=20, batch_size=256) -> torch.Tensor:
    n = len(outlines)
    controls = [Control(controlnet, InitImages(outlines, [None] * n), scale)] if controlnet is not None else None
    images, _ = generate(base, n, seeds=list(range(n)), labels=labels, steps=steps, controls=controls,
                         batch_size=batch_size)
    return images


def train_in_chunks(args, base_path: str) -> list[dict]:
    """Train the ControlNet of ``args.train`` in chunks, scoring IoU after each (see the docstring)."""
    from difflab.training.config import load_config
    from difflab.training.objectives import ControlNetObjective
    from difflab.training.trainer import train

    out = str(args.controlnet)
    config = load_config(args.train, [f"controlnet.base={base_path}", f"train.out_dir={out}", "train.max_seconds=null"])
    base = DiffusionModel.load(base_path)
    outlines, discs, labels, _ = test_set(args.eval_n, base.image_shape[-1])
    curve, spent, step = [], 0.0, 0
    points = sorted(args.eval_steps) if args.eval_steps else None
    while spent < args.budget and step < args.max_steps and (points is None or step < points[-1]):
        first = step == 0
        step = next(p for p in points if p > step) if points else step + args.eval_every
        config.train.steps = step
        start = time.perf_counter()
        train(config, resume=None if first else out, progress=False, objective=ControlNetObjective)
        spent += time.perf_counter() - start
        images = sample(base, outlines, labels, ControlNetModel.load(out), 1.0, args.steps, args.batch_size)
        scores = fill_scores(images, discs, labels, PALETTE)
        curve.append({"step": step, "train_seconds": round(spent, 1), "iou": scores["iou"],
                      "colour_accuracy": scores["colour_accuracy"]})
        print(f"step {step:5d} ({spent:6.0f} s): IoU {scores['iou']:.3f}, colour accuracy "
              f"{scores['colour_accuracy']:.3f}", flush=True)
    return curve


def plot_curve(curve: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([c["step"] for c in curve], [c["iou"] for c in curve], "o-", label="IoU with the outline's disc")
    ax.plot([c["step"] for c in curve], [c["colour_accuracy"] for c in curve], "s--", label="colour accuracy")
    ax.axhline(0.8, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("ControlNet training step")
    ax.set_ylim(0, 1)
    ax.set_title("Fill task: ControlNet on a frozen 32x32 base (2 CPU cores)", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--base", default="runs/fill-32", help="the base run (configs/fill-32.yaml)")
    p.add_argument("--controlnet", type=Path, default=Path("runs/controlnet-fill-32"),
                   help="the ControlNet run (trained here with --train)")
    p.add_argument("--train", metavar="CONFIG", help="train the ControlNet first, scoring IoU every --eval-every steps")
    p.add_argument("--eval-every", type=int, default=250, help="with --train: steps per chunk")
    p.add_argument("--eval-steps", type=int, nargs="+", metavar="STEP",
                   help="with --train: score at these steps instead of every --eval-every")
    p.add_argument("--eval-n", type=int, default=128, help="with --train: held-out outlines scored per chunk")
    p.add_argument("--budget", type=float, default=2400, help="with --train: seconds of training at most")
    p.add_argument("--max-steps", type=int, default=100_000, help="with --train: steps at most")
    p.add_argument("--n", type=int, default=512, help="held-out outlines of the final scores")
    p.add_argument("--scales", type=float, nargs="+", default=[0.0, 0.5, 1.0], help="control scales")
    p.add_argument("--steps", type=int, default=20, help="sampler steps (the checkpoint's sampler)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", type=Path, help="write results.json, grid.png and (with --train) iou_curve.png here")
    args = p.parse_args(argv)

    curve = train_in_chunks(args, args.base) if args.train else []
    base = DiffusionModel.load(args.base)
    net = ControlNetModel.load(args.controlnet)
    outlines, discs, labels, originals = test_set(args.n, base.image_shape[-1])
    rows, columns = [], [outlines[:8].expand(-1, 3, -1, -1), originals[:8]]
    base_images = sample(base, outlines, labels, steps=args.steps, batch_size=args.batch_size)
    scores = fill_scores(base_images, discs, labels, PALETTE)
    rows.append({"model": "base alone", "scale": None, "iou": scores["iou"],
                 "colour_accuracy": scores["colour_accuracy"]})
    columns.append(base_images[:8])
    for scale in args.scales:
        images = sample(base, outlines, labels, net, scale, args.steps, args.batch_size)
        scores = fill_scores(images, discs, labels, PALETTE)
        rows.append({"model": "base + ControlNet", "scale": scale, "iou": scores["iou"],
                     "colour_accuracy": scores["colour_accuracy"]})
        columns.append(images[:8])
    for row in rows:
        scale = "" if row["scale"] is None else f" at scale {row['scale']:.2f}"
        print(f"{row['model']}{scale}: IoU {row['iou']:.3f}, colour accuracy {row['colour_accuracy']:.3f}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        summary = {"base": args.base, "controlnet": str(args.controlnet), "n": len(outlines), "steps": args.steps,
                   "rows": rows, "curve": curve}
        (args.out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
        # rows: outline, original, base alone, then the ControlNet at each scale
        save_grid(torch.stack(columns).flatten(0, 1), args.out / "grid.png", nrow=8, upscale=2)
        if curve:
            plot_curve(curve, args.out / "iou_curve.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
