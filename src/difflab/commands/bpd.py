"""``difflab bpd CHECKPOINT``: negative log-likelihood in bits/dim through the variational bound."""

from __future__ import annotations

import argparse

from difflab.cli import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bpd",
        help="bits/dim of a trained model on a test set (the variational bound)",
        description="Evaluate the variational bound (DDPM eq. 5; improved DDPM's NLL) of a checkpoint "
        "from `difflab train` on real images, in bits per dimension: one model call per timestep "
        "per image. Needs a discrete variance-preserving schedule.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", help="a run folder or its checkpoint/ folder")
    p.add_argument("--data", default="digits:test", help="images to score: NAME:SPLIT or a folder")
    p.add_argument("--n", type=int, default=100, help="how many images (the first N)")
    p.add_argument("--batch-size", type=int, default=100, help="images per model call")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise in each term")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--json", metavar="PATH", help="also write the result as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    import torch

    from ..data.convert import to_float
    from ..data.load import load_dataset, parse_spec
    from ..device import pick_device
    from ..likelihood import bits_per_dim
    from ..pipelines import DiffusionModel

    if args.n < 1 or args.batch_size < 1:
        raise ValueError("--n and --batch-size must be at least 1")
    model = DiffusionModel.load(args.checkpoint, device=pick_device(args.device))
    if model.latent is not None:
        raise UserError("bits/dim is the likelihood of pixels; this model runs in an autoencoder's latent space, "
                        "so its bound would not be in bits per pixel dimension")
    channels, size, _ = model.image_shape
    name, split = parse_spec(args.data, default_split="test")
    dataset = load_dataset(name, split, resolution=size, channels=channels)
    images = dataset.images[: args.n]
    # A class-conditional model is scored given each image's true class when the data has labels
    # in the same order of class names, else as unconditional (the null class).
    labels = dataset.labels[: args.n] if (model.num_classes and dataset.class_names == model.class_names) else None
    device = model.device
    generator = torch.Generator().manual_seed(args.seed)
    totals = []
    for start in range(0, len(images), args.batch_size):
        x0 = to_float(images[start : start + args.batch_size]).to(device)
        cond = {}
        if model.num_classes:
            cond["class_labels"] = None if labels is None else labels[start : start + args.batch_size].to(device)
        result = bits_per_dim(model.network, x0, model.schedule, prediction=model.prediction,
                              learned_variance=model.learned_variance, cond=cond, generator=generator,
                              progress=True)
        totals.append(result.total)
    total = torch.cat(totals)
    value, err = float(total.mean()), float(total.std() / max(1, len(total) - 1) ** 0.5)
    print(f"bits/dim on {len(total)} images of {args.data}: {value:.4f} ± {err:.4f} (standard error)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"bits_per_dim": value, "stderr": err, "images": len(total), "data": args.data}, f, indent=2)
    return 0
