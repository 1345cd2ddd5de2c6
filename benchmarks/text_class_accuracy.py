"""Does a text-conditioned model draw what the caption names? Class accuracy by an independent
classifier, for a model trained on a labelled set with templated captions (Fashion-MNIST).

For each class the prompt is the first caption template filled with the class name ("a photo of
a sneaker"); N images are drawn per class with classifier-free guidance, and a classifier
trained on real images (``difflab train-classifier --dataset ...``) labels them. Prints the
accuracy per class and overall, and writes a grid (one row per class).

    python benchmarks/text_class_accuracy.py runs/fashion-mnist-16-text \\
        --classifier runs/fashion-mnist-16-eval-classifier --n-per-class 50 --guidance-scale 3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from difflab.data.captions import TEMPLATES, with_article
from difflab.images import save_grid
from difflab.metrics import load_classifier
from difflab.pipelines import DiffusionModel, Guidance, generate


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="a text-conditioned run")
    p.add_argument("--classifier", required=True, help="independent classifier checkpoint (real images)")
    p.add_argument("--n-per-class", type=int, default=50)
    p.add_argument("--guidance-scale", type=float, help="CFG weight (default: the checkpoint's)")
    p.add_argument("--method", default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--template", default=TEMPLATES[0], help="caption template with one {} for 'a/an CLASS'")
    p.add_argument("--out", type=Path, help="write grid.png and results.json here")
    args = p.parse_args(argv)

    model = DiffusionModel.load(args.checkpoint)
    classifier = load_classifier(args.classifier)
    names = classifier.class_names
    prompts = [args.template.format(with_article(name.lower())) for name in names]
    per_class, rows = {}, []
    for index, prompt in enumerate(prompts):
        images, _ = generate(model, args.n_per_class, method=args.method, steps=args.steps, seed=1000 * index,
                             prompts=[prompt], guidance=Guidance(scale=args.guidance_scale))
        predicted = classifier.probabilities(images).argmax(dim=1)
        per_class[names[index]] = float((predicted == index).float().mean())
        rows.append(images[:10])
        print(f"{prompt!r:45} accuracy {per_class[names[index]]:.3f}")
    overall = sum(per_class.values()) / len(per_class)
    print(f"overall class accuracy {overall:.4f} ({args.n_per_class} images per class)")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        save_grid(torch.cat(rows), args.out / "grid.png", nrow=10, upscale=max(1, 64 // rows[0].shape[-1]))
        (args.out / "results.json").write_text(json.dumps(
            {"checkpoint": args.checkpoint, "guidance_scale": args.guidance_scale, "n_per_class": args.n_per_class,
             "template": args.template, "per_class": per_class, "overall": overall}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
