"""Upsampling as one transposed convolution (difflab.nn.upsample) against the plain formulation
(nearest 2×, then the 3×3 convolution), on one layer and on whole networks, in one process.

    python benchmarks/upsampling_ab.py --layers              # one layer, forward + backward and inference
    python benchmarks/upsampling_ab.py --networks demo unet autoencoder

Layers: best of 5 rounds of 30 calls each, channels-last. Networks: the two formulations
alternate call by call (a training step, a sampler run, a decode) and the medians count, so a
noisy machine slows both alike. The networks are the throughput benchmarks' demo and CIFAR-10
U-Net cases (training batch 128 and 16, DPM-Solver++ 10 steps at batch 16) and the KL
autoencoder of configs/autoencoder-kl-emoji64-cpu.yaml (a training step on 32 random 32×32
crops, decoding 16 latents to 64×64).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from difflab.nn.upsample import tap_matrix, upsample_conv3x3
from throughput_cases import CASES, plain_upsample_conv3x3, set_upsampling

LAYER_SHAPES = ((128, 64, 4), (128, 32, 8), (16, 256, 16), (16, 128, 32), (16, 64, 4))  # (N, C, H) of the input


def best_ms(fn, calls: int = 30, rounds: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e3


def time_layer(layer, x, conv, taps, grad_out=None) -> float:
    """Best milliseconds of one upsample-and-convolve: forward and backward with ``grad_out``,
    else forward under inference mode."""
    if grad_out is not None:
        return best_ms(lambda: layer(x, conv, taps).backward(grad_out))
    with torch.inference_mode():
        return best_ms(lambda: layer(x, conv, taps))


def layers() -> None:
    print(f"{'input N, C, H':<16} {'train plain':>12} {'transposed':>11} {'x':>6} "
          f"{'infer plain':>12} {'transposed':>11} {'x':>6}")
    taps = tap_matrix()
    for n, c, h in LAYER_SHAPES:
        conv = torch.nn.Conv2d(c, c, 3, padding=1).to(memory_format=torch.channels_last)
        x = torch.randn(n, c, h, h).to(memory_format=torch.channels_last).requires_grad_()
        g = torch.randn(n, c, 2 * h, 2 * h).to(memory_format=torch.channels_last)
        times = [time_layer(layer, x, conv, taps, g if grad else None)
                 for grad in (True, False) for layer in (plain_upsample_conv3x3, upsample_conv3x3)]
        print(f"{f'{n}, {c}, {h}':<16} {times[0]:>10.2f}ms {times[1]:>9.2f}ms {times[0] / times[1]:>5.2f}x "
              f"{times[2]:>10.2f}ms {times[3]:>9.2f}ms {times[2] / times[3]:>5.2f}x")


def autoencoder_work():
    from difflab.models.autoencoder import AutoencoderConfig, AutoencoderKL

    torch.manual_seed(0)
    model = AutoencoderKL(AutoencoderConfig(image_size=64, channel_mult=(1, 2, 4), model_channels=32,
                                            num_res_blocks=1, z_channels=3)).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), fused=True)
    x = torch.randn(32, 3, 32, 32).to(memory_format=torch.channels_last)
    z = torch.randn(16, 3, 16, 16).to(memory_format=torch.channels_last)

    def train():
        F.l1_loss(model.decode(model.encode(x).sample()), x).backward()
        opt.step()
        opt.zero_grad()

    @torch.inference_mode()
    def decode():
        model.decode(z)

    return {"training step, batch 32 of 32x32 crops": (train, 30), "decoding 16 latents to 64x64": (decode, 30)}


def unet_work(name: str):
    from sampling_throughput import Sampler
    from train_throughput import TrainStep

    case, device = CASES[name], torch.device("cpu")
    calls = {"demo": (60, 30), "unet": (20, 4)}[name]
    batch = case.train_batch["cpu"]
    return {f"training step, batch {batch}": (TrainStep("ours", case, device, batch, False, False), calls[0]),
            "DPM-Solver++ 10 steps, batch 16": (Sampler("ours", case, device, 16, "dpmpp_2m-10", False), calls[1])}


def networks(names: list[str]) -> None:
    print(f"{'network, work':<58} {'plain':>10} {'transposed':>11} {'x':>6}")
    for name in names:
        work = autoencoder_work() if name == "autoencoder" else unet_work(name)
        for what, (fn, calls) in work.items():
            times = {True: [], False: []}
            for _ in range(calls):
                for plain in (True, False):
                    set_upsampling(plain)
                    start = time.perf_counter()
                    fn()
                    times[plain].append(time.perf_counter() - start)
            set_upsampling(plain=False)
            plain_ms, ours_ms = (statistics.median(times[p][2:]) * 1e3 for p in (True, False))
            print(f"{f'{name}, {what}':<58} {plain_ms:>8.1f}ms {ours_ms:>9.1f}ms {plain_ms / ours_ms:>5.2f}x")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", action="store_true", help="time one layer at the shapes of LAYER_SHAPES")
    p.add_argument("--networks", nargs="*", choices=["demo", "unet", "autoencoder"], default=[],
                   help="time whole networks, the formulations alternating")
    args = p.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    if args.layers:
        layers()
    if args.networks:
        networks(args.networks)


if __name__ == "__main__":
    main()
