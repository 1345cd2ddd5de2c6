"""Load a trained diffusion checkpoint and generate images from it."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.convert import to_uint8
from ..denoiser import Denoiser
from ..models import build_model
from ..sampling import sample
from ..schedules import NoiseSchedule, schedule_from_config
from ..training.state import find_checkpoint, load_state


@dataclass
class DiffusionModel:
    """A network with what sampling needs to know about it (from a checkpoint's config.json)."""

    network: torch.nn.Module
    schedule: NoiseSchedule
    prediction: str
    learned_variance: bool
    image_shape: tuple[int, int, int]
    class_names: list[str]
    config: dict

    @classmethod
    def load(cls, path: str | Path, use_ema: bool = True, device: str | torch.device = "cpu") -> "DiffusionModel":
        """Load ``path`` (a run folder or its ``checkpoint/``); the EMA weights by default."""
        config, tensors, _ = load_state(path)
        network = build_model(config["model"])
        network.load_state_dict(tensors["ema" if use_ema else "model"])
        network.to(device).eval().requires_grad_(False)
        return cls(network, schedule_from_config(config["schedule"]), config["prediction"],
                   config["learned_variance"], tuple(config["image_shape"]), list(config["class_names"]), config)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def denoiser(self, clip_x0: float | None = 1.0) -> Denoiser:
        return Denoiser(self.network, self.schedule, self.prediction, self.learned_variance, clip_x0=clip_x0)


def class_labels_for(model: DiffusionModel, n: int, class_index: int | None) -> torch.Tensor | None:
    """Labels for n samples: one class, or every class in turn; None for unconditional models."""
    if not model.num_classes:
        if class_index is not None:
            raise ValueError("this model is unconditional: it was not trained with class labels (drop --class)")
        return None
    if class_index is None:
        return torch.arange(n) % model.num_classes
    if not 0 <= class_index < model.num_classes:
        raise ValueError(f"--class must be in 0..{model.num_classes - 1} ({', '.join(model.class_names)})")
    return torch.full((n,), class_index)


@torch.no_grad()
def generate(
    model: DiffusionModel,
    n: int,
    *,
    method: str | None = None,
    steps: int | None = None,
    spacing: str | None = None,
    seed: int = 0,
    class_index: int | None = None,
    batch_size: int = 256,
    progress: bool = False,
    bf16: bool = True,
    **options,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """n samples as uint8 (N, C, H, W), with their class labels (None if unconditional).

    Sample i uses noise seeded by ``seed + i``, so the images do not depend on the batch size.
    Method, steps and spacing default to the checkpoint's ``sample`` section. On a GPU the
    network runs under bf16 autocast (``bf16=False`` for float32); the solver stays in float32.
    """
    defaults = model.config.get("train_config", {}).get("sample", {})
    method = method or defaults.get("method", "unipc_3")
    steps = steps or defaults.get("steps", 20)
    spacing = spacing or defaults.get("spacing", "log_snr")
    device = next(model.network.parameters()).device
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if (bf16 and device.type == "cuda") else nullcontext()
    labels = class_labels_for(model, n, class_index)
    denoiser = model.denoiser()
    chunks = []
    batches = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="sample", unit="batch")
    for start in batches:
        seeds = list(range(seed + start, seed + min(n, start + batch_size)))
        noise = torch.stack([torch.randn(model.image_shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
        cond = {"class_labels": labels[start : start + len(seeds)].to(device)} if labels is not None else {}
        with autocast:
            x = sample(denoiser, noise.to(device), method=method, steps=steps, spacing=spacing, cond=cond,
                       seeds=seeds, **options)
        chunks.append(to_uint8(x).cpu())
    return torch.cat(chunks), labels


def is_diffusion_checkpoint(path: str | Path) -> bool:
    try:
        import json

        config = json.loads((find_checkpoint(path) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return config.get("kind") == "diffusion"
