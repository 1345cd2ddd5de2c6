"""Training throughput: difflab against diffusers at the same architecture and batch, in one process.

Both sides run the same step — ε-prediction MSE at uniform random t of DDPM's linear schedule,
backward, gradient clipping at 1, AdamW — on a fixed random batch already on the device (data
loading is not timed), with bf16 autocast on CUDA (and on CPU with ``--bf16-cpu``, as
``train.bf16_cpu`` does). Ours goes through
``difflab.losses.diffusion_loss`` with the trainer's fast paths (``training/fast_paths.py``:
fused AdamW on CPU and CUDA, multi-tensor gradient clipping, channels-last); theirs through
``DDPMScheduler.add_noise`` with AdamW as diffusers' training examples create it (fused on CUDA,
where we turn it on for them; torch's default on CPU) and the default memory format
(``--channels-last`` gives it to them too). Each side is
timed after warm-up steps (which include compilation), and the two alternate in rounds so a
noisy machine hits both alike; the best round counts.

    python benchmarks/train_throughput.py --case demo                 # CPU: the demo's U-Net
    python benchmarks/train_throughput.py --case unet --device cuda --compile
    python benchmarks/train_throughput.py --case dit --device cuda --compile

Prints images/s, model FLOPs utilisation, peak memory, and ours / diffusers. MFU is the model's
FLOPs per step over the GPU's dense bf16 peak, the model's FLOPs being diffusers' count from
``torch.utils.flop_counter`` for both sides: ours runs each upsampling layer as a transposed
convolution with 2.25× fewer FLOPs (``difflab.nn.upsample``), so its own count (also printed) is
lower for the same function, and MFU on a common count keeps MFU's ratio equal to the speed ratio.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from difflab.losses import diffusion_loss
from difflab.training.fast_paths import clip_gradients
from throughput_cases import (
    add_common_arguments,
    call,
    machine,
    mean_seconds,
    parameters,
    peak_flops,
    setup,
    variants,
    versions,
)


class TrainStep:
    """One optimisation step of one side; ``__call__`` runs it."""

    def __init__(self, side: str, case, device, batch: int, compile_model: bool, channels_last: bool,
                 bf16_cpu: bool = False, ours_channels_last: bool = True):
        from difflab.device import bf16_autocast, memory_format
        from difflab.schedules import linear
        from difflab.training.config import TrainConfig
        from difflab.training.fast_paths import make_optimizer

        torch.manual_seed(0)
        self.side, self.device, self.learned_sigma = side, device, case.learned_sigma
        model = (case.ours if side == "ours" else case.theirs)().to(device)
        self.params = parameters(model)
        if side == "ours":  # what `difflab train` does with its defaults
            model = memory_format(model, TrainConfig().channels_last and ours_channels_last)
            self.opt = make_optimizer(model.parameters(), device, lr=1e-4)
        else:
            model = memory_format(model, channels_last)
            self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
        self.model = model
        self.net = torch.compile(model) if compile_model else model
        self.autocast = bf16_autocast(device, on_gpu=True, on_cpu=bf16_cpu)  # the same for both sides
        g = torch.Generator().manual_seed(1)
        self.x0 = (torch.rand(batch, *case.shape, generator=g) * 2 - 1).to(device)
        self.labels = torch.randint(0, case.num_classes, (batch,), generator=g).to(device) if case.num_classes else None
        self.schedule = linear()
        if side == "theirs":
            from diffusers import DDPMScheduler

            self.scheduler = DDPMScheduler(num_train_timesteps=1000)
            self.scheduler.alphas_cumprod = self.scheduler.alphas_cumprod.to(device)

    def loss(self, net):
        if self.side == "ours":
            cond = {"class_labels": self.labels} if self.labels is not None else None
            # learned sigma: improved DDPM's hybrid loss, as the trainer runs it (a little more
            # work than diffusers' side, which takes the MSE of the ε half only)
            return diffusion_loss(net, self.x0, self.schedule, cond=cond, learned_variance=self.learned_sigma).loss
        n = self.x0.shape[0]
        t = torch.randint(0, 1000, (n,), device=self.device)
        noise = torch.randn_like(self.x0)
        x_t = self.scheduler.add_noise(self.x0, noise, t)
        return F.mse_loss(call("theirs", net, x_t, t, self.labels).float(), noise)

    def __call__(self):
        with self.autocast:
            loss = self.loss(self.net)
        loss.backward()
        if self.side == "ours":
            clip_gradients(self.model.parameters(), 1.0)
        else:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def flops(self) -> int:
        """FLOPs of one forward + backward of the eager model (the optimizer is not counted)."""
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            with self.autocast:
                loss = self.loss(self.model)
            loss.backward()
        self.opt.zero_grad(set_to_none=True)
        return counter.get_total_flops()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Training images/s of difflab vs diffusers at the same architecture.")
    add_common_arguments(p)
    p.add_argument("--steps", type=int, default=20, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    p.add_argument("--channels-last", action="store_true",
                   help="channels-last memory format for diffusers' model too "
                        "(ours always uses it, as the trainer does)")
    p.add_argument("--bf16-cpu", action="store_true", help="bf16 autocast on CPU for both sides (train.bf16_cpu)")
    args = p.parse_args(argv)
    device, case, batch = setup(args, "train_batch")

    steps = {side: TrainStep(side, case, device, batch, args.compile, args.channels_last, args.bf16_cpu,
                             ours_channels_last=not args.ours_contiguous)
             for side in ("ours", "theirs")}
    flops = {side: s.flops() for side, s in steps.items()}
    for s in steps.values():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        mean_seconds(s, device, args.warmup)
    best = {side: float("inf") for side in steps}
    memory = {}
    for _ in range(args.rounds):
        for side, s in steps.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            best[side] = min(best[side], mean_seconds(s, device, args.steps))
            memory[side] = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None

    peak = peak_flops(device)
    mode = "compiled" if args.compile else "eager"
    print(f"{case.name}: batch {batch}, {device} ({machine(device)}), "
          f"{mode}{', diffusers channels-last' if args.channels_last else ''}"
          f"{', bf16 autocast' if device.type == 'cuda' or args.bf16_cpu else ''}{variants(args)}, {versions()}")
    print(f"{'side':<10} {'params':>8} {'img/s':>9} {'ms/step':>8} {'GFLOP/step':>11} {'MFU':>6} {'peak mem':>9}")
    for side, s in steps.items():
        ips = batch / best[side]
        mfu = f"{flops['theirs'] / best[side] / peak:.1%}" if peak else "-"  # the model's FLOPs: diffusers' count
        mem = f"{memory[side]:.2f} GiB" if memory[side] is not None else "-"
        name = "difflab" if side == "ours" else "diffusers"
        print(f"{name:<10} {s.params:>7.2f}M {ips:>9.1f} {best[side] * 1e3:>8.1f} {flops[side] / 1e9:>11.1f} "
              f"{mfu:>6} {mem:>9}")
    print(f"ours / diffusers: {best['theirs'] / best['ours']:.2f}x images/s")


if __name__ == "__main__":
    main()
