"""Sampling throughput: difflab's samplers against diffusers' scheduler loops on the same network
architecture, batch and number of model calls, in one process.

    50-step DDIM (η = 0) and 10-step DPM-Solver++ 2M, DDPM's linear schedule, ε-prediction,
    under torch.inference_mode, bf16 autocast on CUDA.

Ours is ``difflab.sampling.sample`` on our network in the channels-last layout that
``DiffusionModel.load`` gives it (``difflab/device.py``); with ``--compile``, its denoiser's
whole tensor step compiled as ``difflab sample --compile`` does (``sampling/compiled.py``: CUDA
graphs on a GPU). Theirs is the loop of diffusers' pipelines (``scheduler.set_timesteps``,
``scale_model_input``, the model, ``scheduler.step``) on diffusers' network of the same
architecture (``throughput_cases.py``); with ``--compile``, the network compiled in the mode
diffusers' documentation suggests for inference (``reduce-overhead`` on a GPU). Sides alternate
in rounds; the best round counts.

    python benchmarks/sampling_throughput.py --case demo             # CPU, batch 16
    python benchmarks/sampling_throughput.py --case unet --device cuda --compile
"""

from __future__ import annotations

import argparse

import torch

from difflab.denoiser import Denoiser
from difflab.sampling import sample
from difflab.sampling.compiled import compile_denoiser, default_mode
from throughput_cases import add_common_arguments, call, machine, mean_seconds, parameters, setup, variants, versions

RUNS = {"ddim-50": ("ddim", "DDIMScheduler", 50), "dpmpp_2m-10": ("dpmpp_2m", "DPMSolverMultistepScheduler", 10)}


class Sampler:
    def __init__(self, side: str, case, device, batch: int, run: str, compile_model: bool,
                 ours_channels_last: bool = True):
        from difflab.device import bf16_autocast, memory_format
        from difflab.schedules import linear

        torch.manual_seed(0)
        self.side, self.case, self.device = side, case, device
        self.method, scheduler_name, self.steps = RUNS[run]
        model = (case.ours if side == "ours" else case.theirs)().to(device).eval()
        self.params = parameters(model)
        self.schedule = linear()
        if side == "ours":  # channels-last as DiffusionModel.load prepares a network for sampling
            denoiser = Denoiser(memory_format(model, ours_channels_last), self.schedule,
                                learned_variance=case.learned_sigma)
            self.net = compile_denoiser(denoiser) if compile_model else denoiser
        else:  # --compile: the network, in the mode diffusers' docs give for inference
            self.net = torch.compile(model, mode=default_mode(device)) if compile_model else model
        self.autocast = bf16_autocast(device, on_gpu=True)  # float32 on CPU
        g = torch.Generator().manual_seed(1)
        self.noise = torch.randn(batch, *case.shape, generator=g).to(device)
        self.labels = torch.randint(0, case.num_classes, (batch,), generator=g).to(device) if case.num_classes else None
        if side == "theirs":
            import diffusers

            cls = getattr(diffusers, scheduler_name)
            options = {"solver_order": 2} if self.method == "dpmpp_2m" else {}
            self.scheduler = cls(num_train_timesteps=1000, **options)

    @torch.inference_mode()
    def __call__(self) -> torch.Tensor:
        with self.autocast:
            if self.side == "ours":
                return self._ours()
            return self._theirs()

    def _ours(self):
        cond = {"class_labels": self.labels} if self.labels is not None else None
        return sample(self.net, self.noise, method=self.method, steps=self.steps,
                      spacing="leading" if self.method == "ddim" else "trailing", cond=cond)

    def _theirs(self):
        sched = self.scheduler
        sched.set_timesteps(self.steps, device=self.device)
        x = self.noise * sched.init_noise_sigma
        for t in sched.timesteps:
            out = call("theirs", self.net, sched.scale_model_input(x, t), t, self.labels)
            x = sched.step(out, t, x).prev_sample
        return x


def rate(images_per_second: float) -> str:
    """Images/s with three significant digits at least (the CPU's large cases run below 1 img/s)."""
    return f"{images_per_second:,.1f}" if images_per_second >= 100 else f"{images_per_second:.3g}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Sampling images/s of difflab vs diffusers at the same architecture.")
    add_common_arguments(p)
    p.add_argument("--runs", default="ddim-50,dpmpp_2m-10", help=f"comma-separated, from {', '.join(RUNS)}")
    p.add_argument("--repeat", type=int, default=2, help="timed sampler calls per round")
    args = p.parse_args(argv)
    device, case, batch = setup(args, "sample_batch")
    where = machine(device)
    print(f"{case.name}: batch {batch}, {device} ({where}), {'compiled' if args.compile else 'eager'}"
          f"{variants(args)}, {versions()}")
    print(f"{'run':<12} {'difflab img/s':>14} {'diffusers img/s':>16} {'ratio':>6}")
    for run in args.runs.split(","):
        samplers = {side: Sampler(side, case, device, batch, run, args.compile, not args.ours_contiguous)
                    for side in ("ours", "theirs")}
        for s in samplers.values():
            s()  # warm-up (and compilation)
        best = {side: float("inf") for side in samplers}
        for _ in range(args.rounds):
            for side, s in samplers.items():
                best[side] = min(best[side], mean_seconds(s, device, args.repeat))
        ours, theirs = batch / best["ours"], batch / best["theirs"]
        print(f"{run:<12} {rate(ours):>14} {rate(theirs):>16} {ours / theirs:>5.2f}x")


if __name__ == "__main__":
    main()
