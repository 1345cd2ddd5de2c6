"""FID and class accuracy against the EMA's relative width σ_rel: the runs `difflab posthoc-ema`
made from one run's snapshots (their ``config.json`` records σ_rel), scored by
``distillation_quality.py`` into one ``points.json``. The run the snapshots came from, whose EMA is
the trainer's constant-decay one, is drawn as a horizontal line when it was scored too.

    python benchmarks/posthoc_ema_plot.py benchmarks/results/distillation_fm16_t10k \
        --source runs/t10k-adv-p --out docs/posthoc_ema_fm16.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def sweep(folder: Path, source: str) -> tuple[list[tuple[float, dict]], dict | None]:
    """((σ_rel, point) of every post-hoc run of ``source`` scored in ``folder``, by σ_rel; the
    source's own point or None)."""
    made, own = [], None
    for point in json.loads((folder / "points.json").read_text()):
        if Path(point["run"]) == Path(source):
            own = point
            continue
        config = Path(point["run"]) / "checkpoint" / "config.json"
        if not config.is_file():
            continue
        record = json.loads(config.read_text()).get("posthoc_ema")
        if record and Path(record["source"]) == Path(source):
            made.append((record["sigma_rel"], point))
    return sorted(made, key=lambda item: item[0]), own


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="an output folder of distillation_quality.py")
    p.add_argument("--source", required=True, help="the run whose snapshots made the post-hoc runs")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = p.parse_args(argv)
    try:
        made, own = sweep(args.folder, args.source)
    except (OSError, ValueError, KeyError) as error:
        raise SystemExit(f"posthoc_ema_plot: {error}: give a distillation_quality.py output folder") from None
    if not made:
        raise SystemExit(f"posthoc_ema_plot: no run made by `difflab posthoc-ema {args.source}` is scored in "
                         f"{args.folder / 'points.json'}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_fid, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.6))
    widths = [s for s, _ in made]
    # each axis spans at least a difference worth reading (1 FID, 0.05 accuracy), so noise does not look like a trend
    for ax, key, label, span in ((ax_fid, "fid", "FID (2,000 samples)", 1.0),
                                 (ax_acc, "class_accuracy", "class accuracy", 0.05)):
        values = [point[key] for _, point in made] + ([own[key]] if own is not None else [])
        ax.plot(widths, values[:len(made)], "o-", label="post-hoc EMA")
        if own is not None:
            ax.axhline(own[key], color="gray", linestyle="--", linewidth=1, label="the trainer's EMA")
        middle, half = (max(values) + min(values)) / 2, max(span, max(values) - min(values)) / 2
        ax.set_ylim(middle - 1.2 * half, middle + 1.2 * half)
        ax.set_xlabel("σ_rel (the EMA's width / the steps so far)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax_acc.axhline(0.95, color="gray", linestyle=":", linewidth=1)  # issue 25's floor
    ax_acc.set_ylim(min(ax_acc.get_ylim()[0], 0.94), min(ax_acc.get_ylim()[1], 1.0))
    ax_fid.legend(fontsize=8)
    fig.suptitle(f"{Path(args.source).name}: {made[0][1]['steps']} steps, w = {made[0][1]['guidance_scale']:g}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"posthoc_ema_plot: {args.out}")
    for sigma_rel, point in made:
        print(f"  sigma_rel {sigma_rel:.3f}: FID {point['fid']:.2f}, class accuracy {point['class_accuracy']:.3f}")
    if own is not None:
        print(f"  the trainer's EMA: FID {own['fid']:.2f}, class accuracy {own['class_accuracy']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
