"""A difflab run exported to diffusers samples the same images in both libraries (docs/interop.md).

    python benchmarks/interop_equivalence.py --run runs/fashion-mnist-16-cfg

Exports the run (``difflab export``), loads the folder with diffusers' own ``UNet2DModel`` and
``DDIMScheduler``, and samples one image per class from the same noise in both libraries, neither
clipping x̂₀ (the libraries clip differently: difflab's DDIM takes ε from the clipped x̂₀, diffusers'
``clip_sample`` keeps the network's ε, so with clipping the two walks part wherever it acts):
difflab's DDIM with classifier-free guidance at the run's default scale, and diffusers' DDIM loop
with the same guidance written out (conditional and null-label passes in one batch, as
``DiTPipeline`` does). Prints the largest pixel difference and both sampling times (their ratio);
writes a picture: difflab's row, diffusers' row and their difference ×100.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def diffusers_ddim(unet, scheduler, noise: torch.Tensor, labels: torch.Tensor, null: int, scale: float,
                   steps: int) -> torch.Tensor:
    """diffusers' DDIM with classifier-free guidance on a class-conditional UNet2DModel."""
    scheduler.set_timesteps(steps)
    x = noise * scheduler.init_noise_sigma
    both = torch.cat([labels, torch.full_like(labels, null)])
    for t in scheduler.timesteps:
        out = unet(torch.cat([x, x]), t, class_labels=both).sample
        cond, uncond = out.chunk(2)
        x = scheduler.step(uncond + scale * (cond - uncond), t, x).prev_sample
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/fashion-mnist-16-cfg", help="a class-conditional pixel U-Net run")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spacing", default="leading",
                        help="DDIM's timesteps in both libraries. 'trailing' starts at t = 999, where the cosine "
                             "schedule's alpha_bar is 2.4e-9: x0 = (x - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar) "
                             "then amplifies float32 rounding 2e4 times, and the two libraries part in the first step")
    parser.add_argument("--out", default="docs/interop_equivalence.png")
    args = parser.parse_args()
    torch.set_num_threads(1)

    import functools

    import diffusers

    from difflab.interop.exporter import export_diffusers
    from difflab.pipelines.generate import SamplerSettings, plan
    from difflab.pipelines.guidance_policy import Guidance
    from difflab.pipelines.loading import DiffusionModel
    from difflab.sampling import sample

    model = DiffusionModel.load(args.run)
    model.denoiser = functools.partial(DiffusionModel.denoiser, model, None)  # no x̂₀ clipping (see the docstring)
    n, scale = model.num_classes, float(model.record.sample_defaults.get("guidance_scale", 3.0))
    with tempfile.TemporaryDirectory() as folder:
        export_diffusers(args.run, folder)
        unet = diffusers.UNet2DModel.from_pretrained(Path(folder) / "unet").eval()
        scheduler = diffusers.DDIMScheduler.from_pretrained(Path(folder) / "scheduler", timestep_spacing=args.spacing,
                                                       clip_sample=False)
    labels = torch.arange(n)
    noise = torch.randn(n, *model.image_shape, generator=torch.Generator().manual_seed(args.seed))
    settings = SamplerSettings.resolve(model, "ddim", args.steps, args.spacing, None)
    job = plan(model, n, settings, class_index=None, guidance=Guidance(scale=scale))
    with torch.no_grad():
        start = time.perf_counter()
        ours = sample(job.denoiser, noise, sigmas=settings.walk(model), method="ddim", cond=job.cond(list(range(n))))
        ours_s = time.perf_counter() - start
        start = time.perf_counter()
        theirs = diffusers_ddim(unet, scheduler, noise, labels, n, scale, args.steps)
        theirs_s = time.perf_counter() - start
    diff = (ours - theirs).abs()
    print(f"{args.run}: {n} images, DDIM {args.steps} steps ({args.spacing}), CFG {scale:g}")
    print(f"max |difflab - diffusers| = {diff.max():.2e} (pixels in [-1, 1]); mean {diff.mean():.2e}")
    print(f"sampling time: difflab {ours_s:.2f} s, diffusers {theirs_s:.2f} s, ratio {theirs_s / ours_s:.2f}x")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("difflab", ours), ("diffusers (exported)", theirs), ("|difference| ×100", diff * 100 - 1)]
    fig, axes = plt.subplots(3, n, figsize=(n * 0.9, 3.2))
    for r, (title, images) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(((images[c, 0] + 1) / 2).clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(title, fontsize=6, rotation=0, ha="right", va="center")
            if r == 0:
                ax.set_title(model.class_names[c], fontsize=6)
    fig.suptitle(f"{Path(args.run).name} exported to diffusers: DDIM {args.steps} steps, CFG {scale:g}, same noise "
                 f"(max difference {diff.max():.1e})", fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=150)
    print(f"picture: {args.out}")


if __name__ == "__main__":
    main()
