"""The pictures of docs/editing.md, on a pixel-space class-conditional model (the demo model).

1. ``editing_img2img.png``: img2img strength sweep. Row 0: the first test images (class c); then
   one row per strength, each image edited towards class c + 1 (DDIM, CFG), diffusers' step
   convention; the last row, strength 1, is plain class c + 1 sampling from the same seeds.
2. ``editing_inpaint.png``: the same mask (the right half) filled by blend and by RePaint for the
   image's own class. Rows: the images, the masked input (grey = repainted), blend, RePaint.

    difflab demo --out runs/demo-digits
    python benchmarks/editing_figures.py runs/demo-digits --out docs
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from difflab.data import load_dataset
from difflab.images import save_grid
from difflab.masks import shape_mask
from difflab.pipelines import DiffusionModel, Guidance, generate
from difflab.pipelines.generate import Edit
from difflab.pipelines.img2img import InitImages
from difflab.pipelines.inpaint import Inpainting

STRENGTHS = (0.3, 0.5, 0.7, 0.9, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a pixel-space class-conditional run (e.g. runs/demo-digits)")
    parser.add_argument("--n", type=int, default=10, help="images per row")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (RePaint: levels)")
    parser.add_argument("--guidance-scale", type=float, default=2.0)
    parser.add_argument("--out", default="docs")
    args = parser.parse_args()

    model = DiffusionModel.load(args.run)
    test = load_dataset(model.record.train_config["data"]["dataset"], "test", model.image_shape[-1],
                        model.image_shape[0])
    images, labels = test.images[: args.n], test.labels[: args.n]
    guidance = Guidance(scale=args.guidance_scale)
    upscale = max(1, 64 // model.image_shape[-1])
    out = Path(args.out)

    def each(edit_of, class_of, **kwargs):  # one image at a time: its own class and seed
        return torch.cat([generate(model, 1, seeds=[i], class_index=int(class_of[i]), guidance=guidance,
                                   edit=edit_of(i), **kwargs)[0] for i in range(args.n)])

    start = time.perf_counter()
    target = (labels + 1) % model.num_classes
    rows = [images]
    for strength in STRENGTHS:
        rows.append(each(lambda i, s=strength: Edit(InitImages(images[i : i + 1], [None]), s), target,
                         method="ddim", steps=args.steps))
    sweep = save_grid(torch.cat(rows), out / "editing_img2img.png", nrow=args.n, upscale=upscale)

    mask = shape_mask("right-half", tuple(model.image_shape[-2:]))[None]
    masked = images.clone()
    masked[..., mask[0, 0] > 0] = 128
    rows = [images, masked]
    rows.append(each(lambda i: Edit(InitImages(images[i : i + 1], [None]), None, inpaint=Inpainting(mask, "blend")),
                     labels, method="ddim", steps=args.steps))
    rows.append(each(lambda i: Edit(InitImages(images[i : i + 1], [None]), None,
                                    inpaint=Inpainting(mask, "repaint", jump_length=10, resample=5)),
                     labels, steps=args.steps))
    inpaint = save_grid(torch.cat(rows), out / "editing_inpaint.png", nrow=args.n, upscale=upscale)
    print(f"img2img sweep (strengths {', '.join(map(str, STRENGTHS))}, class c -> c+1): {sweep}")
    print(f"blend vs RePaint (right half, own class): {inpaint}  [{time.perf_counter() - start:.0f} s]")


if __name__ == "__main__":
    main()
