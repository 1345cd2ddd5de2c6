"""The ``difflab`` command line: one sub-command per module in :mod:`difflab.commands`.

Each command module exposes ``register(subparsers)``, which adds its parser and sets
``func`` to the function that runs it. Heavy imports happen inside those functions, so
``difflab --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from pathlib import Path

from difflab.errors import UserError

# Sub-command modules, in the order ``--help`` lists them.
COMMANDS = [
    "difflab.commands.demo",
    "difflab.commands.train",
    "difflab.commands.sample",
    "difflab.commands.invert",
    "difflab.commands.edit",
    "difflab.commands.cascade",
    "difflab.commands.tune_steps",
    "difflab.commands.posthoc_ema",
    "difflab.commands.eval",
    "difflab.commands.bpd",
    "difflab.commands.train_classifier",
    "difflab.commands.train_controlnet",
    "difflab.commands.train_lora",
    "difflab.commands.train_dreambooth",
    "difflab.commands.train_embedding",
    "difflab.commands.distill",
    "difflab.commands.train_autoencoder",
    "difflab.commands.reconstruct",
    "difflab.commands.import_autoencoder",
    "difflab.commands.import_model",
    "difflab.commands.export",
    "difflab.commands.serve",
]


# What a user's input or machine can cause — a wrong flag or config value (ValueError, including
# ConfigError), a missing, unreadable or damaged file, a full disk or a read-only folder (OSError),
# a diverging run (FloatingPointError) — is printed as one line; anything else is a bug and keeps
# its traceback. ``--debug`` shows the traceback of every error.
USER_ERRORS = (UserError, ValueError, OSError, FloatingPointError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="difflab",
        description="Diffusion models from DDPM to DiT: train, sample and evaluate, offline.",
    )
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of any error (by default a user's mistake is one line)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        if not args.debug:
            warnings.showwarning = warning_printer(args.command, warnings.showwarning)
        return run_command(args)


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed command; a user's mistake becomes one line and exit status 2."""
    try:
        return args.func(args) or 0
    except USER_ERRORS as err:
        if args.debug:
            raise
        print(f"difflab {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"difflab {args.command}: interrupted; what was written is kept (train --resume, sample --resume "
              "continue it)", file=sys.stderr)
        return 130


PACKAGE = Path(__file__).resolve().parent


def warning_printer(command: str, fallback):
    """A ``warnings.showwarning`` that prints difflab's own warnings as one line, ``difflab COMMAND:
    warning: ...``, like its errors (others keep Python's format: file, line and source)."""
    def show(message, category, filename, lineno, file=None, line=None):
        if not Path(filename).resolve().is_relative_to(PACKAGE):
            return fallback(message, category, filename, lineno, file, line)
        print(f"difflab {command}: warning: {' '.join(str(message).split())}", file=file or sys.stderr)
    return show


def one_line(err: BaseException) -> str:
    """An error's message on one line (an OSError's strerror and file when it has no message of its own)."""
    if isinstance(err, OSError) and err.filename and str(err).startswith("["):
        return f"{err.strerror}: {err.filename}"
    return " ".join(str(err).split()) or type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
