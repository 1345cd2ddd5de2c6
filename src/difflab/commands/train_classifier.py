"""``difflab train-classifier``: train a classifier.

    difflab train-classifier --dataset digits|fashion-mnist|FOLDER [--out DIR]
        the small clean-image classifier behind ``difflab eval --classifier``;
    difflab train-classifier --noisy CONFIG [--set KEY=VALUE] [--resume DIR | --init-from RUN]
        ADM's noisy classifier p(y | xₜ, t) for classifier guidance (``difflab sample --classifier``),
        trained by the diffusion trainer (checkpoints, resume, DDP) with ``model.name: noisy_classifier``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from difflab.cli import UserError
from difflab.commands.train import INIT_FROM_HELP

# When an image folder has no test/ sub-folder, every HOLDOUT_EVERY-th image is held out.
HOLDOUT_EVERY = 10


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train-classifier", help="train the dataset classifier behind eval, or a noisy classifier for guidance",
        description="Without --noisy: train a small CNN on a labeled dataset and save it as a checkpoint "
        "folder; `difflab eval --classifier` uses it for the classifier-based score (not the Inception "
        "Score), class accuracy and the confident fraction. With --noisy CONFIG: train ADM's noisy "
        "classifier (U-Net encoder + attention pooling, on noisy images at random t) for "
        "`difflab sample --classifier`; a diffusion config works too (its data and schedule are kept, "
        "the model becomes a noisy classifier and the run goes to OUT_DIR-classifier).")
    parser.add_argument("--noisy", metavar="CONFIG",
                        help="train ADM's noisy classifier from this YAML training config "
                             "(e.g. configs/fashion-mnist-16-classifier.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="with --noisy: override a config key, e.g. --set train.steps=500 (repeatable)")
    parser.add_argument("--resume", metavar="DIR", help="with --noisy: continue a run from its checkpoint")
    parser.add_argument("--init-from", metavar="RUN", help="with --noisy: " + INIT_FROM_HELP)
    parser.add_argument("--no-progress", action="store_true", help="with --noisy: no progress bar")
    parser.add_argument("--dataset", metavar="DATASET",
                        help="digits, fashion-mnist, a folder of IDX files, or an image folder with "
                             "one sub-folder per class (its test/ sub-folder, if any, is the test "
                             f"set; otherwise every {HOLDOUT_EVERY}th image is held out)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="checkpoint folder to write (default: the cache, "
                             "$DIFFLAB_CACHE or ~/.cache/difflab, under classifiers/DATASET, "
                             "which `eval --classifier DATASET` finds)")
    parser.add_argument("--epochs", type=int, default=10, help="passes over the training set (default: 10)")
    parser.add_argument("--batch-size", type=int, default=64, metavar="N", help="images per step (default: 64)")
    parser.add_argument("--lr", type=float, default=2e-3,
                        help="peak AdamW learning rate, one-cycle schedule (default: 2e-3)")
    parser.add_argument("--width", type=int, default=32, help="channels of the first conv stage (default: 32)")
    parser.add_argument("--resolution", type=int, metavar="PX",
                        help="train at this square size (default: the dataset's own size)")
    parser.add_argument("--seed", type=int, default=0, help="seed for initialisation and shuffling (default: 0)")
    parser.add_argument("--device", default=None,
                        help="torch device (default: cuda when available, else cpu)")
    parser.set_defaults(func=run)


def load_splits(dataset: str, resolution: int | None):
    """(train, test) of a dataset; a folder without test/ gets a held-out slice of itself."""
    import torch

    from difflab.data import load_dataset

    train = load_dataset(dataset, "train", resolution)
    try:
        return train, load_dataset(dataset, "test", resolution)
    except FileNotFoundError:
        held_out = torch.arange(len(train)) % HOLDOUT_EVERY == HOLDOUT_EVERY - 1
        return train.subset(~held_out), train.subset(held_out, name=f"{train.name} (held out)")


def run_noisy(args: argparse.Namespace) -> int:
    from difflab.commands.train import config_from_args
    from difflab.training.trainer import train

    config = config_from_args(args, args.noisy)
    if config.model.name != "noisy_classifier":  # a diffusion config: same data and schedule
        config.model.name = "noisy_classifier"
        if not args.out:
            config.train.out_dir = config.train.out_dir.rstrip("/") + "-classifier"
    config.data.class_conditional = False  # the classifier uses the labels as targets, not as input
    path = train(config, resume=args.resume, init_from=args.init_from, progress=not args.no_progress)
    print(f"difflab train-classifier: noisy classifier checkpoint in {path}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.noisy:
        return run_noisy(args)
    if args.resume or args.init_from:
        raise UserError("--resume and --init-from are for --noisy CONFIG (the noisy classifier's training runs)")
    if not args.dataset:
        raise UserError("give --dataset (a clean-image classifier for eval) or --noisy CONFIG (a noisy "
                        "classifier for guidance)")

    from difflab.metrics.classifier import default_classifier_dir, train_classifier

    if args.epochs < 1 or args.batch_size < 1 or args.width < 8 or args.width % 8:
        raise UserError("--epochs and --batch-size must be at least 1 and --width a multiple of 8")
    if args.resolution is not None and args.resolution < 1:
        raise UserError(f"--resolution must be at least 1, got {args.resolution}")
    if not 0 < args.lr < float("inf"):
        raise UserError(f"--lr must be a finite number > 0, got {args.lr}")
    from difflab.device import pick_device

    device = pick_device(args.device or "auto")  # an unknown device is one error before the data loads
    train, test = load_splits(args.dataset, args.resolution)
    if train.labels is None:
        raise UserError(f"{args.dataset} has no labels: put the images of each class in their own "
                        f"sub-folder (FOLDER/CLASS/image.png)")
    print(f"training on {len(train)} images of {train.name} ({len(train.class_names)} classes, "
          f"{train.channels}x{train.resolution}x{train.resolution}), testing on {len(test)}")
    classifier, accuracy = train_classifier(train, test, epochs=args.epochs, batch_size=args.batch_size,
                                            lr=args.lr, width=args.width, seed=args.seed, device=device)
    out = classifier.save(args.out or default_classifier_dir(args.dataset))
    print(f"test accuracy {accuracy:.4f} on {test.name}; classifier saved to {out}")
    return 0
