"""``difflab edit RUN --prompt P --edit P*``: prompt-to-prompt editing of a text model's samples;
``difflab edit RUN --image IMG --instruction TEXT``: an instruct-pix2pix model's edit of an image."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from ..editing import MODES
    from ..sampling import SAMPLERS, SPACINGS

    p = subparsers.add_parser(
        "edit",
        help="prompt-to-prompt, or instruct-pix2pix: edit images by a written instruction",
        description="Prompt-to-prompt (Hertz et al. 2022) on a text model with cross-attention: each source "
        "image (--prompt) and its edit (--edit) share their noise, and the edit takes the source's attention maps "
        "for the first steps (and, on a U-Net, the source's features of one decoder block), so it keeps the layout "
        "and changes what the edited words say. Writes grid.png "
        "(each row: source, edit), source/ and edit/ (one PNG per image, each carrying its record: --from-png "
        "makes the pair again). With --image and --instruction, an "
        "instruct-pix2pix model (Brooks et al. 2023) edits the given images instead: OUT/images/ and OUT/pairs.png. "
        "See docs/editing.md and docs/image-conditioning.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", nargs="?",
                   help="a run folder or its checkpoint/ folder (a text model; optional with --from-png)")
    p.add_argument("--from-png", metavar="IMAGE",
                   help="make again the pair a source or edit PNG of `difflab edit` (or of the page) records: its "
                        "prompts, edit settings, seed, sampler and guidance, bit for bit")
    p.add_argument("--prompt", metavar="TEXT", help="prompt-to-prompt: the source prompt")
    p.add_argument("--image", metavar="IMG_OR_DIR",
                   help="real image(s) to edit. With --prompt (their caption) and --edit: prompt-to-prompt from "
                        "their null-text inversion at the guidance scale (a text model with a frozen encoder; also "
                        "written to OUT/noise.npz for --noise). With --instruction: an instruct-pix2pix model's edit "
                        "(trained with diffusion.image_condition: source); writes OUT/images/ and OUT/pairs.png")
    p.add_argument("--instruction", metavar="TEXT", help="instruct-pix2pix: the edit, written ('make it red')")
    p.add_argument("--image-guidance", type=float, metavar="S_I",
                   help="instruct-pix2pix: image guidance s_I (default: the checkpoint's); --guidance-scale is s_T")
    p.add_argument("--edit", metavar="TEXT", help="the edited prompt (default: the source prompt, for --reweight)")
    p.add_argument("--mode", choices=MODES, default="replace",
                   help="replace: a word swap of equal token count; refine: added words (the other tokens are "
                        "aligned to the source's); reweight: refine's alignment, with --reweight")
    p.add_argument("--reweight", action="append", metavar="WORD=SCALE", default=[],
                   help="scale the attention to WORD of the edit prompt (repeatable; 1 = unchanged)")
    p.add_argument("--cross-replace", type=float, default=0.8, metavar="F",
                   help="the fraction of the steps in which the edit takes the source's cross-attention maps")
    p.add_argument("--self-replace", type=float, default=0.4, metavar="F",
                   help="the fraction of the steps in which the edit takes the source's self-attention maps")
    p.add_argument("--feature-replace", type=float, metavar="F",
                   help="the fraction of the steps in which the edit takes the source's features of one U-Net "
                        "decoder block (plug-and-play features, Tumanyan et al. 2023), which hold the layout "
                        "(default: 0.2 on a U-Net, 0 on a DiT; 0: the paper's prompt-to-prompt)")
    p.add_argument("--local-blend", action="append", metavar="WORD", default=[],
                   help="local blend: change only where WORD (of either prompt) is drawn, keep the source elsewhere "
                        "(repeatable; e.g. --local-blend sneaker --local-blend sandal)")
    p.add_argument("--blend-threshold", type=float, default=0.3, metavar="T",
                   help="local blend: a pixel is in the words' region where their attention exceeds T x its maximum")
    p.add_argument("--attention-maps", action="store_true",
                   help="also write OUT/attention.png: every token's average cross-attention map for the first "
                        "pair (rows: source, edit), to see where each word is drawn")
    p.add_argument("--n", type=int, default=4, help="number of source/edit pairs")
    p.add_argument("--seed", type=int, default=0, help="pair i uses noise seed SEED+i")
    p.add_argument("--noise", metavar="NPZ", help="start the pairs from this noise (from `difflab invert`) "
                   "instead of the seeds' (--n defaults to its count); a null-text inversion (`difflab invert "
                   "--null-text`) also brings its tuned unconditional contexts, steps, spacing and guidance scale")
    p.add_argument("--method", choices=sorted(SAMPLERS), default="ddim", help="sampler")
    p.add_argument("--steps", type=int, help="sampler steps (default: the checkpoint's)")
    p.add_argument("--spacing", choices=sorted(SPACINGS), help="step spacing (default: the checkpoint's)")
    p.add_argument("--guidance-scale", type=float, metavar="W",
                   help="classifier-free guidance weight (default: the checkpoint's)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--out", default="edits", help="output folder")
    p.set_defaults(func=run)


def parse_reweight(items: list[str]) -> dict[str, float]:
    """``["WORD=SCALE", ...]`` as ``{word: scale}``."""
    weights = {}
    for item in items:
        word, sep, scale = item.rpartition("=")
        try:
            weights[word.strip()] = float(scale)
        except ValueError:
            sep = ""
        if not sep or not word.strip():
            raise ValueError(f"--reweight {item!r}: expected WORD=SCALE, e.g. --reweight sandal=2")
    return weights


def run(args) -> int:
    from pathlib import Path

    from ..device import pick_device
    from ..editing import prompt_to_prompt
    from ..editing.records import pair_records
    from ..images import check_output_folder, save_grid, save_images
    from ..pipelines import DiffusionModel, Guidance
    from ..pipelines.png_info import png_text
    from .sample import read_inversion

    if args.from_png:
        apply_edit_record(args)
    if not args.checkpoint:
        raise ValueError("give the run to edit with (difflab edit RUN ...), or --from-png IMAGE")
    if args.instruction or (args.image and not args.prompt):
        return run_instruction(args)
    if not args.prompt:
        raise ValueError("give --prompt (and --edit) for prompt-to-prompt, or --image and --instruction for "
                         "an instruct-pix2pix model")
    reweight = parse_reweight(args.reweight)
    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}")
    out = check_output_folder(Path(args.out))
    model = DiffusionModel.load(args.checkpoint, use_ema=not args.no_ema, device=pick_device(args.device))
    noise, null_text = read_inversion(args.noise) if args.noise else (None, None)
    if args.image:  # real images: null-text inversion under the source prompt, kept in OUT/noise.npz
        if args.noise:
            raise ValueError("--image inverts the images itself: drop --noise (or drop --image to edit that inversion)")
        null_text = invert_for_editing(args, model, out)
        noise = null_text.noise
    n = len(noise) if noise is not None else args.n
    sources, edits, control = prompt_to_prompt(
        model, args.prompt, args.edit, mode=args.mode, reweight=reweight, cross_replace=args.cross_replace,
        self_replace=args.self_replace, feature_replace=args.feature_replace, seed=args.seed, n=n,
        method=args.method, steps=args.steps, spacing=args.spacing, guidance=Guidance(scale=args.guidance_scale),
        noise=noise, blend_words=args.local_blend, blend_threshold=args.blend_threshold, null_text=null_text,
        attention_maps=args.attention_maps)
    records = pair_records(model, **control.run)  # each PNG carries its own
    save_images(sources, out / "source", pnginfos=[png_text(record) for record in records[0::2]])
    save_images(edits, out / "edit", pnginfos=[png_text(record) for record in records[1::2]])
    pairs = [image for pair in zip(sources, edits) for image in pair]
    import torch

    grid = save_grid(torch.stack(pairs), out / "grid.png", nrow=2, upscale=max(1, 64 // sources.shape[-1]),
                     pnginfo=png_text({**records[1], "seeds": control.run["seeds"]}))
    if args.attention_maps:
        write_attention_maps(control, out / "attention.png")
    print(f"difflab edit: {n} pairs ({args.mode}) in {out} (grid: {grid}; each row: source, edit)")
    return 0


def write_attention_maps(control, path) -> None:
    """The first pair's token maps (:func:`~difflab.editing.attention_maps.attention_grid`) to ``path``."""
    from ..editing.attention_maps import attention_grid

    n = len(control.run["seeds"])
    attention_grid(control.store.maps()[[0, n]], control.store.tokens).save(path)
    print(f"difflab edit: the tokens' cross-attention maps of the first pair in {path}")


def apply_edit_record(args) -> None:
    """``--from-png``: the record's prompts, edit settings, seed (one pair), sampler and guidance
    replace the flags' (the run too, unless one is given)."""
    from ..editing.records import edit_arguments
    from ..pipelines.png_info import read_record

    if args.image or args.noise or args.instruction:
        raise ValueError("--from-png makes a recorded pair again from its seed: drop --image, --noise, --instruction")
    record = edit_arguments(read_record(args.from_png), args.from_png)
    args.checkpoint = args.checkpoint or record["checkpoint"]
    args.prompt, args.edit, args.mode = record["prompt"], record["edit"], record["mode"]
    args.reweight = [f"{word}={scale}" for word, scale in (record["reweight"] or {}).items()]
    args.cross_replace, args.self_replace = record["cross_replace"], record["self_replace"]
    args.feature_replace = record["feature_replace"]
    args.local_blend, args.blend_threshold = record["blend_words"] or [], record["blend_threshold"]
    args.seed, args.n = record["seeds"][0], 1
    args.method, args.steps, args.spacing = record["method"], record["steps"], record["spacing"]
    args.guidance_scale = record["guidance_scale"]


def invert_for_editing(args, model, out):
    """``--image`` with ``--prompt``: the null-text inversion of the images for the edit's
    guidance scale (written to OUT/noise.npz, which ``--noise`` reuses for other edits)."""
    from ..pipelines import Guidance
    from ..pipelines.guidance_policy import guidance_scale
    from ..pipelines.img2img import load_init_images
    from ..pipelines.null_text import null_text_inversion

    images = load_init_images(args.image, model).images
    scale = guidance_scale(model, Guidance(scale=args.guidance_scale))
    inverted = null_text_inversion(model, images, args.prompt, guidance_scale=scale, steps=args.steps,
                                   spacing=args.spacing, progress=True)
    out.mkdir(parents=True, exist_ok=True)
    inverted.save(out / "noise.npz")
    print(f"difflab edit: {len(images)} images null-text inverted under {args.prompt!r} to {out / 'noise.npz'}")
    return inverted


def run_instruction(args) -> int:
    """``--image IMG --instruction TEXT``: an instruct-pix2pix model edits each image as told."""
    from pathlib import Path

    import torch

    from ..device import pick_device
    from ..images import check_output_folder, read_pngs, save_grid
    from ..pipelines import DiffusionModel, Guidance, SamplerSettings, plan
    from ..pipelines.super_resolution import load_cond_images
    from .sample import write_samples

    if not (args.image and args.instruction):
        raise ValueError("instruct-pix2pix needs both --image IMG_OR_DIR and --instruction TEXT")
    if args.prompt or args.edit:
        raise ValueError("--prompt/--edit (prompt-to-prompt) and --image/--instruction (instruct-pix2pix) "
                         "are two kinds of edit: give one")
    out = check_output_folder(Path(args.out))
    model = DiffusionModel.load(args.checkpoint, use_ema=not args.no_ema, device=pick_device(args.device))
    if model.image_condition != "source":
        raise ValueError(f"{args.checkpoint} is not an instruct-pix2pix model (trained with "
                         "diffusion.image_condition: source): for prompt-to-prompt give --prompt and --edit")
    sources = load_cond_images(args.image, model)
    settings = SamplerSettings.resolve(model, args.method, args.steps, args.spacing)
    job = plan(model, len(sources), settings, seed=args.seed, prompts=[args.instruction], cond_images=sources,
               guidance=Guidance(scale=args.guidance_scale, image_scale=args.image_guidance))
    args.resume, args.batch_size, args.class_index = False, 256, None  # what write_samples reads
    write_samples(job, out, args)
    edits = read_pngs(sorted((out / "images").glob("*.png")))
    pairs = torch.stack([sources.images, edits], 1).flatten(0, 1)  # each row: source, edit
    grid = save_grid(pairs, out / "pairs.png", nrow=2, upscale=max(1, 64 // edits.shape[-1]))
    print(f"difflab edit: {len(edits)} images edited by {args.instruction!r} (source | edit: {grid})")
    return 0
