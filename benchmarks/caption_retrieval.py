r"""Does a text-to-image model draw the training image its caption names? Caption retrieval
(``difflab.metrics.retrieval``): n captions drawn from the training set, one image each, and the
fraction whose nearest training image (top-1) or one of whose k nearest (top-k) carries the
caption. Issue 6 asks >= 60% top-1 and >= 80% top-5 on emoji for 200 captions.

    python benchmarks/caption_retrieval.py runs/emoji-latent-text-64 --n 200 --guidance-scale 4 \
        --out docs/emoji-retrieval

Features: ``autoencoder`` (posterior means of the latent model's own autoencoder, or of
``--autoencoder RUN`` for a pixel model), ``inception`` (FID's pool features; needs the
pytorch-fid weights) or ``pixels``. The training set is the checkpoint's (data.dataset /
data.split, at the model's resolution). Writes grid.png (rows of 8: generated images, then their
nearest training images) and results.json (scores, and per caption its neighbours' captions).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from difflab.data import load_dataset, to_float
from difflab.images import save_grid
from difflab.metrics.retrieval import caption_retrieval
from difflab.pipelines import DiffusionModel, Guidance, generate

FEATURES = ("autoencoder", "inception", "pixels")


def feature_function(kind: str, model: DiffusionModel, autoencoder: str | None, device: str):
    """uint8 images (N, C, H, W) → (N, D) features of the chosen space."""
    if kind == "pixels":
        return lambda images: to_float(images).flatten(1)
    if kind == "inception":
        from difflab.metrics import InceptionFeatures, extract_features

        extractor = InceptionFeatures(device=device)
        return lambda images: torch.from_numpy(extract_features(images, extractor, batch_size=100).values)
    if autoencoder:
        from difflab.latent import load_autoencoder

        ae = load_autoencoder(autoencoder, device=device)[0]
    elif model.latent is not None:
        ae = model.latent.autoencoder
    else:
        raise SystemExit("--features autoencoder needs --autoencoder RUN for a pixel-space model")
    device = next(ae.parameters()).device

    @torch.no_grad()
    def encode(images):
        chunks = []
        for s in range(0, len(images), 128):
            posterior = ae.encode(to_float(images[s : s + 128]).to(device))
            chunks.append((posterior.mode() if hasattr(posterior, "mode") else posterior).flatten(1).float().cpu())
        return torch.cat(chunks)

    return encode


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="a text-conditioned run (pixel or latent)")
    p.add_argument("--n", type=int, default=200, help="captions drawn from the training set, one image each")
    p.add_argument("--k", type=int, default=5, help="neighbours for the top-k score")
    p.add_argument("--features", choices=FEATURES, default="autoencoder", help="feature space of the neighbours")
    p.add_argument("--autoencoder", metavar="RUN", help="autoencoder for --features autoencoder (default: the "
                   "latent model's own)")
    p.add_argument("--guidance-scale", type=float, help="CFG weight (default: the checkpoint's)")
    p.add_argument("--method", help="sampler (default: the checkpoint's)")
    p.add_argument("--steps", type=int, help="sampler steps (default: the checkpoint's)")
    p.add_argument("--seed", type=int, default=0, help="picks the captions and the noise")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, help="write grid.png and results.json here")
    args = p.parse_args(argv)

    model = DiffusionModel.load(args.checkpoint, device=args.device)
    if model.text_encoder is None:
        raise SystemExit(f"{args.checkpoint} is not text-conditioned: train with data.text_conditional=true")
    data = model.config["train_config"]["data"]
    channels, side, _ = model.latent.image_shape if model.latent else model.image_shape  # pixels
    train = load_dataset(data["dataset"], data["split"], side, channels)
    captions = list(train.captions)
    distinct = sorted(set(captions))
    if args.n > len(distinct):
        raise SystemExit(f"--n {args.n} is more than the {len(distinct)} distinct training captions")
    order = torch.randperm(len(distinct), generator=torch.Generator().manual_seed(args.seed))[: args.n]
    requested = [distinct[i] for i in order.tolist()]

    images, _ = generate(model, args.n, method=args.method, steps=args.steps, seed=args.seed, prompts=requested,
                         guidance=Guidance(scale=args.guidance_scale), progress=True)
    features = feature_function(args.features, model, args.autoencoder, args.device)
    result = caption_retrieval(features(images), features(train.images), captions, requested, k=args.k)
    print(f"{args.n} captions, {args.features} features: top-1 {result.top1:.3f}, top-{args.k} {result.topk:.3f} "
          f"({len(train)} training images, {len(distinct)} distinct captions)")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        rows = []
        for s in range(0, min(args.n, 32), 8):
            rows += [images[s : s + 8], train.images[result.neighbours[s : s + 8, 0]]]
        save_grid(torch.cat(rows), args.out / "grid.png", nrow=8, upscale=max(1, 64 // images.shape[-1]))
        per_caption = [{"caption": c, "neighbours": [captions[j] for j in row], "rank": r}
                       for c, row, r in zip(requested, result.neighbours.tolist(), result.rank.tolist())]
        (args.out / "results.json").write_text(json.dumps(
            {"checkpoint": args.checkpoint, "features": args.features, "guidance_scale": args.guidance_scale,
             "seed": args.seed, **result.to_dict(), "captions": per_caption}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
