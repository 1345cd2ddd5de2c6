"""FID against 1/N, and its extrapolation to infinitely many samples (FID∞, Chong & Forsyth 2020),
for the points of `distillation_quality.py --fid-infinity` and the real-data floor of `fid_floor.py`.

Each model is a row of dots (the FID of random subsets of its samples) and the least-squares line
through them, drawn on to 1/N = 0, where it reads FID∞. Lines of different slopes are why FIDs of
few samples compress ratios: at 1/N = 0 the models are farther apart than at the right edge.

    python benchmarks/fid_infinity_plot.py benchmarks/results/distillation_fm16_10k \\
        --real benchmarks/results/distillation_fm16_10k/real_floor.json --out docs/fid_infinity_fm16.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def label(row: dict) -> str:
    if "family" not in row:
        return f"real training images ({row['n']:,})"
    interval = " first step unguided" if row.get("interval") and "teacher" in row["family"] else ""
    return f"{row['family']}, {row['method']} {row['steps']} steps{interval} ({row['n']:,})"


def lines(rows: list[dict]) -> list[dict]:
    """The rows that carry FID∞'s subset FIDs, largest N first, then by FID∞."""
    kept = [r for r in rows if r.get("fid_infinity_sizes")]
    return sorted(kept, key=lambda r: (-r["n"], r["fid_infinity"]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", type=Path, help="output folders of distillation_quality.py --fid-infinity")
    p.add_argument("--real", type=Path, help="fid_floor.py's JSON: the real-data lines")
    p.add_argument("--out", type=Path, default=Path("docs/fid_infinity_fm16.png"))
    args = p.parse_args(argv)
    rows = []
    for folder in args.folders:
        if not (folder / "points.json").is_file():
            raise SystemExit(f"fid_infinity_plot: {folder} has no points.json: give distillation_quality.py output "
                             "folders")
        rows += json.loads((folder / "points.json").read_text())
    if args.real:
        if not args.real.is_file():
            raise SystemExit(f"fid_infinity_plot: --real {args.real} does not exist: give fid_floor.py's --out file")
        rows += json.loads(args.real.read_text())
    shown = lines(rows)
    if not shown:
        raise SystemExit("fid_infinity_plot: no point has FID-infinity: run distillation_quality.py --fid-infinity")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, row in enumerate(shown):
        x = 1.0 / np.asarray(row["fid_infinity_sizes"], dtype=float)
        slope, intercept = np.polyfit(x, row["fid_infinity_fids"], 1)
        colour = f"C{i}"
        ax.plot(x * 1e4, row["fid_infinity_fids"], "o", color=colour, ms=4)
        ends = np.array([0.0, x.max()])
        ax.plot(ends * 1e4, intercept + slope * ends, "--", color=colour, lw=1,
                label=f"{label(row)}: FID {row['fid']:.2f}, FID∞ {intercept:.2f}")
        ax.plot([0], [intercept], "s", color=colour, ms=6)
    ax.set_xlabel("10,000 / N   (N: samples scored; 0 is infinitely many)")
    ax.set_ylabel("FID against the test images")
    ax.set_xlim(left=-0.1)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("FID of random subsets of N samples, and the line to N = ∞ (Chong & Forsyth 2020)", fontsize=9)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
