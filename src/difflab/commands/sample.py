"""``difflab sample CHECKPOINT``: generate images from a trained model."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from ..sampling import SAMPLERS, SPACINGS

    p = subparsers.add_parser(
        "sample",
        help="generate images from a trained checkpoint",
        description="Generate images from a checkpoint written by `difflab train`: writes grid.png, "
        "one PNG per image under images/ (each with its generation parameters in a PNG text chunk), and "
        "samples.npz (uint8 NHWC, with labels for class-conditional models). Method, steps and spacing "
        "default to the checkpoint's sample settings. --from-png IMAGE makes a saved image again; "
        "`difflab invert` maps images to the DDIM noise that --noise maps back.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", nargs="?",
                   help="a run folder or its checkpoint/ folder (optional with --from-png: the PNG names it)")
    p.add_argument("--from-png", metavar="IMAGE",
                   help="make again the image a difflab PNG records (its checkpoint, prompt, class, seed, sampler, "
                        "guidance), bit for bit; other flags given override the record's")
    p.add_argument("--n", type=int, help="number of images (default: 64, or the count of --noise)")
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
    p.add_argument("--noise", metavar="NPZ",
                   help="start from this noise instead of the seeds' (an .npz from `difflab invert`: array 'noise', "
                        "N x C x H x W; --n defaults to its count); with --method ddim it maps inverted images back")
    add_editing_arguments(p)
    add_super_resolution_arguments(p)
    add_controlnet_arguments(p)
    p.add_argument("--batch-size", type=int, default=256, help="images per sampler call")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--out", default="samples", help="output folder")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run into the same --out: make only the images not written yet "
                        "(each image's PNG is written as its batch finishes)")
    p.set_defaults(func=run)


def add_editing_arguments(p) -> None:
    """img2img and inpainting (docs/editing.md)."""
    from ..masks import MASK_SHAPES
    from ..pipelines.inpaint import INPAINT_MODES
    from ..pipelines.inpaint_area import INPAINT_AREAS

    p.add_argument("--init-image", metavar="IMG_OR_DIR",
                   help="img2img / SDEdit: start from this image (or every image of this folder), resized to the "
                        "model's size, noised part way (--strength); --n defaults to the number of images")
    p.add_argument("--strength", type=float, metavar="S",
                   help="how far to noise the init image, in [0, 1]: 0 = the input unchanged, 1 = from pure noise "
                        "(default with a mask: 1)")
    p.add_argument("--strength-steps", choices=["diffusers", "fixed"], default="diffusers",
                   help="diffusers: run int(steps*strength) of the steps; fixed: run exactly --steps steps over the "
                        "truncated range (A1111 / ComfyUI)")
    p.add_argument("--mask", metavar="PNG", help="inpaint: a mask image, white = repaint (resized if needed)")
    p.add_argument("--mask-box", metavar="X0,Y0,X1,Y1", help="inpaint the box x0,y0,x1,y1 (pixels, end excluded)")
    p.add_argument("--mask-shape", choices=MASK_SHAPES, help="inpaint a built-in region")
    p.add_argument("--mask-blur", type=float, default=0.0, metavar="PIXELS",
                   help="feather the mask inward by this many pixels (outside pixels stay exact)")
    p.add_argument("--no-paste-back", dest="paste_back", action="store_false",
                   help="keep the model's output outside the mask instead of pasting the input back (for a "
                        "latent model: the autoencoder's round trip there, as diffusers returns it)")
    p.add_argument("--inpaint", choices=INPAINT_MODES,
                   help="blend: replace the known region after each step (any sampler); repaint: RePaint's "
                        "resampling (Lugmayr et al. 2022; DDPM steps, --steps levels); model: a mask-conditioned "
                        "model (trained with diffusion.image_condition: inpaint) fills it alone (default: model for "
                        "such a model, blend otherwise)")
    p.add_argument("--inpaint-area", choices=INPAINT_AREAS, default="whole",
                   help="whole: the image resized to the model's size; masked: only a crop around the mask is "
                        "repainted at the model's resolution and pasted back, the image keeping its size "
                        "(A1111's 'Only masked', for images larger than the model)")
    p.add_argument("--inpaint-padding", type=int, default=32, metavar="PIXELS",
                   help="with --inpaint-area masked: context pixels around the mask's bounding box")
    p.add_argument("--repaint-jumps", type=int, default=10, metavar="J", help="RePaint's jump length")
    p.add_argument("--repaint-resample", type=int, default=10, metavar="R",
                   help="RePaint's number of resamplings (jump_n_sample)")


def add_super_resolution_arguments(p) -> None:
    """The low-resolution inputs of a super-resolution model (docs/image-conditioning.md)."""
    p.add_argument("--cond-image", metavar="IMG_OR_DIR",
                   help="a super-resolution model's low-resolution input(s), or the image(s) an instruct-pix2pix "
                        "model edits (its instruction is --prompt): an image or a folder (resized to the model's "
                        "size with a warning if needed); --n defaults to their count")
    p.add_argument("--aug-level", type=float, metavar="A",
                   help="noise-conditioning augmentation level of the low-resolution input, in [0, 1] (0 = clean; "
                        "default: the checkpoint's sample.aug_level)")


def add_controlnet_arguments(p) -> None:
    """The ControlNet flags (docs/controlnet.md); each repeatable, the k-th of each for the k-th --controlnet."""
    g = p.add_argument_group("ControlNet (repeat each flag once per --controlnet, in the same order)")
    g.add_argument("--controlnet", action="append", default=[], metavar="RUN",
                   help="a ControlNet run from `difflab train-controlnet` on this base (several add up)")
    g.add_argument("--control-image", action="append", default=[], metavar="IMG_OR_DIR",
                   help="its control image(s), resized to the model's size: image i of the run uses image i mod N")
    g.add_argument("--control-scale", action="append", default=[], metavar="S[,S...]",
                   help="how much of it reaches the base: one number (0 = the base alone), or one per residual "
                        "(skip connections shallow to deep, then the middle block); default: the checkpoint's")
    g.add_argument("--control-start", action="append", type=float, default=[], metavar="F",
                   help="the fraction of the sampling steps before which it is off (default 0)")
    g.add_argument("--control-end", action="append", type=float, default=[], metavar="F",
                   help="the fraction of the sampling steps after which it is off (default 1)")
    g.add_argument("--control-preprocess", action="append", default=[], metavar="KIND",
                   help="make the control image from a picture: canny, soft_edges, tile, grayscale, or auto (the "
                        "ControlNet's own kind); default: the image is a ready control image")
    g.add_argument("--guess-mode", action="store_true",
                   help="no prompt to the control branches, deeper residuals weighted up (0.825^(K-1-k)), and "
                        "under classifier-free guidance only the conditional branch controlled")
    g.add_argument("--force", action="store_true",
                   help="apply a ControlNet or LoRA even if its base run's weights have changed since it was trained "
                        "(a LoRA for another architecture: load the layers that match)")
    p.add_argument("--embedding", action="append", default=[], metavar="FILE",
                   help="learned words (textual inversion: an embedding file or a train-embedding run) to use in "
                        "prompts; repeatable")
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]",
                   help="a LoRA (a .safetensors file in difflab's, PEFT's or kohya's layout, or a train-lora run) at "
                        "SCALE (default 1); repeat to combine several (docs/personalisation.md)")


def add_loras(model, args) -> None:
    """Load every --lora FILE[:SCALE] and --embedding FILE onto the model."""
    from ..pipelines.embeddings import add_embedding
    from ..pipelines.lora import add_lora, parse_lora_arg

    for text in getattr(args, "lora", []):
        path, scale = parse_lora_arg(text)
        add_lora(model, path, scale, force=getattr(args, "force", False))
    for path in getattr(args, "embedding", []):
        add_embedding(model, path)


def controls_from_args(args, model) -> list:
    """The :class:`~difflab.pipelines.controlnet.Control` of each --controlnet."""
    from ..pipelines.controlnet import Control, ControlNetModel, load_control_images

    k = len(args.controlnet)
    per_net = {"--control-image": args.control_image, "--control-scale": args.control_scale,
               "--control-start": args.control_start, "--control-end": args.control_end,
               "--control-preprocess": args.control_preprocess}
    if not k:
        given = [flag for flag, values in per_net.items() if values] + (["--guess-mode"] if args.guess_mode else [])
        if given:
            raise ValueError(f"{given[0]} belongs to a ControlNet: add --controlnet RUN")
        return []
    if len(args.control_image) != k:
        raise ValueError(f"{k} --controlnet but {len(args.control_image)} --control-image: give one image (or "
                         "folder) per ControlNet, in the same order")
    for flag, values in per_net.items():
        if len(values) not in (0, 1, k):
            raise ValueError(f"{flag} was given {len(values)} times for {k} ControlNets: once for all, or once each")

    def pick(values, i, default=None):
        return values[i] if len(values) == k else values[0] if values else default

    controls = []
    for i, path in enumerate(args.controlnet):
        net = ControlNetModel.load(path, device=model.device)
        preprocess = pick(args.control_preprocess, i)
        images = load_control_images(args.control_image[i], net, model, preprocess)
        scale = pick(args.control_scale, i)
        if scale is not None:
            try:
                values = [float(v) for v in str(scale).split(",")]
            except ValueError:
                raise ValueError(f"--control-scale takes a number or comma-separated numbers, got {scale!r}") from None
            scale = values[0] if len(values) == 1 else values
        controls.append(Control(net, images, scale, pick(args.control_start, i, 0.0), pick(args.control_end, i, 1.0),
                                args.guess_mode, preprocess))
    return controls


def edit_from_args(args, model):
    """The :class:`~difflab.pipelines.generate.Edit` the editing flags ask for, or None."""
    from ..pipelines.pipeline import make_edit

    masks = [flag for flag in ("mask", "mask_box", "mask_shape") if getattr(args, flag, None)]
    if len(masks) > 1:
        raise ValueError("give one of --mask, --mask-box and --mask-shape")
    if not args.paste_back and not masks:
        raise ValueError("--no-paste-back is for inpainting: give a mask (--mask, --mask-box or --mask-shape)")
    if not args.init_image:
        if masks or args.strength is not None:
            raise ValueError("--strength and the mask flags edit an image: give it with --init-image IMG_OR_DIR")
        return None
    return make_edit(model, args.init_image, args.strength, args.strength_steps, args.mask or args.mask_shape,
                     args.inpaint, args.mask_blur, args.repaint_jumps, args.repaint_resample, args.mask_box,
                     args.inpaint_area, args.inpaint_padding, args.paste_back)


def add_sampler_arguments(p) -> None:
    """``--sigmas``, ``--no-tuned``, ``--compile``, ``--precision``, ``--eta``, ``--variance`` and
    ``--threshold``, shared by ``sample`` and ``eval``."""
    from ..device import PRECISIONS
    from ..sampling.ddpm import VARIANCES

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
    p.add_argument("--eta", type=float,
                   help="DDIM's eta: 0 = deterministic (default), 1 = ancestral (DDPM's posterior variance); ddim only")
    p.add_argument("--variance", choices=VARIANCES,
                   help="the ddpm sampler's variance: fixed_small (beta tilde), fixed_large (beta) or learned "
                        "(default: learned for a model trained with learned variance, else fixed_small)")
    p.add_argument("--threshold", type=float, metavar="P",
                   help="Imagen's dynamic thresholding of x0 at percentile P (e.g. 0.995) instead of clipping to "
                        "[-1, 1]; pixel models only")


def schedule_from_args(args, model, guidance) -> dict:
    """generate()'s method / steps / spacing / sigmas (+ sampler options) for the flags: an
    explicit ``--sigmas`` file, else the checkpoint's tuned schedule where one matches."""
    from ..pipelines import SamplerSettings, find_tuned
    from ..sampling.tuning import TunedSigmas

    spacing = getattr(args, "spacing", None)
    if getattr(args, "sigmas_list", None) is not None:  # a --from-png record's own levels
        return {"method": args.method, "steps": None, "sigmas": args.sigmas_list, **sampler_options(args)}
    if args.sigmas:
        tuned = TunedSigmas.load(args.sigmas)
        for flag, value, have in (("--method", args.method, tuned.method), ("--steps", args.steps, tuned.steps)):
            if value is not None and value != have:
                raise ValueError(f"{flag} {value} contradicts the schedule in {args.sigmas} ({have}); drop {flag}")
        if spacing:
            raise ValueError("--spacing and --sigmas both set the noise levels: give one of them")
    else:
        settings = SamplerSettings.resolve(model, args.method, args.steps, spacing)
        method, steps = settings.method, settings.steps
        tuned, note = (None, None) if (spacing or args.no_tuned) else find_tuned(model, method, steps, guidance)
        if note:
            print(f"difflab: {note}")
        if tuned is None:
            return {"method": args.method, "steps": args.steps, "spacing": spacing, **sampler_options(args)}
        print(f"difflab: using the tuned {steps}-step schedule of the checkpoint (--no-tuned to ignore it)")
    return {"method": tuned.method, "steps": tuned.steps, "sigmas": tuned.tensor(), **tuned.options,
            **sampler_options(args)}


def sampler_options(args) -> dict:
    """The sampler options and thresholding the flags set (unset ones left to the defaults)."""
    options = {"eta": args.eta, "variance": args.variance, "threshold": args.threshold}
    return {key: value for key, value in options.items() if value is not None}


def add_guidance_arguments(p, classifier_flag: str = "--classifier") -> None:
    """The guidance flags shared by ``sample`` and ``eval`` (see docs/guidance.md)."""
    p.add_argument("--guidance-scale", type=float, metavar="W",
                   help="classifier-free guidance weight w: 1 = the conditional model, 0 = the "
                        "unconditional one, >1 trades diversity for fidelity (default: the checkpoint's "
                        "sample.guidance_scale); needs a model trained with diffusion.cond_drop_prob > 0")
    p.add_argument("--guidance-rescale", type=float, default=0.0, metavar="PHI",
                   help="Lin et al.'s guidance rescale in [0, 1] against over-saturation at large w (0 = off)")
    p.add_argument("--guidance-interval", type=float, nargs=2, metavar=("SIGMA_LO", "SIGMA_HI"),
                   help="apply classifier-free guidance only at noise levels SIGMA_LO < sigma <= SIGMA_HI "
                   "(a guidance-distilled student: its w input is 1 elsewhere; a student refined with an interval "
                   "uses that one by default, and 0 1e9 guides every level). At few steps, 0 10 leaves the first, "
                   "pure-noise level unguided")
    p.add_argument(classifier_flag, dest="guidance_classifier", metavar="CKPT",
                   help="a noisy classifier from `difflab train-classifier --noisy` for classifier guidance "
                        "(ADM); works with unconditional and class-conditional models")
    p.add_argument("--classifier-scale", type=float, default=1.0, metavar="S",
                   help="classifier-guidance gradient scale s (0 = no guidance)")
    p.add_argument("--classifier-mode", choices=["epsilon", "mean"],
                   help="ADM Algorithm 2 (epsilon: shift the noise prediction, any sampler) or Algorithm 1 "
                        "(mean: shift the ancestral mean, ddpm only); default: mean for ddpm, else epsilon")
    p.add_argument("--negative-prompt", metavar="TEXT",
                   help="a text model's unconditional input for classifier-free guidance instead of the empty "
                        "caption: what the images should move away from (needs --guidance-scale > 1)")
    p.add_argument("--prompt-weights", action="store_true",
                   help="read AUTOMATIC1111's emphasis in the prompts: (word:1.3) weighs a word's text states "
                        "1.3x, (word) 1.1x, [word] 1/1.1x (a CLIP text model, e.g. an imported Stable Diffusion)")
    p.add_argument("--image-guidance", type=float, metavar="S_I",
                   help="an instruct-pix2pix model's image guidance s_I (with --guidance-scale its text guidance "
                        "s_T; default: the checkpoint's sample.image_guidance_scale): higher keeps the source closer")


def guidance_from_args(args, device):
    """The :class:`~difflab.pipelines.Guidance` the flags of :func:`add_guidance_arguments` ask for."""
    from ..pipelines import Guidance, NoisyClassifierModel

    classifier = None
    if args.guidance_classifier:
        classifier = NoisyClassifierModel.load(args.guidance_classifier, device=device)
    interval = tuple(args.guidance_interval) if args.guidance_interval else None
    return Guidance(scale=args.guidance_scale, rescale=args.guidance_rescale, interval=interval,
                    classifier=classifier, classifier_scale=args.classifier_scale,
                    classifier_mode=args.classifier_mode, negative_prompt=getattr(args, "negative_prompt", None),
                    image_scale=getattr(args, "image_guidance", None))


def use_prompt_weights(model) -> None:
    """Make a CLIP text model read prompt weights (``--prompt-weights``)."""
    encoder = model.record.text_encoder or {}
    if encoder.get("name") != "clip":
        raise ValueError(f"--prompt-weights needs a CLIP text model (an imported Stable Diffusion); this model's "
                         f"text encoder is {encoder.get('name')!r}")
    model.record.text_encoder = {**encoder, "prompt_weights": True}


def run(args) -> int:
    from pathlib import Path

    from ..device import pick_device
    from ..images import check_output_folder
    from ..pipelines import DiffusionModel, SamplerSettings, plan

    if args.from_png:
        apply_png_record(args)
    if not args.checkpoint:
        raise ValueError("give the run to sample from (difflab sample RUN), or --from-png IMAGE")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.n is not None and args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}")
    out_dir = check_output_folder(Path(args.out))  # before any work: not a file, writable
    device = pick_device(args.device)
    model = DiffusionModel.load(args.checkpoint, use_ema=not args.no_ema, device=device)
    if getattr(args, "prompt_weights", False):
        use_prompt_weights(model)
    add_loras(model, args)
    noise, null_text = read_inversion(args.noise) if args.noise else (None, None)
    if null_text is not None:
        use_null_text_settings(args, null_text)
    edit = edit_from_args(args, model)
    cond_images = None
    if args.cond_image:
        from ..pipelines.super_resolution import load_cond_images

        cond_images = load_cond_images(args.cond_image, model)
    controls = controls_from_args(args, model)
    given = len(noise) if noise is not None else len(edit.init) if edit else len(cond_images) if cond_images else \
        len(controls[0].images) if controls else 64
    n = args.n or given
    if null_text is not None and n != len(noise):
        raise ValueError(f"--noise {args.noise} is a null-text inversion of {len(noise)} images: sample exactly those "
                         f"(drop --n {n})")
    guidance = guidance_from_args(args, device)
    prompts = read_prompts(args)
    kwargs = schedule_from_args(args, model, guidance)
    threshold = kwargs.pop("threshold", None)
    settings = SamplerSettings.resolve(model, kwargs.pop("method"), kwargs.pop("steps"), kwargs.pop("spacing", None),
                                       kwargs.pop("sigmas", None), **kwargs)
    job = plan(model, n, settings, seed=args.seed, class_index=args.class_index, guidance=guidance, prompts=prompts,
               threshold=threshold, precision=args.precision, compile=args.compile, edit=edit,
               cond_images=cond_images, aug_level=args.aug_level, controls=controls, force_controls=args.force)
    return write_samples(job, out_dir, args, noise, null_text)


def use_null_text_settings(args, null_text) -> None:
    """Sample a null-text inversion with its own walk and scale: DDIM, its steps, spacing and
    guidance scale fill the flags not given; a flag that contradicts them is an error."""
    if getattr(args, "sigmas", None):
        raise ValueError(f"--noise {args.noise} is a null-text inversion, tuned for its own DDIM walk: drop --sigmas")
    for flag, name, value in (("--method", "method", "ddim"), ("--steps", "steps", null_text.steps),
                              ("--spacing", "spacing", null_text.spacing),
                              ("--guidance-scale", "guidance_scale", null_text.guidance_scale)):
        given = getattr(args, name, None)
        if given is None:
            setattr(args, name, value)
        elif given != value:
            raise ValueError(f"{flag} {given} contradicts the null-text inversion in {args.noise} (tuned for {value}): "
                             f"drop {flag}")


GRID_IMAGES = 1024  # the most images grid.png shows (all of them are under images/ and in samples.npz)


def write_samples(job, out_dir, args, noise=None, null_text=None) -> int:
    """Sample the plan into ``out_dir``, each batch's PNGs written as it finishes (an interrupted
    run loses one batch at most; ``--resume`` makes only the images not written yet); then
    ``samples.npz`` from the PNGs, without holding them all in memory, and the grids."""
    from ..images import image_path, read_pngs, save_grid, save_images, save_npz_from_files
    from ..pipelines import batches
    from ..pipelines.generate import grid_record
    from ..pipelines.png_info import png_text, read_record

    n, folder = len(job.seeds), out_dir / "images"
    paths = [image_path(folder, i, n) for i in range(n)]
    todo = list(range(n))
    if args.resume:
        done = [i for i in range(n) if paths[i].is_file()]
        for i in done:
            record = read_record(paths[i])
            if record.get("seed") != job.seeds[i] or record.get("checkpoint") != job.image_record(i).get("checkpoint"):
                raise ValueError(f"--resume: {paths[i]} was made by another run (seed {record.get('seed')} of "
                                 f"{record.get('checkpoint')}, this run's image {i} has seed {job.seeds[i]}); "
                                 "give another --out or drop --resume")
        todo = [i for i in range(n) if not paths[i].is_file()]
        print(f"difflab sample: resuming: {n - len(todo)} of {n} images already in {folder}")
    batch_size = args.batch_size
    if null_text is not None and todo:  # its images' tuned contexts, in one batch
        from ..pipelines.null_text import apply_null_text

        job, batch_size = apply_null_text(job, null_text, todo), len(todo)
    for chunk, images in batches(job, batch_size=batch_size, indices=todo, progress=True, noise=noise):
        save_images(images, folder, names=[paths[i].name for i in chunk],
                    pnginfos=[png_text(job.image_record(i)) for i in chunk])
    save_npz_from_files(paths, out_dir / "samples.npz", job.labels)
    shown = read_pngs(paths[:GRID_IMAGES])
    labels = job.labels[: len(shown)] if job.labels is not None else None
    class_names = job.model.class_names or (job.guidance.classifier.class_names if job.guidance.classifier else [])
    per_class = labels is not None and args.class_index is None
    upscale = max(1, 64 // shown.shape[-1])
    grid = save_grid(shown, out_dir / "grid.png", nrow=len(class_names) if per_class else None, upscale=upscale,
                     pnginfo=png_text(grid_record(job.image_record(0), job.seeds[: len(shown)])))
    if per_class:  # one grid per class as well: grids/CLASS.png
        for index, name in enumerate(class_names):
            if (labels == index).any():
                save_grid(shown[labels == index], out_dir / "grids" / f"{index:02d}-{safe_name(name)}.png",
                          upscale=upscale)
    if job.prompts:  # which prompt made which image
        (out_dir / "prompts.txt").write_text("".join(f"{prompt}\n" for prompt in job.prompts))
    print(f"difflab sample: {n} images in {out_dir} (grid: {grid})")
    return 0


def apply_png_record(args) -> None:
    """Fill the flags the user did not give from the generation record of ``--from-png``: one
    image (n = 1) with its own seed, made again bit for bit."""
    from ..pipelines.png_info import read_record

    record = read_record(args.from_png)
    if record.get("classifier") and not args.guidance_classifier:
        args.guidance_classifier = record["classifier"]
        args.classifier_scale = record.get("classifier_scale", args.classifier_scale)
    given = {"checkpoint": record.get("checkpoint"), "n": 1, "seed": record["seed"], "method": record["method"],
             "steps": record["steps"], "spacing": record["spacing"], "class_index": record.get("class"),
             "guidance_scale": record.get("guidance_scale"), "negative_prompt": record.get("negative_prompt"),
             "threshold": record.get("threshold"), "classifier_mode": record.get("classifier_mode"),
             **record.get("options", {})}
    if record.get("prompt") is not None and not (args.prompt or args.prompts):
        args.prompt = [record["prompt"]]
    if record.get("sigmas") is not None and not args.sigmas:
        args.sigmas_list = record["sigmas"]
    for key, value in given.items():
        if getattr(args, key, None) in (None, []) or key in ("n", "seed"):
            setattr(args, key, value)
    args.guidance_rescale = record.get("guidance_rescale", args.guidance_rescale)
    if record.get("guidance_interval") and not args.guidance_interval:
        args.guidance_interval = record["guidance_interval"]
    if args.precision == "auto":
        args.precision = record.get("precision", "auto")
    args.no_tuned = True  # the record names its schedule: a tuned file written since must not change it
    apply_input_record(args, record)
    apply_controlnet_record(args, record)
    if record.get("loras") and not args.lora:
        args.lora = [f"{entry['path']}:{entry['scale']}" for entry in record["loras"]]
    if record.get("embeddings") and not args.embedding:
        args.embedding = list(record["embeddings"])


def apply_controlnet_record(args, record: dict) -> None:
    """The ControlNets of a record (each with its control image's path, which must still exist)."""
    from pathlib import Path

    nets = record.get("controlnets") or []
    if not nets or args.controlnet:
        return
    for entry in nets:
        if entry.get("control_image") is None or not Path(entry["control_image"]).is_file():
            raise ValueError(f"{args.from_png} was controlled by the image {entry.get('control_image')}, which is not "
                             "there (an image given in memory, or moved): give --controlnet and --control-image")
    args.controlnet = [entry["controlnet"] for entry in nets]
    args.control_image = [entry["control_image"] for entry in nets]
    args.control_scale = [",".join(map(str, s)) if isinstance(s := entry["control_scale"], list) else str(s)
                          for entry in nets]
    args.control_start = [entry["control_start"] for entry in nets]
    args.control_end = [entry["control_end"] for entry in nets]
    args.guess_mode = any(entry.get("guess_mode") for entry in nets)
    preprocess = [entry.get("control_preprocess") for entry in nets]
    if any(preprocess):
        if not all(preprocess):
            raise ValueError(f"{args.from_png} mixes preprocessed and ready control images: give the flags again")
        args.control_preprocess = preprocess


# the Pipeline's input arguments that difflab sample spells otherwise, and the flags that give each input
RENAMED = {"image": "init_image", "strength_mode": "strength_steps"}
INPUT_FLAGS = {"image": "--init-image IMG", "strength": "--strength S", "mask": "--mask PNG",
               "cond_image": "--cond-image IMG", "aug_level": "--aug-level A", "image_guidance": "--image-guidance S"}


def apply_input_record(args, record: dict) -> None:
    """The inputs a record names (init image, strength and mask of an img2img or inpainting image,
    an upsampler's or instruct-pix2pix model's conditioning image, augmentation level and image
    guidance), read by :meth:`difflab.Pipeline.input_arguments_of`, for the flags the user did not
    give. The PNG holds the inputs' paths, which must still exist."""
    from ..pipelines.pipeline import Pipeline

    given = {argument for argument in INPUT_FLAGS
             if getattr(args, RENAMED.get(argument, argument), None) not in (None, [])}
    if args.mask_box or args.mask_shape:
        given.add("mask")
    arguments = Pipeline.input_arguments_of(record, given, source=args.from_png,
                                            how=lambda argument: f"with {INPUT_FLAGS[argument]}")
    for argument, value in arguments.items():
        setattr(args, RENAMED.get(argument, argument), value)


def read_noise(path: str):
    """The ``noise`` array of an .npz written by ``difflab invert`` (N, C, H, W)."""
    return read_inversion(path)[0]


def read_inversion(path: str):
    """The ``noise`` (N, C, H, W) of an .npz written by ``difflab invert``, and its null-text
    inversion (:class:`~difflab.pipelines.null_text.NullText`; None for a plain inversion)."""
    from pathlib import Path

    import numpy as np
    import torch

    from ..pipelines.null_text import NullText

    if not Path(path).is_file():
        raise FileNotFoundError(f"--noise {path} does not exist")
    try:
        npz = np.load(path)  # arrays only: allow_pickle stays off
    except (OSError, ValueError) as error:
        raise ValueError(f"--noise {path} is not a readable .npz ({error}): give the file `difflab invert` wrote") \
            from None
    if not hasattr(npz, "files"):  # a bare .npy array
        raise ValueError(f"--noise {path} is a single array, not the .npz `difflab invert` writes (array 'noise')")
    with npz:
        if "noise" not in npz.files:
            raise ValueError(f"{path} has no array 'noise': give an .npz written by `difflab invert`")
        noise = torch.from_numpy(npz["noise"]).float()
        return noise, NullText.from_arrays(npz, noise)


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
