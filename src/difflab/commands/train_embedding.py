"""``difflab train-embedding CONFIG --base RUN --images DIR --prompt TEXT --word WORD``: textual inversion.

    difflab train-embedding CONFIG --base RUN --images DIR --prompt "a photo of a sks boot" --word sks \\
        --initializer boot [--num-vectors 2]

A new word's embedding vectors learn the pictures; the base and every other word stay as they
were. The run writes embedding.safetensors for ``difflab sample BASE --embedding FILE --prompt "... sks ..."``
(docs/personalisation.md).
"""

from __future__ import annotations

import argparse

from .train import add_run_arguments, config_from_args, section_overrides


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train-embedding",
        help="textual inversion: teach a text model a new word from a few pictures",
        description="Textual inversion (Gal et al. 2022): add a new word to the base run's text encoder and learn its "
        "embedding vectors from the pictures under a prompt holding it; nothing else changes. Writes checkpoint/, "
        "samples/ and embedding.safetensors into train.out_dir (docs/personalisation.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("config", help="YAML config file (e.g. configs/embedding-fashion-mnist-16.yaml)")
    p.add_argument("--base", metavar="RUN", help="the base run, a text model (default: the config's embedding.base)")
    p.add_argument("--images", metavar="DIR_OR_DATASET", help="the pictures (default: the config's data)")
    p.add_argument("--prompt", metavar="TEXT", help="their prompt, holding the new word: 'a photo of a sks boot'")
    p.add_argument("--word", metavar="WORD", help="the new word (default: the config's embedding.word, sks)")
    p.add_argument("--initializer", metavar="WORD", help="a known word whose embedding starts the vectors ('boot')")
    p.add_argument("--num-vectors", type=int, metavar="K", help="vectors (tokens) the word stands for (default 1)")
    add_run_arguments(p, init_from=False)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..training.objectives import TextualInversionObjective
    from ..training.trainer import train

    extra = section_overrides("embedding", args.base, args.images, prompt=args.prompt, word=args.word,
                              initializer=args.initializer, num_vectors=args.num_vectors)
    args.overrides = list(args.overrides) + extra
    config = config_from_args(args, args.config)
    path = train(config, resume=args.resume, progress=not args.no_progress, objective=TextualInversionObjective)
    print(f"difflab train-embedding: checkpoint in {path}; the word in {path.parent / 'embedding.safetensors'}")
    return 0
