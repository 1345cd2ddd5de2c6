"""Sampling time of trained checkpoints in float32 and under bf16 autocast (``--precision``), the
two alternating in one process, and how far their uint8 images differ.

    python benchmarks/sampling_precision.py runs/emoji-latent-text-64-cpu:16 runs/dit-fashion-mnist-16-cpu:64 \
        runs/demo-digits:64 --prompt "a red heart"

Each argument is CHECKPOINT:N (N images, one batch, the checkpoint's sampler settings). Best of
``--rounds`` for each precision; the device is the CPU unless ``--device`` says otherwise.
"""

from __future__ import annotations

import argparse
import time

import torch

from difflab.pipelines import DiffusionModel, generate


def compare(path: str, n: int, rounds: int, device: str, prompt: str) -> str:
    model = DiffusionModel.load(path, device=device)
    options = {"prompts": [prompt]} if model.text_encoder else {}
    seconds, images = {"float32": [], "bf16": []}, {}
    for _ in range(rounds):
        for precision in seconds:
            start = time.perf_counter()
            images[precision], _ = generate(model, n, batch_size=n, precision=precision, **options)
            seconds[precision].append(time.perf_counter() - start)
    difference = (images["bf16"].float() - images["float32"].float()).abs()
    f32, b16 = min(seconds["float32"]), min(seconds["bf16"])
    return (f"{path:<40} {n:>4} {f32:>8.2f}s {b16:>7.2f}s {f32 / b16:>5.2f}x "
            f"{difference.mean().item():>6.2f} {difference.max().item():>4.0f}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="CHECKPOINT:N", help="checkpoint and number of images")
    p.add_argument("--rounds", type=int, default=3, help="rounds, alternating the precisions; the best counts")
    p.add_argument("--device", default="cpu")
    p.add_argument("--prompt", default="a red heart", help="the prompt of text-conditioned checkpoints")
    args = p.parse_args(argv)
    print(f"torch {torch.__version__}, {args.device} ({torch.get_num_threads()} threads)")
    print(f"{'checkpoint':<40} {'n':>4} {'float32':>9} {'bf16':>8} {'x':>6} {'|diff| mean':>6} {'max':>4}")
    for run in args.runs:
        path, _, n = run.rpartition(":")
        print(compare(path, int(n), args.rounds, args.device, args.prompt))


if __name__ == "__main__":
    main()
