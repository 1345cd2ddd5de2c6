"""``difflab train-dreambooth CONFIG --base RUN --images DIR --instance-prompt TEXT --class-prompt TEXT``.

    difflab train-dreambooth CONFIG --base RUN --images DIR --instance-prompt "a photo of a sks boot" \\
        --class-prompt "a photo of a boot" [--lora] [--set dreambooth.prior_weight=1.0]

DreamBooth: the whole base (or, with --lora, LoRA adapters) fine-tuned on the pictures under the
instance prompt, with prior preservation on class pictures the frozen base generates first
(docs/personalisation.md). The full model's run samples like any run; a LoRA run writes
lora.safetensors.
"""

from __future__ import annotations

import argparse

from .train import add_run_arguments, config_from_args, section_overrides


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train-dreambooth",
        help="fine-tune a run on a few pictures of a subject, with prior preservation (DreamBooth)",
        description="DreamBooth (Ruiz et al. 2023): fine-tune the base run (or LoRA adapters on it, --lora) on the "
        "pictures under a prompt with a rare token, adding the loss on class pictures the frozen base generates "
        "first (prior preservation, weight dreambooth.prior_weight), so the class keeps its other members. "
        "docs/personalisation.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("config", help="YAML config file (e.g. configs/dreambooth-fashion-mnist-16.yaml)")
    p.add_argument("--base", metavar="RUN", help="the base run (default: the config's dreambooth.base)")
    p.add_argument("--images", metavar="DIR_OR_DATASET", help="the subject's pictures (default: the config's data)")
    p.add_argument("--instance-prompt", metavar="TEXT", help="the subject's prompt, e.g. 'a photo of a sks boot'")
    p.add_argument("--class-prompt", metavar="TEXT",
                   help="the class's prompt for prior preservation, e.g. 'a photo of a boot' (omitted: none)")
    p.add_argument("--class", dest="class_name", metavar="NAME", help="a class-conditional base: the subject's class")
    p.add_argument("--lora", action="store_true", help="train LoRA adapters (the lora section) instead of the model")
    add_run_arguments(p, init_from=False)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..training.objectives import DreamBoothLoraObjective, DreamBoothObjective
    from ..training.trainer import train

    extra = section_overrides("dreambooth", args.base, args.images, instance_prompt=args.instance_prompt,
                              class_prompt=args.class_prompt, class_name=args.class_name)
    extra += ["dreambooth.lora=true"] if args.lora else []
    args.overrides = list(args.overrides) + extra
    config = config_from_args(args, args.config)
    objective = DreamBoothLoraObjective if config.dreambooth.lora else DreamBoothObjective
    path = train(config, resume=args.resume, progress=not args.no_progress, objective=objective)
    what = f"; adapters in {path.parent / 'lora.safetensors'}" if config.dreambooth.lora else ""
    print(f"difflab train-dreambooth: checkpoint in {path}{what}")
    return 0
