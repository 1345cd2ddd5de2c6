"""``difflab invert RUN --images DIR``: DDIM inversion of a folder of images to OUT/noise.npz."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from ..sampling import SPACINGS

    p = subparsers.add_parser(
        "invert",
        help="map images to the DDIM noise that samples them back",
        description="DDIM inversion: map the images of a folder (resized to the model's size) to the noise that "
        "deterministic DDIM sampling turns back into them, written to OUT/noise.npz (array 'noise', N x C x H x W, "
        "unit scale). `difflab sample RUN --noise OUT/noise.npz --method ddim` with the same --steps, --spacing and "
        "--class/--prompt and --guidance-scale 1 maps it back; prompt-to-prompt edits start from it with "
        "`difflab edit --noise`. No guidance is used (w = 1).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", help="a run folder or its checkpoint/ folder")
    p.add_argument("--images", required=True, metavar="DIR", help="a folder of images (PNG, JPEG, ...)")
    p.add_argument("--class", dest="class_index", type=int,
                   help="the class of the images, for a class-conditional model (default: every class in turn)")
    p.add_argument("--prompt", metavar="TEXT", help="the caption of the images, for a text-conditioned model")
    p.add_argument("--steps", type=int, help="DDIM steps (default: the checkpoint's)")
    p.add_argument("--spacing", choices=sorted(SPACINGS), help="step spacing (default: the checkpoint's)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--out", default="inverted", help="output folder (noise.npz)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    import numpy as np

    from ..data import load_image_folder
    from ..device import pick_device
    from ..images import check_output_folder
    from ..pipelines import DiffusionModel
    from ..pipelines.inversion import invert_images

    images_dir = Path(args.images)
    if not images_dir.is_dir():
        what = "is not a folder" if images_dir.exists() else "does not exist"
        raise FileNotFoundError(f"--images {images_dir} {what}: give a folder of images")
    out = check_output_folder(Path(args.out))
    model = DiffusionModel.load(args.checkpoint, use_ema=not args.no_ema, device=pick_device(args.device))
    channels, size = (model.latent.image_shape if model.latent else model.image_shape)[:2]
    images = load_image_folder(images_dir, resolution=size, channels=channels, use_cache=False).images
    if len(images) == 0:
        raise ValueError(f"--images {images_dir} holds no images: give a folder of PNG or JPEG files")
    noise = invert_images(model, images, steps=args.steps, spacing=args.spacing, class_index=args.class_index,
                          prompt=args.prompt)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "noise.npz", noise=noise.float().cpu().numpy())
    settings = model.record.sample_defaults
    steps = args.steps or settings.get("steps")
    spacing = args.spacing or settings.get("spacing")
    cond = f" --class {args.class_index}" if args.class_index is not None else ""
    cond += f" --prompt {args.prompt!r}" if args.prompt is not None else ""
    print(f"difflab invert: {len(images)} images inverted to {out / 'noise.npz'}; `difflab sample {args.checkpoint} "
          f"--noise {out / 'noise.npz'} --method ddim{f' --steps {steps}' if steps else ''}"
          f"{f' --spacing {spacing}' if spacing else ''}{cond} --guidance-scale 1` maps them back")
    return 0
