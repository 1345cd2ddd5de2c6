"""Null-text inversion round trip (issue 19, item 3's "beyond"): held-out images of a text model
inverted and sampled back under classifier-free guidance, PSNR against the images.

Each of the first N test images is inverted under its caption ("a photo of a sneaker", from its
true class) by plain DDIM inversion (at guidance 1, :func:`~difflab.pipelines.inversion.invert_images`)
and by null-text inversion for guidance W (:func:`~difflab.pipelines.null_text.null_text_inversion`,
Mokady et al. 2023), then sampled back by DDIM with the same steps: the plain noise at guidance 1
and at W, the null-text inversion at W. With ``--edit SOURCE:EDIT`` the first images of class
SOURCE are also edited by prompt-to-prompt from their null-text inversion (real-image editing).

    python benchmarks/null_text_roundtrip.py runs/fashion-mnist-16-text --n 200 --steps 50 \\
        --guidance-scale 3 --edit sneaker:sandal --out benchmarks/results/null_text_roundtrip

Prints mean / median / minimum PSNR (dB, data range 255) of each way and the seconds per image;
writes ``OUT/results.json``, ``OUT/grid.png`` (rows: inputs, plain inversion at W, null-text at W)
and ``OUT/edit.png`` (rows: inputs, their null-text reconstruction, the edit).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from difflab.data import load_dataset
from difflab.data.captions import TEMPLATES, with_article
from difflab.editing import prompt_to_prompt
from difflab.images import save_grid
from difflab.pipelines import DiffusionModel, Guidance, generate
from difflab.pipelines.inversion import invert_images
from difflab.pipelines.null_text import null_text_inversion


def psnr(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of uint8 images, data range 255."""
    mse = ((images.double() - reference.double()) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(255.0**2 / mse)


def summary(values: torch.Tensor) -> dict:
    return {"mean": float(values.mean()), "median": float(values.median()), "min": float(values.min())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="a text-conditioned run with a frozen text encoder")
    p.add_argument("--split", default="test", help="split of the inputs (held out)")
    p.add_argument("--n", type=int, default=200, help="inputs: the first N of the split")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps of inversion and sampling")
    p.add_argument("--guidance-scale", type=float, default=3.0, help="W, the CFG weight sampled back at")
    p.add_argument("--inner-steps", type=int, default=10, help="null-text: Adam steps per step")
    p.add_argument("--template", default=TEMPLATES[0], help="caption template with one {} for 'a/an CLASS'")
    p.add_argument("--edit", metavar="SOURCE:EDIT", help="also edit images of class SOURCE into EDIT (P2P)")
    p.add_argument("--edit-n", type=int, default=10, help="images edited")
    p.add_argument("--grid-columns", type=int, default=10, help="images shown in the grids")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", type=Path, help="write results.json, grid.png and edit.png here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model = DiffusionModel.load(args.checkpoint)
    dataset = model.record.train_config["data"]["dataset"]
    data = load_dataset(dataset, args.split, resolution=model.image_shape[-1], channels=model.image_shape[0])
    names = [name.lower() for name in data.class_names]
    caption = {c: args.template.format(with_article(name)) for c, name in enumerate(names)}
    images, labels = data.images[: args.n], data.labels[: args.n].long()
    w, steps = args.guidance_scale, args.steps
    print(f"{len(images)} {dataset}:{args.split} images, DDIM {steps} steps, captions from their classes; "
          f"sampled back at guidance {w:g}")

    timings = {"plain": 0.0, "null_text": 0.0}
    plain = {1.0: torch.empty_like(images), w: torch.empty_like(images)}
    null_back, losses = torch.empty_like(images), []
    for c in labels.unique().tolist():
        index = (labels == c).nonzero().flatten()
        prompt = caption[c]
        tic = time.perf_counter()
        noise = invert_images(model, images[index], steps=steps, prompt=prompt)
        timings["plain"] += time.perf_counter() - tic
        for scale in plain:
            out, _ = generate(model, len(index), method="ddim", steps=steps, noise=noise, prompts=[prompt],
                              guidance=Guidance(scale=scale))
            plain[scale][index] = out
        tic = time.perf_counter()
        inverted = null_text_inversion(model, images[index], prompt, guidance_scale=w, steps=steps,
                                       inner_steps=args.inner_steps)
        timings["null_text"] += time.perf_counter() - tic
        losses.append(inverted.losses)
        null_back[index], _ = generate(model, len(index), prompts=[prompt], null_text=inverted, method="ddim",
                                       steps=steps, guidance=Guidance(scale=w))
    results = {
        "plain inversion, sampled at guidance 1": summary(psnr(plain[1.0], images)),
        f"plain inversion, sampled at guidance {w:g}": summary(psnr(plain[w], images)),
        f"null-text inversion, sampled at guidance {w:g}": summary(psnr(null_back, images)),
    }
    for name, r in results.items():
        print(f"{name:45} PSNR mean {r['mean']:.2f} dB, median {r['median']:.2f}, min {r['min']:.2f}")
    per_image = {key: value / len(images) for key, value in timings.items()}
    print(f"seconds per image: plain inversion {per_image['plain']:.3f}, null-text inversion "
          f"{per_image['null_text']:.3f}")

    edit_rows = None
    if args.edit:
        source_name, edit_name = args.edit.split(":")
        index = (data.labels == names.index(source_name)).nonzero().flatten()[: args.edit_n]
        inverted = null_text_inversion(model, data.images[index], caption[names.index(source_name)],
                                       guidance_scale=w, steps=steps, inner_steps=args.inner_steps)
        sources, edits, _ = prompt_to_prompt(model, caption[names.index(source_name)],
                                             caption[names.index(edit_name)], null_text=inverted)
        edit_rows = torch.cat([data.images[index], sources, edits])
        results["edit"] = {"swap": args.edit, "n": len(index),
                           "source_reconstruction_psnr": summary(psnr(sources, data.images[index]))}
        print(f"edit {args.edit}: {len(index)} real images; their null-text sources at "
              f"{results['edit']['source_reconstruction_psnr']['mean']:.2f} dB")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        k = min(args.grid_columns, len(images))
        upscale = max(1, 64 // images.shape[-1])
        save_grid(torch.cat([images[:k], plain[w][:k], null_back[:k]]), args.out / "grid.png", nrow=k,
                  upscale=upscale)
        if edit_rows is not None:
            save_grid(edit_rows, args.out / "edit.png", nrow=len(edit_rows) // 3, upscale=upscale)
        (args.out / "results.json").write_text(json.dumps(
            {"checkpoint": args.checkpoint, "n": len(images), "steps": steps, "guidance_scale": w,
             "inner_steps": args.inner_steps, "template": args.template, "psnr_db": results,
             "seconds_per_image": per_image, "final_step_loss_mean": float(torch.cat(losses).mean())},
            indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
