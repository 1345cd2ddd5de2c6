"""``difflab sample CHECKPOINT``: generate images from a trained model."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from ..sampling import SAMPLERS, SPACINGS

    p = subparsers.add_parser(
        "sample",
        help="generate images from a trained checkpoint",
        description="Generate images from a checkpoint written by `difflab train`: writes grid.png, "
        "one PNG per image under images/, and samples.npz (uint8 NHWC, with labels for class-"
        "conditional models). Method, steps and spacing default to the checkpoint's sample settings.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", help="a run folder or its checkpoint/ folder")
    p.add_argument("--n", type=int, default=64, help="number of images")
    p.add_argument("--method", choices=sorted(SAMPLERS), help="sampler (default: the checkpoint's)")
    p.add_argument("--steps", type=int, help="sampler steps (default: the checkpoint's)")
    p.add_argument("--spacing", choices=sorted(SPACINGS), help="step spacing (default: the checkpoint's)")
    add_sampler_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="image i uses noise seed SEED+i")
    p.add_argument("--class", dest="class_index", type=int,
                   help="class index for a class-conditional or classifier-guided model (default: every "
                        "class in turn, with one grid per class under grids/)")
    p.add_argument("--prompt", action="append", metavar="TEXT",
                   help="caption for a text-conditioned model (repeatable: images cycle through the prompts)")
    p.add_argument("--prompts", metavar="FILE", help="a text file with one prompt per line (text-conditioned models)")
    add_guidance_arguments(p)
    p.add_argument("--batch-size", type=int, default=256, help="images per sampler call")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--out", default="samples", help="output folder")
    p.set_defaults(func=run)


def add_sampler_arguments(p) -> None:
    """``--sigmas``, ``--no-tuned``, ``--compile`` and ``--precision``, shared by ``sample`` and ``eval``."""
    from ..device import PRECISIONS

    p.add_argument("--sigmas", metavar="JSON",
                   help="a tuned step schedule from `difflab tune-steps --out` (sets the method and steps)")
    p.add_argument("--no-tuned", action="store_true",
                   help="ignore the checkpoint's tuned schedule (checkpoint/tuned-steps/), which is otherwise "
                        "used when the method, steps and guidance scale match and no --spacing is given")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile each sampler step's model call (CUDA graphs on a GPU): the same images to "
                        "float tolerance, faster on long runs; compiling costs seconds to minutes per batch size")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="the network's arithmetic: auto = bf16 autocast on a GPU, float32 on a CPU; bf16 on a CPU "
                        "with avx512_bf16 or AMX samples 1.1-1.8x faster (slower on one without); the solver and "
                        "the latent decoding stay float32")


def schedule_from_args(args, model, guidance) -> dict:
    """generate()'s method / steps / spacing / sigmas (+ sampler options) for the flags: an
    explicit ``--sigmas`` file, else the checkpoint's tuned schedule where one matches."""
    from ..pipelines import find_tuned
    from ..sampling.tuning import TunedSigmas

    spacing = getattr(args, "spacing", None)
    if args.sigmas:
        tuned = TunedSigmas.load(args.sigmas)
        for flag, value, have in (("--method", args.method, tuned.method), ("--steps", args.steps, tuned.steps)):
            if value is not None and value != have:
                raise ValueError(f"{flag} {value} contradicts the schedule in {args.sigmas} ({have}); drop {flag}")
        if spacing:
            raise ValueError("--spacing and --sigmas both set the noise levels: give one of them")
    else:
        method, steps, _ = model.sampler_settings(args.method, args.steps, spacing)
        tuned, note = (None, None) if (spacing or args.no_tuned) else find_tuned(model, method, steps, guidance)
        if note:
            print(f"difflab: {note}")
        if tuned is None:
            return {"method": args.method, "steps": args.steps, "spacing": spacing}
        print(f"difflab: using the tuned {steps}-step schedule of the checkpoint (--no-tuned to ignore it)")
    return {"method": tuned.method, "steps": tuned.steps, "sigmas": tuned.tensor(), **tuned.options}


def add_guidance_arguments(p, classifier_flag: str = "--classifier") -> None:
    """The guidance flags shared by ``sample`` and ``eval`` (see docs/guidance.md)."""
    p.add_argument("--guidance-scale", type=float, metavar="W",
                   help="classifier-free guidance weight w: 1 = the conditional model, 0 = the "
                        "unconditional one, >1 trades diversity for fidelity (default: the checkpoint's "
                        "sample.guidance_scale); needs a model trained with diffusion.cond_drop_prob > 0")
    p.add_argument("--guidance-rescale", type=float, default=0.0, metavar="PHI",
                   help="Lin et al.'s guidance rescale in [0, 1] against over-saturation at large w (0 = off)")
    p.add_argument("--guidance-interval", type=float, nargs=2, metavar=("SIGMA_LO", "SIGMA_HI"),
                   help="apply classifier-free guidance only at noise levels SIGMA_LO < sigma <= SIGMA_HI")
    p.add_argument(classifier_flag, dest="guidance_classifier", metavar="CKPT",
                   help="a noisy classifier from `difflab train-classifier --noisy` for classifier guidance "
                        "(ADM); works with unconditional and class-conditional models")
    p.add_argument("--classifier-scale", type=float, default=1.0, metavar="S",
                   help="classifier-guidance gradient scale s (0 = no guidance)")
    p.add_argument("--classifier-mode", choices=["epsilon", "mean"],
                   help="ADM Algorithm 2 (epsilon: shift the noise prediction, any sampler) or Algorithm 1 "
                        "(mean: shift the ancestral mean, ddpm only); default: mean for ddpm, else epsilon")


def guidance_from_args(args, device):
    """The :class:`~difflab.pipelines.Guidance` the flags of :func:`add_guidance_arguments` ask for."""
    from ..pipelines import Guidance, NoisyClassifierModel

    classifier = NoisyClassifierModel.load(args.guidance_classifier, device=device) if args.guidance_classifier else None
    interval = tuple(args.guidance_interval) if args.guidance_interval else None
    return Guidance(scale=args.guidance_scale, rescale=args.guidance_rescale, interval=interval,
                    classifier=classifier, classifier_scale=args.classifier_scale,
                    classifier_mode=args.classifier_mode)


def run(args) -> int:
    from pathlib import Path

    from ..images import save_grid, save_images, save_npz
    from ..pipelines import DiffusionModel, generate
    from ..device import pick_device

    if args.n < 1:
        raise ValueError("--n must be at least 1")
    device = pick_device(args.device)
    model = DiffusionModel.load(args.checkpoint, use_ema=not args.no_ema, device=device)
    guidance = guidance_from_args(args, device)
    prompts = read_prompts(args)
    images, labels = generate(model, args.n, **schedule_from_args(args, model, guidance), seed=args.seed,
                              class_index=args.class_index, guidance=guidance, prompts=prompts,
                              batch_size=args.batch_size, progress=True, compile=args.compile,
                              precision=args.precision)
    out = Path(args.out)
    class_names = model.class_names or (guidance.classifier.class_names if guidance.classifier else [])
    per_class = labels is not None and args.class_index is None
    upscale = max(1, 64 // images.shape[-1])
    grid = save_grid(images, out / "grid.png", nrow=len(class_names) if per_class else None, upscale=upscale)
    if per_class:  # one grid per class as well: grids/CLASS.png
        for index, name in enumerate(class_names):
            if (labels == index).any():
                save_grid(images[labels == index], out / "grids" / f"{index:02d}-{safe_name(name)}.png", upscale=upscale)
    save_images(images, out / "images")
    save_npz(images, out / "samples.npz", labels)
    if prompts:  # which prompt made which image
        (out / "prompts.txt").write_text("".join(f"{prompts[i % len(prompts)]}\n" for i in range(len(images))))
    print(f"difflab sample: {len(images)} images in {out} (grid: {grid})")
    return 0


def safe_name(name: str) -> str:
    """A class name usable in a file name."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "class"


def read_prompts(args) -> list[str] | None:
    """The prompts of ``--prompt`` and ``--prompts FILE`` (one per non-empty line), or None."""
    from pathlib import Path

    prompts = list(args.prompt or [])
    if args.prompts:
        path = Path(args.prompts)
        if not path.is_file():
            raise FileNotFoundError(f"--prompts {path} does not exist: give a text file with one prompt per line")
        prompts += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return prompts or None
