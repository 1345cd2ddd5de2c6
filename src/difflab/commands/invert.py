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
        "`difflab edit --noise`. No guidance is used (w = 1). With --null-text and --guidance-scale W > 1 (a text "
        "model with a frozen encoder), null-text inversion (Mokady et al. 2023) also tunes the unconditional text "
        "input of each step so that sampling at W gives the images back; the file then holds those too and "
        "`difflab sample --noise` / `difflab edit --noise` use them (DDIM, the same steps, spacing and W).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", help="a run folder or its checkpoint/ folder")
    p.add_argument("--images", required=True, metavar="DIR", help="a folder of images (PNG, JPEG, ...)")
    p.add_argument("--class", dest="class_index", type=int,
                   help="the class of the images, for a class-conditional model (default: every class in turn)")
    p.add_argument("--prompt", metavar="TEXT", help="the caption of the images, for a text-conditioned model")
    p.add_argument("--steps", type=int, help="DDIM steps (default: the checkpoint's)")
    p.add_argument("--spacing", choices=sorted(SPACINGS), help="step spacing (default: the checkpoint's)")
    p.add_argument("--null-text", action="store_true",
                   help="null-text inversion for sampling and editing under classifier-free guidance at "
                        "--guidance-scale (text models with a frozen encoder)")
    p.add_argument("--guidance-scale", type=float, metavar="W",
                   help="with --null-text: the CFG weight the images are to be sampled back at (default: the "
                        "checkpoint's; must be > 1)")
    p.add_argument("--inner-steps", type=int, default=10, metavar="N",
                   help="with --null-text: Adam steps per sampling step (the paper's 10)")
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
    from ..pipelines.guidance_policy import Guidance, guidance_scale
    from ..pipelines.inversion import invert_images
    from ..pipelines.null_text import null_text_inversion

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
    if not args.null_text and (args.guidance_scale is not None or args.inner_steps != 10):
        raise ValueError("--guidance-scale and --inner-steps are null-text inversion's: add --null-text (plain "
                         "DDIM inversion runs unguided)")
    scale = 1.0
    if args.null_text:
        if args.prompt is None:
            raise ValueError("null-text inversion needs the images' caption: give --prompt TEXT")
        scale = guidance_scale(model, Guidance(scale=args.guidance_scale))
        inverted = null_text_inversion(model, images, args.prompt, guidance_scale=scale, steps=args.steps,
                                       spacing=args.spacing, inner_steps=args.inner_steps, progress=True)
        out.mkdir(parents=True, exist_ok=True)
        inverted.save(out / "noise.npz")
    else:
        noise = invert_images(model, images, steps=args.steps, spacing=args.spacing, class_index=args.class_index,
                              prompt=args.prompt)
        out.mkdir(parents=True, exist_ok=True)
        np.savez(out / "noise.npz", noise=noise.float().cpu().numpy())
    settings = model.record.sample_defaults
    steps = args.steps or settings.get("steps")
    spacing = args.spacing or settings.get("spacing")
    cond = f" --class {args.class_index}" if args.class_index is not None else ""
    cond += f" --prompt {args.prompt!r}" if args.prompt is not None else ""
    kind = f"null-text inverted for guidance {scale:g}" if args.null_text else "inverted"
    print(f"difflab invert: {len(images)} images {kind} to {out / 'noise.npz'}; `difflab sample {args.checkpoint} "
          f"--noise {out / 'noise.npz'} --method ddim{f' --steps {steps}' if steps else ''}"
          f"{f' --spacing {spacing}' if spacing else ''}{cond} --guidance-scale {scale:g}` maps them back")
    return 0
