"""``difflab cascade BASE SR [SR2 ...] --n 16``: sample a base model, then upsample stage by stage."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "cascade",
        help="sample a base model and upsample through super-resolution models",
        description="A cascade (Ho et al. 2022): sample --n images of the base run, then upsample them through each "
        "super-resolution run in turn (trained with diffusion.image_condition: low_res). Every stage gets the same "
        "seeds, classes and prompts. Writes OUT/stage-K/ (images, grid.png) for each stage, base = stage-0, and "
        "OUT/cascade.png: one row per stage (the first 16 images), upscaled to the last stage's size.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("base", help="the base run (unconditional, class- or text-conditioned)")
    p.add_argument("upsamplers", nargs="+", metavar="SR_RUN", help="super-resolution runs, lowest resolution first")
    p.add_argument("--n", type=int, default=16, help="number of images")
    p.add_argument("--seed", type=int, default=0, help="image i uses seed SEED+i at every stage")
    p.add_argument("--class", dest="class_index", type=int, help="class index (default: every class in turn)")
    p.add_argument("--prompt", action="append", metavar="TEXT", help="caption for text-conditioned stages")
    p.add_argument("--aug-level", type=float, metavar="A",
                   help="noise-conditioning augmentation level of every upsampling stage (default: each "
                        "checkpoint's sample.aug_level)")
    p.add_argument("--guidance-scale", type=float, help="CFG weight of every stage (default: each checkpoint's)")
    p.add_argument("--method", help="sampler of every stage (default: each checkpoint's)")
    p.add_argument("--steps", type=int, help="sampler steps of every stage (default: each checkpoint's)")
    p.add_argument("--batch-size", type=int, default=256, help="images per sampler call")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--out", default="cascade", help="output folder")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    import torch
    import torch.nn.functional as F

    from ..device import pick_device
    from ..images import check_output_folder, save_grid, save_images
    from ..pipelines import DiffusionModel
    from ..pipelines.super_resolution import cascade

    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}")
    out = check_output_folder(Path(args.out))
    device = pick_device(args.device)
    base = DiffusionModel.load(args.base, device=device)
    upsamplers = [DiffusionModel.load(run, device=device) for run in args.upsamplers]
    stages = cascade(base, upsamplers, args.n, seed=args.seed, class_index=args.class_index, prompts=args.prompt,
                     aug_level=args.aug_level, guidance_scale=args.guidance_scale, steps=args.steps, method=args.method,
                     batch_size=args.batch_size, progress=True)
    side = stages[-1].images.shape[-1]
    shown = []
    for k, stage in enumerate(stages):
        save_images(stage.images, out / f"stage-{k}" / "images")
        save_grid(stage.images, out / f"stage-{k}" / "grid.png")
        shown.append(F.interpolate(stage.images.float(), size=(side, side), mode="nearest").byte())
    shown_n = min(args.n, 16)  # one row per stage, the first 16 images
    save_grid(torch.cat([images[:shown_n] for images in shown]), out / "cascade.png", nrow=shown_n,
              upscale=max(1, 64 // side))
    print(f"difflab cascade: {args.n} images through {len(stages)} stages "
          f"({' -> '.join(str(s.images.shape[-1]) for s in stages)} px) in {out} (side by side: {out / 'cascade.png'})")
    return 0
