"""``difflab sample CHECKPOINT``: generate images from a trained model."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from ..sampling import SAMPLERS, SPACINGS

    p = subparsers.add_parser(
        "sample",
        help="generate images from a trained checkpoint",
        description="Generate images from a checkpoint written by `difflab train`: writes grid.png, "
        "one PNG per image under images/, and samples.npz (uint8 NHWC, with labels for class-"
        "conditional models). Method, steps and spacing default to the checkpoint's sample settings.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", help="a run folder or its checkpoint/ folder")
    p.add_argument("--n", type=int, default=64, help="number of images")
    p.add_argument("--method", choices=sorted(SAMPLERS), help="sampler (default: the checkpoint's)")
    p.add_argument("--steps", type=int, help="sampler steps (default: the checkpoint's)")
    p.add_argument("--spacing", choices=sorted(SPACINGS), help="step spacing (default: the checkpoint's)")
    p.add_argument("--seed", type=int, default=0, help="image i uses noise seed SEED+i")
    p.add_argument("--class", dest="class_index", type=int,
                   help="class index for a class-conditional model (default: every class in turn)")
    p.add_argument("--batch-size", type=int, default=256, help="images per sampler call")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--out", default="samples", help="output folder")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..images import save_grid, save_images, save_npz
    from ..pipelines import DiffusionModel, generate
    from ..training.distributed import pick_device

    if args.n < 1:
        raise ValueError("--n must be at least 1")
    model = DiffusionModel.load(args.checkpoint, use_ema=not args.no_ema, device=pick_device(args.device))
    images, labels = generate(model, args.n, method=args.method, steps=args.steps, spacing=args.spacing,
                              seed=args.seed, class_index=args.class_index, batch_size=args.batch_size,
                              progress=True)
    out = Path(args.out)
    nrow = model.num_classes if (labels is not None and args.class_index is None) else None
    grid = save_grid(images, out / "grid.png", nrow=nrow, upscale=max(1, 64 // images.shape[-1]))
    save_images(images, out / "images")
    save_npz(images, out / "samples.npz", labels)
    print(f"difflab sample: {len(images)} images in {out} (grid: {grid})")
    return 0
