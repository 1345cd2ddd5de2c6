"""A guidance weight per sampling step, screened by FID: a teacher or a guidance-distilled student.

The guidance interval of Kynkäänniemi et al. (2024) switches classifier-free guidance off at the
highest noise levels, where it pulls every sample of a class towards one template and costs
diversity, and keeps it where it sharpens the class. At a few steps each step is one noise level,
so the interval becomes one weight per step: step k of the sampler evaluates

    teacher:  D_k = D(x; ∅) + w_k · (D(x; c) − D(x; ∅))     (w_k = 1: the conditional pass alone)
    student:  D_k = G(x; c, w_k)                             (w is the student's input, Meng et al. 2023)

``--ws 1,2,2,2`` is a 4-step teacher unguided at its first level and guided at w = 2 after it,
what ``difflab sample --guidance-interval 0 SIGMA`` does with SIGMA between the first two levels
(for a student too: its w input is 1 outside the interval). A student is screened here inside its
trained w range, and its ``--ws`` replace any interval its refinement recorded.
Each schedule draws N samples (every class in turn, seeds SEED...) and scores them against the
first 2,000 Fashion-MNIST test images: Inception FID and KID, precision / recall (k = 3), the
independent classifier's class accuracy. A row a schedule is appended to OUT (JSON lines).

    python benchmarks/step_guidance.py --run runs/fm16-v-teacher10k --ws 2,2,2,2 1,2,2,2 1.5,2,2,2
    python benchmarks/step_guidance.py --run runs/t10k-adv-1k --student --ws 2,2,2,2 1.5,2,2,2
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from difflab.data import load_dataset, parse_spec
from difflab.data.dataset import ImageDataset
from difflab.metrics import EvalOptions, InceptionFeatures, Reference, evaluate, load_classifier
from difflab.pipelines import DiffusionModel, Guidance, generate
from difflab.pipelines.guidance_policy import guided_denoiser


class PerStepGuidance(torch.nn.Module):
    """The network with guidance weight ``ws[k]`` at its k-th call of an image batch (a sampler
    calls it once a step); for a teacher, classifier-free guidance with the null label
    ``num_classes``, for a student its ``guidance_scale`` input."""

    def __init__(self, net, ws: list[float], num_classes: int, student: bool):
        super().__init__()
        self.net, self.ws, self.num_classes, self.student = net, ws, num_classes, student
        self.calls = 0

    def forward(self, x, t, **cond):
        w = self.ws[self.calls % len(self.ws)]
        self.calls += 1
        if self.student:
            return self.net(x, t, **{**cond, "guidance_scale": torch.full_like(cond["guidance_scale"], w)})
        conditional = self.net(x, t, **cond)
        if w == 1.0:
            return conditional
        null = torch.full_like(cond["class_labels"], self.num_classes)
        unconditional = self.net(x, t, **{**cond, "class_labels": null})
        return unconditional + w * (conditional - unconditional)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a class-conditional teacher run, or a guidance-distilled student")
    p.add_argument("--student", action="store_true", help="RUN is a distilled student (w is its input)")
    p.add_argument("--method", default="unipc_3", help="the teacher's sampler (a student samples its own grid)")
    p.add_argument("--steps", type=int, default=4, help="the teacher's steps, trailing spacing")
    p.add_argument("--ws", nargs="+", required=True, metavar="W1,W2,...",
                   help="schedules to screen: one comma list of weights a schedule, one weight a step")
    p.add_argument("--n", type=int, default=2000, help="samples a schedule")
    p.add_argument("--seed", type=int, default=0, help="the first image's seed")
    p.add_argument("--ref", default="fashion-mnist:test", help="reference split NAME:SPLIT (its first 2,000 images)")
    p.add_argument("--classifier", default="runs/fashion-mnist-16-eval-classifier",
                   help="independent classifier for class accuracy ('' for none)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/step_guidance.jsonl"), help="JSON lines")
    return p.parse_args(argv)


def weight_schedules(specs: list[str]) -> list[list[float]]:
    """``--ws`` as lists of finite weights, or one line saying which one is not."""
    try:
        schedules = [[float(w) for w in spec.split(",")] for spec in specs]
    except ValueError:
        raise SystemExit(f"step_guidance: --ws takes comma lists of numbers, one a step (e.g. 1,2,2,2); "
                         f"got {' '.join(specs)}") from None
    if not all(math.isfinite(w) for ws in schedules for w in ws):
        raise SystemExit(f"step_guidance: the weights must be finite numbers, got {' '.join(specs)}")
    return schedules


def main(argv=None) -> int:
    args = parse_args(argv)
    schedules = weight_schedules(args.ws)
    try:
        model = DiffusionModel.load(args.run)
        if args.student != (model.record.distilled is not None):
            raise ValueError(f"{args.run} is {'not ' * args.student}a distilled run: "
                             f"{'drop' if args.student else 'add'} --student")
        if args.student:  # each weight inside the range the student was trained on (the sampling policy's check)
            for w in {w for ws in schedules for w in ws}:
                guided_denoiser(model, Guidance(scale=w), "ddim")
        classifier = load_classifier(args.classifier, "cpu") if args.classifier else None
        inception = InceptionFeatures(None, "cpu")
        name, split = parse_spec(args.ref, default_split="test")
        ref = load_dataset(name, split, resolution=model.image_shape[-1], channels=model.image_shape[0])
    except (OSError, ValueError) as error:
        raise SystemExit(f"step_guidance: {error}") from None
    reference = Reference(name=args.ref, dataset=ref.subset(slice(0, 2000)))
    network = model.network
    batches = -(-args.n // 500)
    for spec, ws in zip(args.ws, schedules):
        model.network = wrapper = PerStepGuidance(network, ws, model.num_classes, args.student)
        sampler = {} if args.student else {"method": args.method, "steps": args.steps, "spacing": "trailing"}
        guidance = Guidance(scale=2.0 if args.student else 1.0)  # a student's w is overridden a step at a time
        start = time.perf_counter()
        images, labels = generate(model, args.n, guidance=guidance, batch_size=500, seed=args.seed, **sampler)
        seconds = time.perf_counter() - start
        if wrapper.calls != batches * len(ws):
            raise SystemExit(f"step_guidance: {spec} has {len(ws)} weights, but the sampler called the network "
                             f"{wrapper.calls // batches} times a batch: give one weight a step")
        samples = ImageDataset(images=images, labels=labels, class_names=model.class_names, name=args.run)
        scores = evaluate(samples, reference, inception, classifier, EvalOptions())
        row = {"run": args.run, "ws": ws, "seed": args.seed, "n": args.n, "seconds": seconds,
               **{k: v for k, v in scores.items() if isinstance(v, (int, float))}}
        print(json.dumps(row), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
