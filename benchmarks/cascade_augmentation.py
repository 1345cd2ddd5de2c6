"""Does noise-conditioning augmentation help a cascade? FID of base → super-resolution samples at
several augmentation levels (Ho et al. 2022, "Cascaded Diffusion Models", §4.2).

The base model's samples (every class in turn, seed i for image i) are upsampled by the
super-resolution model at each ``--aug-levels`` value; the upsampled images are compared with
real test images at the high resolution (FID and KID in Inception-v3 features, class accuracy
by an independent classifier). Level 0 is the cascade without augmentation at sampling.

    python benchmarks/cascade_augmentation.py runs/fashion-mnist-16-cfg runs/fashion-mnist-sr-16-32 \\
        --n 1000 --aug-levels 0 0.1 0.2 --classifier runs/fashion-mnist-16-eval-classifier \\
        --out benchmarks/results/cascade_augmentation
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from difflab.data import load_dataset
from difflab.data.dataset import ImageDataset
from difflab.images import save_grid
from difflab.metrics import EvalOptions, InceptionFeatures, Reference, evaluate, load_classifier
from difflab.pipelines import DiffusionModel, Guidance, generate
from difflab.pipelines.img2img import InitImages


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("base", help="the base run")
    p.add_argument("upsampler", help="the super-resolution run (trained with diffusion.aug_max > 0)")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--aug-levels", type=float, nargs="+", default=[0.0, 0.1, 0.2])
    p.add_argument("--ref", default="fashion-mnist", help="dataset whose test split is the reference")
    p.add_argument("--max-ref", type=int, default=5000)
    p.add_argument("--classifier", help="an independent classifier (class accuracy of the upsampled images)")
    p.add_argument("--method", help="the upsampler's sampler (default: the checkpoint's)")
    p.add_argument("--steps", type=int, help="the upsampler's steps (default: the checkpoint's)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)

    base, upsampler = DiffusionModel.load(args.base), DiffusionModel.load(args.upsampler)
    side, channels = upsampler.image_shape[-1], upsampler.image_shape[0]
    low, labels = generate(base, args.n, seed=0, guidance=Guidance(), progress=True)
    real = load_dataset(args.ref, "test", resolution=side, channels=channels)
    reference = Reference(name=f"{args.ref}:test ({side}x{side})", dataset=real.subset(slice(0, args.max_ref)))
    extractor = InceptionFeatures(device="cpu")
    classifier = load_classifier(args.classifier) if args.classifier else None
    options = EvalOptions(kid_subset_size=min(1000, args.n))
    rows, shown = [], [torch.nn.functional.interpolate(low[:10].float(), size=(side, side)).byte()]
    for level in args.aug_levels:
        high, _ = generate(upsampler, args.n, labels=labels, cond_images=InitImages(low, [None] * args.n),
                           aug_level=level, method=args.method, steps=args.steps)  # each under its base class
        report = evaluate(ImageDataset(images=high, labels=labels, class_names=list(real.class_names), name="cascade"),
                          reference, extractor, classifier, options)
        row = {"aug_level": level, **{k: report[k] for k in ("fid", "kid", "precision", "recall", "class_accuracy")
                                      if k in report}}
        rows.append(row)
        shown.append(high[:10])
        print("  ".join(f"{k} {v:.4g}" for k, v in row.items()), flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        save_grid(torch.stack(shown, 1).flatten(0, 1), args.out / "grid.png", nrow=len(shown),
                  upscale=max(1, 64 // side))
        (args.out / "results.json").write_text(json.dumps({"base": args.base, "upsampler": args.upsampler,
                                                            "n": args.n, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
