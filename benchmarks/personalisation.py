"""Personalisation on 2 CPU cores: textual inversion, LoRA and DreamBooth teach a Fashion-MNIST
16×16 text model that never saw an ankle boot the subject of five ankle-boot pictures.

The base (``configs/fashion-mnist-16-text-no-boot.yaml``) is trained on every class but "Ankle
boot". Five fixed training ankle boots (the first five of the train split) are the subject, under
"a photo of a sks boot" (the new word ``sks`` for textual inversion). Each method trains for at
most ``--budget`` seconds (LoRA and DreamBooth also at most 2,000 steps); then, every sample at
the CFG scale ``--guidance-scale`` (default 7.5, diffusers' ``StableDiffusionPipeline`` default;
the Fashion-MNIST configs sample at 3), with the independent Fashion-MNIST classifier:

* **subject accuracy**: the fraction of ``--n`` samples of the personalised prompt classified as
  an ankle boot (the base's own figure for the same prompt beside it);
* **prior drift**: the class accuracy of "a photo of a CLASS" for every other class, before and
  after (DreamBooth with and without prior preservation);
* **copying**: the fraction of samples whose nearest of the five pictures is within RMSE 0.1
  (on [0, 1] pixels), DreamBooth's known failure.

    python benchmarks/personalisation.py --base runs/fashion-mnist-16-text-no-boot \\
        --classifier runs/fashion-mnist-16-eval-classifier \\
        --out benchmarks/results/personalisation_attn16_cfg7.5
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from difflab.data import load_dataset
from difflab.data.captions import TEMPLATES, with_article
from difflab.images import save_grid, save_images
from difflab.metrics import load_classifier
from difflab.pipelines import DiffusionModel, generate
from difflab.pipelines.embeddings import add_embedding
from difflab.pipelines.guidance_policy import Guidance
from difflab.pipelines.lora import add_lora
from difflab.training.config import load_config
from difflab.training.objectives import (
    DreamBoothLoraObjective,
    DreamBoothObjective,
    LoraObjective,
    TextualInversionObjective,
)
from difflab.training.trainer import train

SUBJECT = "Ankle boot"
PROMPT = "a photo of a sks boot"
CLASS_PROMPT = "a photo of a boot"
COMMON = ["data.resolution=16", "data.channels=1", "optim.batch_size=5", "optim.warmup_steps=0", "train.steps=2000",
          "train.log_every=50", "train.sample_every=0", "train.checkpoint_every=100000", "train.ema_decay=0.99"]
METHODS = {  # name: objective, its settings (learning rates chosen for this model size; docs/personalisation.md)
    "textual_inversion": (TextualInversionObjective, ["embedding.prompt=a photo of a sks boot", "embedding.word=sks",
                                                       "embedding.initializer=sneaker", "embedding.num_vectors=9",
                                                       "optim.lr=2e-2", "train.steps=100000"]),
    "lora": (LoraObjective, ["lora.prompt=a photo of a sks boot", "lora.rank=4", "optim.lr=1e-3"]),
    "dreambooth_prior": (DreamBoothObjective, ["dreambooth.instance_prompt=a photo of a sks boot",
                                               f"dreambooth.class_prompt={CLASS_PROMPT}",
                                               "dreambooth.prior_images=200", "optim.lr=1e-4"]),
    "dreambooth": (DreamBoothObjective, ["dreambooth.instance_prompt=a photo of a sks boot", "optim.lr=1e-4"]),
    "lora_prior": (DreamBoothLoraObjective, ["dreambooth.instance_prompt=a photo of a sks boot",
                                             f"dreambooth.class_prompt={CLASS_PROMPT}", "dreambooth.prior_images=200",
                                             "lora.rank=4", "optim.lr=1e-3"]),
}
SECTION = {"textual_inversion": "embedding", "lora": "lora", "dreambooth_prior": "dreambooth",
           "dreambooth": "dreambooth", "lora_prior": "dreambooth"}


def subject_pictures(folder: Path) -> torch.Tensor:
    """The five fixed subject pictures (the first training ankle boots), written to ``folder``."""
    data = load_dataset("fashion-mnist", "train")
    index = data.class_names.index(SUBJECT)
    images = data.images[data.labels == index][:5]
    save_images(images, folder, names=[f"boot-{i}.png" for i in range(5)])
    return images


def train_method(name: str, base: str, pictures: Path, out: Path, budget: float, steps: int | None,
                 overrides: list[str]) -> float:
    objective, settings = METHODS[name]
    where = [f"{SECTION[name]}.base={base}", f"data.dataset={pictures}", f"train.out_dir={out}",
             f"train.max_seconds={budget}", *([f"train.steps={steps}"] if steps else [])]
    config = load_config(None, COMMON + settings + overrides + where)
    start = time.perf_counter()
    train(config, progress=False, objective=objective)
    return time.perf_counter() - start


def personalised(name: str, base: str, run: Path) -> DiffusionModel:
    if name.startswith("dreambooth"):
        return DiffusionModel.load(run)
    model = DiffusionModel.load(base)
    if name.startswith("lora"):
        add_lora(model, run)
    else:
        add_embedding(model, run)
    return model


def trainable_share(name: str, base: str, run: Path) -> dict:
    """The trained parameters' count and share of the base's."""
    model = DiffusionModel.load(base)
    total = sum(p.numel() for p in model.network.parameters())
    if name.startswith("lora"):
        trained = add_lora(model, run).num_parameters()
    elif name == "textual_inversion":
        trained = sum(loaded.token.vectors.numel() for loaded in add_embedding(model, run))
    else:
        trained = total
    return {"trained_parameters": trained, "trained_share": trained / total}


def evaluate(model, classifier, subject: torch.Tensor, n: int, n_per_class: int, guidance: Guidance | None) -> dict:
    names = classifier.class_names
    target = names.index(SUBJECT)
    images, _ = generate(model, n, seeds=list(range(n)), prompts=[PROMPT], guidance=guidance)
    subject_accuracy = float((classifier.probabilities(images).argmax(1) == target).float().mean())
    small = torch.nn.functional.interpolate(subject.float(), size=images.shape[-2:], mode="area") / 255
    distance = torch.cdist((images.float() / 255).flatten(1), small.flatten(1)).min(1).values
    rmse = distance / images[0].numel() ** 0.5
    classes = {}
    for index, class_name in enumerate(names):
        if index == target:
            continue
        prompt = TEMPLATES[0].format(with_article(class_name.lower()))
        drawn, _ = generate(model, n_per_class, seeds=list(range(5000 + 100 * index, 5000 + 100 * index + n_per_class)),
                            prompts=[prompt], guidance=guidance)
        classes[class_name] = float((classifier.probabilities(drawn).argmax(1) == index).float().mean())
    return {"subject_accuracy": subject_accuracy, "copy_fraction": float((rmse < 0.1).float().mean()),
            "mean_nn_rmse": float(rmse.mean()), "class_accuracy": classes,
            "mean_class_accuracy": sum(classes.values()) / len(classes), "samples": images[:16]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--base", default="runs/fashion-mnist-16-text-no-boot")
    p.add_argument("--classifier", default="runs/fashion-mnist-16-eval-classifier")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--budget", type=float, default=600, help="seconds of training per method")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting of every method's config (e.g. optim.lr=2e-2 for one method)")
    p.add_argument("--steps", type=int, help="steps per method at most (default: 2,000; textual inversion: "
                   "as many as --budget allows)")
    p.add_argument("--guidance-scale", type=float, default=7.5,
                   help="CFG scale of every sample (diffusers' StableDiffusionPipeline default; 0: the base's own)")
    p.add_argument("--n", type=int, default=200, help="samples of the personalised prompt")
    p.add_argument("--n-per-class", type=int, default=100, help="samples per other class (prior drift)")
    p.add_argument("--runs", type=Path, default=Path("runs/personalisation"), help="where the runs go")
    p.add_argument("--skip-training", action="store_true", help="evaluate runs already in --runs")
    p.add_argument("--out", type=Path, help="write results.json and grid.png here")
    args = p.parse_args(argv)

    classifier = load_classifier(args.classifier)
    subject = subject_pictures(args.runs / "subject")
    results, grid = {}, []
    guidance = Guidance(scale=args.guidance_scale) if args.guidance_scale else None
    base_scores = evaluate(DiffusionModel.load(args.base), classifier, subject, args.n, args.n_per_class, guidance)
    results["base"] = {k: v for k, v in base_scores.items() if k != "samples"}
    grid.append(base_scores["samples"][:5])
    print(f"base: subject accuracy {base_scores['subject_accuracy']:.3f}, mean class accuracy "
          f"{base_scores['mean_class_accuracy']:.3f}", flush=True)
    for name in args.methods:
        run = args.runs / name
        seconds = None if args.skip_training else train_method(name, args.base, args.runs / "subject", run,
                                                               args.budget, args.steps, args.overrides)
        scores = evaluate(personalised(name, args.base, run), classifier, subject, args.n, args.n_per_class, guidance)
        before = results["base"]["class_accuracy"]
        drift = {c: accuracy - before[c] for c, accuracy in scores["class_accuracy"].items()}
        results[name] = {**{k: v for k, v in scores.items() if k != "samples"}, "train_seconds": seconds,
                         "drift": drift, "worst_drift": min(drift.values()), **trainable_share(name, args.base, run)}
        grid.append(scores["samples"][:5])
        print(f"{name}: subject accuracy {scores['subject_accuracy']:.3f}, worst class drift "
              f"{100 * min(drift.values()):+.1f} points, copies {scores['copy_fraction']:.3f}, trained "
              f"{seconds or 0:.0f} s", flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        subject_small = torch.nn.functional.interpolate(subject.float(), size=grid[0].shape[-2:], mode="area")
        # rows: the five subject pictures, the base's "a photo of a sks boot", then each method's
        save_grid(torch.cat([subject_small.round().to(torch.uint8), *grid]), args.out / "grid.png", nrow=5,
                  upscale=4)
        (args.out / "results.json").write_text(json.dumps({"prompt": PROMPT, "methods": args.methods,
                                                           "budget": args.budget, "guidance_scale": args.guidance_scale,
                                                           **results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
