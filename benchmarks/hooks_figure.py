"""The generation hooks on a trained model, as one picture (docs/sampling.md, "Hooks").

Rows, for the first test images of the model's dataset:

1. the images;
2. DDIM inversion to noise, then DDIM back from that noise (``invert`` + ``generate(noise=...)``);
3. the left half kept through the per-step callback (inpainting's blend), the right half sampled
   for the image's own class;
4. img2img from the images at strength 0.5 (``x_start`` + ``strength``) for the next class.

    python benchmarks/hooks_figure.py runs/demo-digits --out docs/hooks.png
"""

from __future__ import annotations

import argparse

import torch

from difflab.data import load_dataset, to_float
from difflab.images import save_grid
from difflab.pipelines import DiffusionModel, Guidance, SamplerSettings, plan, run
from difflab.sampling import invert


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a pixel-space class-conditional run (e.g. runs/demo-digits)")
    parser.add_argument("--n", type=int, default=10, help="images per row")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps of the inversion round trip")
    parser.add_argument("--out", default="docs/hooks.png")
    args = parser.parse_args()

    model = DiffusionModel.load(args.run)
    dataset_name = model.record.train_config["data"]["dataset"]
    test = load_dataset(dataset_name, "test", model.image_shape[-1], model.image_shape[0])
    images, labels = test.images[: args.n], test.labels[: args.n]
    x0 = to_float(images)
    unguided = Guidance(scale=1.0)

    def job(method, steps, class_of, **options):
        settings = SamplerSettings.resolve(model, method, steps, **options)
        jobs = [plan(model, 1, settings, seed=i, class_index=int(class_of[i]), guidance=unguided)
                for i in range(args.n)]
        return jobs

    # 2. inversion round trip (per image: its own class)
    rows = [images]
    back = []
    for i, one in enumerate(job("ddim", args.steps, labels)):
        noise = invert(one.denoiser, x0[i : i + 1], steps=args.steps, spacing=one.settings.spacing, cond=one.cond([0]))
        back.append(run(one, noise=noise).images)
    rows.append(torch.cat(back))

    # 3. inpainting's blend through the callback: the left half known
    mask = torch.zeros(1, *model.image_shape)
    mask[..., : model.image_shape[-1] // 2] = 1
    painted = []
    for i, one in enumerate(job("unipc_3", 20, labels)):
        known = x0[i : i + 1]
        generator = torch.Generator().manual_seed(i)

        def blend(step, known=known, generator=generator):
            noised = known + step.sigma_next * torch.randn(known.shape, generator=generator)
            return mask * noised + (1 - mask) * step.x

        painted.append(run(one, callback=blend).images)
    rows.append(torch.cat(painted))

    # 4. img2img at strength 0.5 towards the next class
    rows.append(torch.cat([run(one, x_start=x0[i : i + 1], strength=0.5).images
                           for i, one in enumerate(job("unipc_3", 20, (labels + 1) % model.num_classes))]))
    grid = torch.cat(rows)
    path = save_grid(grid, args.out, nrow=args.n, upscale=max(1, 64 // model.image_shape[-1]))
    print(f"rows: images | DDIM inversion and back ({args.steps} steps) | left half kept, right sampled | "
          f"img2img 0.5 to the next class; written to {path}")


if __name__ == "__main__":
    main()
