"""docs/guidance_interval_4steps.png: the teacher's 4 steps guided everywhere and with the first
step unguided, beside refined 4-step students (a student refined with a guidance interval is
labelled so), from the grids and points.json that benchmarks/distillation_quality.py wrote (run
with --guidance-interval; docs/benchmarks.md, "Guidance at few steps").

    python benchmarks/guidance_interval_figure.py benchmarks/results/distillation_fm16_t10k \\
        --student runs/t10k-adv-e --out docs/guidance_interval_4steps.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path, help="distillation_quality.py's output folder")
    p.add_argument("--student", required=True, nargs="+", help="the adversarial student runs to show")
    p.add_argument("--steps", type=int, default=4, help="the teacher's steps")
    p.add_argument("--out", type=Path, default=Path("docs/guidance_interval_4steps.png"))
    args = p.parse_args(argv)
    rows = json.loads((args.results / "points.json").read_text())

    def find(family, **match):
        found = [r for r in rows if r["family"] == family and all(r.get(k) == v for k, v in match.items())]
        if not found:
            raise SystemExit(f"guidance_interval_figure: no {family} point {match} in {args.results}/points.json")
        return found[-1]

    students = [find("adversarial student", run=run) for run in args.student]
    panels = [(find("teacher", method="unipc_3", steps=args.steps), "all guided"),
              (find("teacher, guidance interval", method="unipc_3", steps=args.steps), "first step unguided"),
              *[(r, "refined student" + ", first level unguided" * bool(r.get("interval"))) for r in students]]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    fig, axes = plt.subplots(1, len(panels), figsize=(3.7 * len(panels), 4.3))
    for ax, (r, what) in zip(axes, panels):
        ax.imshow(Image.open(args.results / "grids" / r["grid"]), cmap="gray")
        ax.set_title(f"{what}\n{r['steps']} steps, w = {r['guidance_scale']:g} ({r['network_evals']} evaluations)\n"
                     f"FID {r['fid']:.2f}, recall {r['recall']:.2f}, accuracy {r['class_accuracy']:.3f}", fontsize=8.5)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(args.out, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
