"""The networks the throughput benchmarks compare: each case builds difflab's model and diffusers'
model of the same architecture (widths, blocks, attention, conditioning), and says how to call
each. Shared by ``train_throughput.py`` and ``sampling_throughput.py``.

    demo   the CPU demo's U-Net (configs/demo-digits.yaml): 8x8x1, widths 32-64, one residual
           block per level, attention at 4x4 with 2 heads, AdaGN, 10 classes
    unet   DDPM's CIFAR-10 U-Net (Ho et al. 2020): 32x32x3, widths 128-256-256-256, two blocks
           per level, attention at 16x16, one head, dropout 0.1 (diffusers: google/ddpm-cifar10-32)
    dit    DiT-B/2 (Peebles & Xie 2023) on 32x32x4 latents, 1,000 classes, learned sigma
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# difflab's way, kept for set_upsampling
from difflab.nn.upsample import upsample_conv3x3 as TRANSPOSED_UPSAMPLE_CONV3X3

# Dense bf16 peak of the GPUs we run on (tensor cores, no sparsity), for MFU.
PEAK_BF16_FLOPS = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}


@dataclass
class Case:
    name: str
    shape: tuple[int, int, int]  # C, H, W of one sample
    num_classes: int  # 0 = unconditional
    train_batch: dict  # device type → batch
    sample_batch: dict
    ours: Callable[[], torch.nn.Module]
    theirs: Callable[[], torch.nn.Module]
    learned_sigma: bool = False


def _ours_unet(preset: str, **kw):
    from difflab.models.unet import PRESETS, UNet

    return UNet(PRESETS[preset](**kw))


def _ours_dit():
    from difflab.models.dit import PRESETS, DiT

    return DiT(PRESETS["DiT-B/2"](in_channels=4, image_size=32, num_classes=1000, learned_sigma=True))


def _theirs_demo():
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(32, 64), layers_per_block=1,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                       attention_head_dim=32, norm_num_groups=8, resnet_time_scale_shift="scale_shift",
                       num_class_embeds=11)


def _theirs_unet():
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
                       layers_per_block=2,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), dropout=0.1,
                       attention_head_dim=None, norm_num_groups=32)


def _theirs_dit():
    from diffusers import DiTTransformer2DModel

    return DiTTransformer2DModel(num_attention_heads=12, attention_head_dim=64, in_channels=4, out_channels=8,
                                 num_layers=12, sample_size=32, patch_size=2, num_embeds_ada_norm=1000)


CASES = {
    "demo": Case("demo", (1, 8, 8), 10, {"cpu": 128, "cuda": 128}, {"cpu": 16, "cuda": 512},
                 lambda: _ours_unet("digits", num_classes=10), _theirs_demo),
    "unet": Case("unet", (3, 32, 32), 0, {"cpu": 16, "cuda": 128}, {"cpu": 16, "cuda": 512},
                 lambda: _ours_unet("ddpm-cifar10"), _theirs_unet),
    "dit": Case("dit", (4, 32, 32), 1000, {"cpu": 8, "cuda": 256}, {"cpu": 8, "cuda": 512},
                _ours_dit, _theirs_dit, learned_sigma=True),
}


def call(side: str, model, x, t, labels):
    """One forward pass; the ε half of the output (learned-sigma models return 2C channels)."""
    if side == "ours":
        out = model(x, t, class_labels=labels) if labels is not None else model(x, t)
    else:
        t = t.expand(x.shape[0]) if t.dim() == 0 else t  # diffusers' DiT wants one t per sample
        out = model(x, t, class_labels=labels).sample if labels is not None else model(x, t).sample
    return out[:, : x.shape[1]]


def parameters(model) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def mean_seconds(fn, device: torch.device, n: int) -> float:
    """Wall seconds per call of ``fn()`` over n calls, the device synchronised at both ends."""
    import time

    sync(device)
    start = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return (time.perf_counter() - start) / max(n, 1)


def add_common_arguments(p) -> None:
    """The flags both throughput scripts take."""
    p.add_argument("--case", choices=sorted(CASES), default="demo", help="network (see throughput_cases.py)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--batch", type=int, help="images per step / sampler call (default: the case's for the device)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, alternating ours and diffusers; the best counts")
    p.add_argument("--compile", action="store_true", help="torch.compile both networks")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--plain-upsampling", action="store_true",
                   help="ours upsamples as written (nearest, then 3x3 convolution) instead of one transposed "
                        "convolution (difflab.nn.upsample): an A/B of that choice on a new device")
    p.add_argument("--ours-contiguous", action="store_true",
                   help="ours in the default (NCHW) memory format instead of channels-last: an A/B of that choice "
                        "on a new device (CUDA's GroupNorm runs in NCHW only, so a channels-last U-Net pays a "
                        "layout copy around every norm there)")


def setup(args, batches: str) -> tuple[torch.device, Case, int]:
    """(device, case, batch) for the flags; ``batches``: the case's ``train_batch`` or ``sample_batch``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.plain_upsampling:
        set_upsampling(plain=True)
    device = torch.device(args.device)
    case = CASES[args.case]
    return device, case, args.batch or getattr(case, batches)[device.type]


def variants(args) -> str:
    """What the A/B flags changed on our side, for the results' header line."""
    changed = ["ours NCHW"] * args.ours_contiguous + ["ours plain upsampling"] * args.plain_upsampling
    return "".join(f", {c}" for c in changed)


def plain_upsample_conv3x3(x, conv, taps):
    """The upsampling layer as written: nearest 2×, then the 3×3 convolution."""
    import torch.nn.functional as F

    return conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def set_upsampling(plain: bool) -> None:
    """Make our networks upsample as written (``plain``, for ``--plain-upsampling`` and A/B runs)
    or as one transposed convolution (difflab's way), for this process."""
    from difflab.models import unet
    from difflab.nn import upsample

    for module in (unet, upsample):
        module.upsample_conv3x3 = plain_upsample_conv3x3 if plain else TRANSPOSED_UPSAMPLE_CONV3X3


def versions() -> str:
    """The versions a results table records: torch and diffusers."""
    import diffusers

    return f"torch {torch.__version__}, diffusers {diffusers.__version__}"


def machine(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
