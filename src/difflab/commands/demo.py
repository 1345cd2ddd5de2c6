"""``difflab demo``: the CPU demo — train on the 8×8 digits, then sample a grid."""

from __future__ import annotations

import argparse
from importlib import resources


def demo_config_path():
    return resources.files("difflab") / "configs" / "demo-digits.yaml"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="train a small model on the digits and sample from it (a few minutes on 2 CPU cores)",
        description="Train configs/demo-digits.yaml (scikit-learn's 8x8 digits, class-conditional) and "
        "write a grid of samples. Everything lands in --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", default="runs/demo-digits", help="run folder")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the demo config (repeatable)")
    p.add_argument("--n", type=int, default=100, help="images in the final grid")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..images import save_grid, save_npz
    from ..pipelines import DiffusionModel, SamplerSettings, plan
    from ..pipelines import run as run_plan
    from ..pipelines.png_info import png_text
    from ..training.config import load_config
    from ..training.trainer import train

    with resources.as_file(demo_config_path()) as path:
        config = load_config(path, list(args.overrides) + [f"train.out_dir={args.out}"])
    checkpoint = train(config)
    model = DiffusionModel.load(checkpoint)
    samples = run_plan(plan(model, args.n, SamplerSettings.resolve(model)), progress=True)
    out = Path(args.out)
    grid = save_grid(samples.images, out / "demo-grid.png", nrow=model.num_classes or None, upscale=8,
                     pnginfo=png_text(samples.grid_record()))
    save_npz(samples.images, out / "demo-samples.npz", samples.labels)
    print(f"difflab demo: samples in {grid}; evaluate them with `difflab eval {out / 'demo-samples.npz'} "
          "--ref digits:test --classifier digits`")
    return 0
