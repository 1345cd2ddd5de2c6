"""img2img class translation (issue 19 acceptance): held-out Fashion-MNIST images of class c
edited towards class c + 1 (mod 10) by SDEdit at several strengths, on a class-conditional model
with classifier-free guidance.

The first N test images (class c, their true label) are each edited towards class (c + 1) mod 10
with DDIM, image i with seed ``--seed + i`` (the same seed at every strength). An independent
classifier trained on real images (``difflab train-classifier --dataset ...``) labels the edits.
For each strength it prints the target-class accuracy (the edit reads as c + 1), the source-class
accuracy (it still reads as c), the mean and minimum PSNR (dB, per image, data range 255) of the
edit against its input, the number of solver steps the walk ran (diffusers' convention:
⌊steps·strength⌋; ``fixed``: exactly ``steps``) and the noise level σ₀ the input was noised to
(x = x₀ + σ₀·ε, "sigma0"). Row "0 (input)" is the inputs themselves.

The acceptance: target-class accuracy rises monotonically with strength and is >= 0.85 at the
largest strength; PSNR is >= 20 dB at the smallest strength and falls monotonically.

    python benchmarks/img2img_translation.py runs/fashion-mnist-16-cfg \\
        --classifier runs/fashion-mnist-16-eval-classifier --n 500 --strengths 0.3 0.6 0.9 \\
        --out benchmarks/results/img2img_translation

Writes ``OUT/results.json`` and ``OUT/grid.png`` (rows: the first ``--grid-rows`` inputs; columns:
the input, then its edit at each strength).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from difflab.data import load_dataset, to_float
from difflab.images import save_grid
from difflab.metrics import load_classifier
from difflab.models.autoencoder import psnr
from difflab.pipelines import DiffusionModel, Guidance, generate
from difflab.pipelines.generate import Edit, SamplerSettings
from difflab.pipelines.guidance_policy import guidance_scale
from difflab.pipelines.img2img import InitImages


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="a pixel-space class-conditional run trained with label dropout (CFG)")
    p.add_argument("--classifier", required=True, help="independent classifier checkpoint (real images)")
    p.add_argument("--ref", default=None, help="dataset of the inputs (default: the checkpoint's training set)")
    p.add_argument("--split", default="test", help="split the inputs come from (held out)")
    p.add_argument("--n", type=int, default=500, help="inputs: the first N of the split")
    p.add_argument("--strengths", type=float, nargs="+", default=[0.3, 0.6, 0.9])
    p.add_argument("--strength-steps", choices=("diffusers", "fixed"), default="diffusers",
                   help="step convention: diffusers = the last floor(steps*strength) steps; fixed = exactly steps")
    p.add_argument("--guidance-scale", type=float, help="CFG weight (default: the checkpoint's)")
    p.add_argument("--method", default="ddim", help="sampler")
    p.add_argument("--steps", type=int, default=50, help="steps of the full walk")
    p.add_argument("--spacing", default=None, help="step spacing (default: the checkpoint's)")
    p.add_argument("--eta", type=float, default=None, help="DDIM eta (default: the sampler's, 0)")
    p.add_argument("--seed", type=int, default=0, help="image i uses seed SEED + i at every strength")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--min-accuracy", type=float, default=0.85, help="acceptance: target accuracy at the top strength")
    p.add_argument("--min-psnr", type=float, default=20.0, help="acceptance: PSNR (dB) at the lowest strength")
    p.add_argument("--grid-rows", type=int, default=8, help="inputs shown in the grid")
    p.add_argument("--out", type=Path, help="write grid.png and results.json here")
    return p.parse_args(argv)


def translate(model, images: torch.Tensor, targets: torch.Tensor, strength: float,
              args) -> tuple[torch.Tensor, int, float]:
    """Every image edited towards its target class (one generate call per class, per-image seeds);
    returns the edits, the solver steps one image's walk ran and the noise level σ it started
    from (both seen by the step callback)."""
    out = torch.empty_like(images)
    steps_run, start_sigma = set(), set()
    options = {"eta": args.eta} if args.eta is not None else {}
    for c in targets.unique().tolist():
        index = (targets == c).nonzero().flatten()
        calls: list[tuple[int, float]] = []
        edit = Edit(InitImages(images[index], [None] * len(index)), strength, args.strength_steps)
        edited, _ = generate(model, len(index), method=args.method, steps=args.steps, spacing=args.spacing,
                             seeds=[args.seed + int(i) for i in index], class_index=int(c),
                             guidance=Guidance(scale=args.guidance_scale), edit=edit, batch_size=args.batch_size,
                             callback=lambda step, calls=calls: calls.append((step.i, step.sigma)), **options)
        out[index] = edited
        batches = -(-len(index) // args.batch_size)
        steps_run.add(len(calls) // batches)
        start_sigma.update(round(float(sigma), 6) for i, sigma in calls if i == 0)
    if len(steps_run) != 1 or len(start_sigma) != 1:
        raise RuntimeError(f"the classes walked differently: steps {sorted(steps_run)}, σ₀ {sorted(start_sigma)}")
    return out, steps_run.pop(), start_sigma.pop()


def main(argv=None) -> int:
    args = parse_args(argv)
    began = time.perf_counter()
    model = DiffusionModel.load(args.checkpoint)
    if not model.num_classes:
        raise SystemExit(f"{args.checkpoint} is not class-conditional")
    classifier = load_classifier(args.classifier)
    dataset = args.ref or model.record.train_config["data"]["dataset"]
    data = load_dataset(dataset, args.split, resolution=model.image_shape[-1], channels=model.image_shape[0])
    images, labels = data.images[: args.n], data.labels[: args.n].long()
    targets = (labels + 1) % model.num_classes
    scale = guidance_scale(model, Guidance(scale=args.guidance_scale))
    spacing = SamplerSettings.resolve(model, args.method, args.steps, args.spacing).spacing
    print(f"{len(images)} {dataset}:{args.split} images, class c -> c + 1; {args.method}, {args.steps} steps "
          f"({spacing} spacing, {args.strength_steps} convention), CFG {scale:g}")

    def scores(edited: torch.Tensor) -> dict:
        predicted = classifier.probabilities(edited).argmax(dim=1).cpu()
        db = psnr(to_float(edited), to_float(images))
        return {"target_accuracy": float((predicted == targets).float().mean()),
                "source_accuracy": float((predicted == labels).float().mean()),
                "psnr_mean": float(db.mean()), "psnr_min": float(db.min())}

    rows, columns = [], [images[: args.grid_rows]]
    baseline = {"strength": 0.0, "steps_run": 0, "start_sigma": 0.0, "seconds": 0.0, **scores(images)}
    baseline["psnr_mean"] = baseline["psnr_min"] = None  # the input against itself
    print(f"{'strength':>10} {'target acc':>11} {'source acc':>11} {'PSNR dB':>8} {'min PSNR':>9} "
          f"{'steps':>6} {'sigma0':>7} {'s':>6}")
    print(f"{'0 (input)':>10} {baseline['target_accuracy']:>11.3f} {baseline['source_accuracy']:>11.3f} "
          f"{'-':>8} {'-':>9} {0:>6} {'-':>7} {0:>6}")
    for strength in args.strengths:
        start = time.perf_counter()
        edited, steps_run, sigma0 = translate(model, images, targets, strength, args)
        row = {"strength": strength, "steps_run": steps_run, "start_sigma": sigma0,
               "seconds": time.perf_counter() - start, **scores(edited)}
        rows.append(row)
        columns.append(edited[: args.grid_rows])
        print(f"{strength:>10g} {row['target_accuracy']:>11.3f} {row['source_accuracy']:>11.3f} "
              f"{row['psnr_mean']:>8.2f} {row['psnr_min']:>9.2f} {steps_run:>6} {sigma0:>7.3f} {row['seconds']:>6.0f}",
              flush=True)

    ordered = sorted(rows, key=lambda r: r["strength"])
    accuracy, db = [r["target_accuracy"] for r in ordered], [r["psnr_mean"] for r in ordered]
    checks = {
        "target_accuracy_rises": all(a < b for a, b in zip(accuracy, accuracy[1:])),
        f"target_accuracy_at_{ordered[-1]['strength']:g}_ge_{args.min_accuracy:g}": accuracy[-1] >= args.min_accuracy,
        f"psnr_at_{ordered[0]['strength']:g}_ge_{args.min_psnr:g}": db[0] >= args.min_psnr,
        "psnr_falls": all(a > b for a, b in zip(db, db[1:])),
    }
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    total = time.perf_counter() - began
    print(f"wall time {total:.0f} s ({torch.get_num_threads()} torch threads)")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        grid = torch.stack(columns, dim=1).flatten(0, 1)  # row r: input r, then its edits
        save_grid(grid, args.out / "grid.png", nrow=len(columns), upscale=max(1, 64 // model.image_shape[-1]))
        (args.out / "results.json").write_text(json.dumps(
            {"checkpoint": args.checkpoint, "checkpoint_step": model.record.step, "classifier": args.classifier,
             "inputs": f"{dataset}:{args.split}[:{len(images)}]", "n": len(images), "method": args.method,
             "steps": args.steps, "spacing": spacing, "eta": args.eta, "strength_steps": args.strength_steps,
             "guidance_scale": scale, "seed": args.seed, "input": baseline, "rows": rows, "checks": checks,
             "torch_threads": torch.get_num_threads(), "wall_seconds": total}, indent=1) + "\n")
        print(f"wrote {args.out / 'results.json'} and {args.out / 'grid.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
