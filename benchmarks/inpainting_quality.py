"""Inpainting three ways on held-out images: blend, RePaint and a mask-conditioned model.

Held-out test images are masked (centre square, left half, bottom half, random brush strokes)
and completed with the class-conditional model by blending and by RePaint, and with the
mask-conditioned model (``configs/fashion-mnist-16-inpaint.yaml``) by itself; the requested class
is the image's true class. Per mask and mode it prints:

* **outside exact**: whether every pixel outside the mask equals the input (it must);
* **accuracy**: the independent classifier's accuracy on the completions (true class);
* **FD**: the Fréchet distance between the completions and the original images in Inception-v3
  pool features (the region outside the mask is identical, so the distance measures the filled
  region; lower is better; small-sample FD is biased, compare rows);
* **in-mask MSE**: to the original's pixels (a completion need not be the original: context);
* **seam ratio**: mean |∇| over the pixel pairs crossing the mask border divided by the mean
  |∇| over pairs inside the mask (1 = the border is as smooth as the fill; the originals' own
  ratio is printed as the reference);
* **calls/image**: network evaluations per image (a CFG call counts once).

    python benchmarks/inpainting_quality.py --cfg runs/fashion-mnist-16-cfg \\
        --inpaint-model runs/fashion-mnist-16-inpaint --classifier runs/fashion-mnist-16-eval-classifier \\
        --n 500 --out benchmarks/results/inpainting_quality
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from difflab.data import load_dataset
from difflab.images import save_grid
from difflab.masks import random_strokes, shape_mask
from difflab.metrics import InceptionFeatures, extract_features, feature_statistics, frechet_distance, load_classifier
from difflab.pipelines import DiffusionModel, Guidance, generate
from difflab.pipelines.generate import Edit
from difflab.pipelines.img2img import InitImages
from difflab.pipelines.inpaint import Inpainting

MASKS = ("centre", "left-half", "bottom-half", "strokes")


def make_masks(name: str, n: int, size: tuple[int, int]) -> torch.Tensor:
    """(n, 1, H, W): a named shape for every image, or image i's own strokes (seed i)."""
    if name == "strokes":
        return torch.stack([random_strokes(size, torch.Generator().manual_seed(i)) for i in range(n)])
    return shape_mask(name, size)[None].expand(n, 1, *size).clone()


def seam_ratio(images: torch.Tensor, masks: torch.Tensor) -> float:
    """mean |∇| across the mask border / mean |∇| inside the mask (horizontal and vertical pairs)."""
    x, m = images.float() / 255, masks > 0
    across, inside = [], []
    for dim in (-1, -2):
        n = x.shape[dim] - 1
        diff = (x.narrow(dim, 1, n) - x.narrow(dim, 0, n)).abs().mean(1, keepdim=True)
        a, b = m.narrow(dim, 1, n), m.narrow(dim, 0, n)
        across.append(diff[a != b])
        inside.append(diff[a & b])
    return float(torch.cat(across).mean() / torch.cat(inside).mean().clamp_min(1e-12))


class CallCounter:
    """Counts the images the network is evaluated on (a doubled CFG batch counts once)."""

    def __init__(self, network, guided: bool):
        self.rows, self.factor = 0, 2 if guided else 1
        network.register_forward_pre_hook(self.count)

    def count(self, module, args):
        self.rows += args[0].shape[0]

    def take(self) -> int:
        rows, self.rows = self.rows, 0
        return rows // self.factor


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--cfg", required=True, help="the class-conditional model (blend and RePaint)")
    p.add_argument("--inpaint-model", help="a mask-conditioned model (diffusion.image_condition: inpaint)")
    p.add_argument("--classifier", required=True, help="independent classifier trained on real images")
    p.add_argument("--data", default="fashion-mnist", help="dataset of the held-out images (its test split)")
    p.add_argument("--n", type=int, default=500, help="held-out images per mask")
    p.add_argument("--masks", nargs="+", default=list(MASKS), choices=MASKS)
    p.add_argument("--guidance-scale", type=float, default=3.0, help="CFG weight, every mode")
    p.add_argument("--blend-method", default="ddim", help="the blend mode's and the inpainting model's sampler")
    p.add_argument("--steps", type=int, default=50, help="steps of blend and the inpainting model")
    p.add_argument("--model-method", help="the inpainting model's sampler (default: --blend-method)")
    p.add_argument("--model-steps", type=int, help="the inpainting model's steps (default: --steps)")
    p.add_argument("--modes", nargs="+", default=["blend", "repaint", "model"], choices=["blend", "repaint", "model"])
    p.add_argument("--repaint-steps", type=int, default=50, help="RePaint's levels (DDPM steps)")
    p.add_argument("--repaint-jumps", type=int, default=10)
    p.add_argument("--repaint-resample", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--out", type=Path, help="write results.json and grid.png here")
    args = p.parse_args(argv)

    cfg_model = DiffusionModel.load(args.cfg)
    size = tuple(cfg_model.image_shape[-2:])
    test = load_dataset(args.data, split="test", resolution=size[0], channels=cfg_model.image_shape[0])
    originals, labels = test.images[: args.n], test.labels[: args.n]
    classifier = load_classifier(args.classifier)
    inception = InceptionFeatures(device="cpu")
    real_stats = feature_statistics(extract_features(originals, inception, desc="inception real").values)
    modes = {"blend": (cfg_model, {"method": args.blend_method, "steps": args.steps}),
             "repaint": (cfg_model, {"steps": args.repaint_steps})}
    if args.inpaint_model:
        modes["model"] = (DiffusionModel.load(args.inpaint_model),
                          {"method": args.model_method or args.blend_method, "steps": args.model_steps or args.steps})
    modes = {mode: modes[mode] for mode in args.modes if mode in modes}
    counters = {id(model): CallCounter(model.network, args.guidance_scale != 1) for model, _ in modes.values()}
    paths = [f"{args.data}:test[{i}]" for i in range(args.n)]
    results, grid_rows = [], []
    for mask_name in args.masks:
        masks = make_masks(mask_name, args.n, size)
        keep = (masks == 0).expand_as(originals)
        reference = seam_ratio(originals, masks)
        row_images = [originals[:8], (originals[:8].float() * (1 - masks[:8]) + 255 * masks[:8] * 0.5).to(torch.uint8)]
        for mode, (model, options) in modes.items():
            start = time.perf_counter()
            edit = Edit(InitImages(originals, paths),
                        inpaint=Inpainting(masks, mode, args.repaint_jumps, args.repaint_resample))
            completed, _ = generate(model, args.n, labels=labels, edit=edit, batch_size=args.batch_size,
                                    guidance=Guidance(scale=args.guidance_scale), **options)  # the true classes
            seconds = time.perf_counter() - start
            calls = counters[id(model)].take() / args.n
            stats = feature_statistics(extract_features(completed, inception, desc=f"inception {mode}").values)
            in_mask = masks.expand_as(originals) > 0
            mse = float(((completed.float() - originals.float()) / 255)[in_mask].pow(2).mean())
            result = {
                "mask": mask_name, "mode": mode, "outside_exact": bool(torch.equal(completed[keep], originals[keep])),
                "accuracy": float((classifier.probabilities(completed).argmax(1) == labels).float().mean()),
                "fd": frechet_distance(*stats, *real_stats), "in_mask_mse": mse,
                "seam_ratio": seam_ratio(completed, masks), "seam_ratio_originals": reference,
                "calls_per_image": calls, "seconds": seconds,
            }
            results.append(result)
            row_images.append(completed[:8])
            print(f"{mask_name:12} {mode:8} outside exact {result['outside_exact']!s:5}  "
                  f"accuracy {result['accuracy']:.3f}  FD {result['fd']:7.2f}  in-mask MSE {mse:.4f}  "
                  f"seam {result['seam_ratio']:.2f} (originals {reference:.2f})  calls/image {calls:5.0f}  "
                  f"{seconds:6.1f} s", flush=True)
        grid_rows.append(torch.stack(row_images, 1).flatten(0, 1))  # per example: original, masked, modes
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        columns = 2 + len(modes)
        save_grid(torch.cat(grid_rows), args.out / "grid.png", nrow=columns, upscale=max(1, 64 // size[0]))
        (args.out / "results.json").write_text(json.dumps(
            {"cfg": args.cfg, "inpaint_model": args.inpaint_model, "n": args.n, "guidance_scale": args.guidance_scale,
             "columns": ["original", "masked", *modes], "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
