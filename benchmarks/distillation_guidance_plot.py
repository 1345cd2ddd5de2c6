"""FID against class accuracy over the guidance scale: one curve per model and sampler, from the
``points.json`` files of ``distillation_quality.py`` run once per w (``--guidance-scale W --out
DIR/wW``). Where a point lies shows the fidelity/diversity trade that guidance makes: right is more
class-true, down is nearer the data.

    python benchmarks/distillation_guidance_plot.py benchmarks/results/distillation_fm16 \
        benchmarks/results/distillation_fm16_w/w* --out docs/distillation_guidance_fm16.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def curves(folders: list[Path]) -> dict[tuple, list[dict]]:
    """The points of every folder, grouped by (family, run, method, steps) and sorted by w."""
    grouped: dict[tuple, list[dict]] = {}
    for folder in folders:
        for r in json.loads((folder / "points.json").read_text()):
            grouped.setdefault((r["family"], r["run"], r["method"], r["steps"]), []).append(r)
    return {k: sorted(v, key=lambda r: r["guidance_scale"]) for k, v in grouped.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", type=Path, help="output folders of distillation_quality.py")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.add_argument("--min-points", type=int, default=2, help="draw only curves with at least this many w")
    args = p.parse_args(argv)
    try:
        grouped = curves(args.folders)
    except (OSError, ValueError, KeyError) as error:
        raise SystemExit(f"distillation_guidance_plot: {error}: give distillation_quality.py output folders") from None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for (family, run, method, steps), rows in grouped.items():
        if len(rows) < args.min_points:
            continue
        label = f"{family} {Path(run).name}, {method} {steps} step{'s' * (steps > 1)}"
        ax.plot([r["class_accuracy"] for r in rows], [r["fid"] for r in rows], "o-", label=label)
        for r in rows:
            ax.annotate(f"w={r['guidance_scale']:g}", (r["class_accuracy"], r["fid"]), fontsize=7,
                        textcoords="offset points", xytext=(4, 3))
    ax.axvline(0.95, color="gray", linestyle=":", linewidth=1)
    ax.set_xlabel("class accuracy (independent classifier)")
    ax.set_ylabel("FID (2,000 samples)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"distillation_guidance_plot: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
