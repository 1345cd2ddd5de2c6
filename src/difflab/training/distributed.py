"""Process-group set-up for ``torchrun`` (DDP): gloo on CPU, NCCL on GPU; one process otherwise."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..device import pick_device


@dataclass
class Runtime:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(preference: str = "auto") -> Runtime:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(preference)
    if world_size == 1:
        return Runtime(0, 1, device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Runtime(dist.get_rank(), dist.get_world_size(), device)


def teardown(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


def any_process(flag: bool, device: torch.device) -> bool:
    """True on every process if ``flag`` is true on any (one all-reduce)."""
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of ``value`` over all processes (one all-reduce; the same on every process)."""
    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / dist.get_world_size()


def gather(rows: torch.Tensor) -> torch.Tensor:
    """Every process's ``rows`` (the same shape on each) concatenated in rank order: one
    all-gather; the same tensor on every process."""
    parts = [torch.empty_like(rows) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, rows.contiguous())
    return torch.cat(parts)


def maximum(value: float, device: torch.device) -> float:
    """The largest ``value`` over all processes (NaN counts as inf), the same on every process."""
    tensor = torch.tensor([value if not math.isnan(value) else math.inf], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.item()
