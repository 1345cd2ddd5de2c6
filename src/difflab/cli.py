"""The ``difflab`` command line: one sub-command per module in :mod:`difflab.commands`.

Each command module exposes ``register(subparsers)``, which adds its parser and sets
``func`` to the function that runs it. Heavy imports happen inside those functions, so
``difflab --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Sub-command modules, in the order ``--help`` lists them.
COMMANDS = [
    "difflab.commands.demo",
    "difflab.commands.train",
    "difflab.commands.sample",
    "difflab.commands.tune_steps",
    "difflab.commands.eval",
    "difflab.commands.bpd",
    "difflab.commands.train_classifier",
    "difflab.commands.train_autoencoder",
    "difflab.commands.reconstruct",
    "difflab.commands.import_autoencoder",
]


class UserError(Exception):
    """An error caused by the user's input: printed as one message, without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="difflab",
        description="Diffusion models from DDPM to DiT: train, sample and evaluate, offline.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (UserError, FileNotFoundError, ValueError) as err:
        print(f"difflab {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
