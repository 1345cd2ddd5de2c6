"""Inpainting masks: named shapes and boxes for users and tests, random masks for training.

A mask is float in [0, 1], 1 (white in a PNG) where the image is repainted. Reading masks from
files and resizing them is :mod:`difflab.pipelines.inpaint`'s job; this module only makes them.

Random training masks follow the mix that inpainting models are trained on (LaMa, Suvorov et
al. 2022, §3.2: wide and narrow strokes and boxes; Stable Diffusion's inpainting model adds
fully masked images, so that it can also draw from nothing, and outpainting borders):

* ``box``: a rectangle of sides uniform in [¼, ¾] of the image's, anywhere inside it;
* ``strokes``: 1–4 brush strokes, each a random walk of 2–5 segments drawn with a round brush of
  radius 4–12 % of the side;
* ``border``: everything but a central window: the outpainting case (one to four sides grown);
* ``full``: the whole image (the model learns unconditional generation too).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

MASK_SHAPES = ("left-half", "right-half", "top-half", "bottom-half", "centre")
TRAINING_MASKS = {"box": 0.35, "strokes": 0.35, "border": 0.2, "full": 0.1}


def shape_mask(name: str, size: tuple[int, int]) -> Tensor:
    """A named mask (1, H, W): a half of the image, or the centre square of half its side."""
    height, width = size
    mask = torch.zeros(1, height, width)
    if name == "left-half":
        mask[..., : width // 2] = 1
    elif name == "right-half":
        mask[..., width // 2 :] = 1
    elif name == "top-half":
        mask[..., : height // 2, :] = 1
    elif name == "bottom-half":
        mask[..., height // 2 :, :] = 1
    elif name in ("centre", "center"):
        mask[..., height // 4 : height - height // 4, width // 4 : width - width // 4] = 1
    else:
        raise ValueError(f"unknown mask shape {name!r}; choose one of: {', '.join(MASK_SHAPES)}")
    return mask


def box_mask(box, size: tuple[int, int]) -> Tensor:
    """The box x0,y0,x1,y1 (pixels, x1 and y1 excluded; a string or 4 ints) as a mask (1, H, W)."""
    height, width = size
    try:
        x0, y0, x1, y1 = (int(v) for v in (box.split(",") if isinstance(box, str) else box))
    except (TypeError, ValueError):
        raise ValueError(f"a mask box is x0,y0,x1,y1 (four integers), got {box!r}") from None
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(f"mask box {box!r} is not inside the {width}x{height} image with x0 < x1 and y0 < y1")
    mask = torch.zeros(1, height, width)
    mask[..., y0:y1, x0:x1] = 1
    return mask


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _randint(generator: torch.Generator, low: int, high: int) -> int:
    """An integer in [low, high] (both included)."""
    return int(torch.randint(low, high + 1, (), generator=generator))


def random_box(size: tuple[int, int], generator: torch.Generator) -> Tensor:
    """A rectangle of sides uniform in [¼, ¾] of the image's, placed uniformly (1, H, W)."""
    height, width = size
    h = max(1, round(height * _uniform(generator, 0.25, 0.75)))
    w = max(1, round(width * _uniform(generator, 0.25, 0.75)))
    y, x = _randint(generator, 0, height - h), _randint(generator, 0, width - w)
    return box_mask((x, y, x + w, y + h), size)


def random_strokes(size: tuple[int, int], generator: torch.Generator) -> Tensor:
    """1–4 brush strokes (1, H, W): random walks of 2–5 segments, each 15–50 % of the side long,
    painted with a round brush of radius 4–12 % of the side (every pixel within the radius of a
    segment)."""
    height, width = size
    side = min(height, width)
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    points = torch.stack([xs, ys], -1)  # (H, W, 2) pixel centres
    mask = torch.zeros(height, width, dtype=torch.bool)
    for _ in range(_randint(generator, 1, 4)):
        radius = max(0.75, side * _uniform(generator, 0.04, 0.12))
        start = torch.tensor([_uniform(generator, 0, width), _uniform(generator, 0, height)])
        angle = _uniform(generator, 0, 2 * math.pi)
        for _ in range(_randint(generator, 2, 5)):
            angle += _uniform(generator, -math.pi / 2, math.pi / 2)
            length = side * _uniform(generator, 0.15, 0.5)
            end = start + length * torch.tensor([math.cos(angle), math.sin(angle)])
            end = torch.stack([end[0].clamp(0, width), end[1].clamp(0, height)])
            mask |= _segment_distance(points, start, end) <= radius
            start = end
    return mask.float()[None]


def _segment_distance(points: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """The distance of each point (..., 2) to the segment from a to b."""
    ab = b - a
    t = ((points - a) @ ab / (ab @ ab).clamp_min(1e-12)).clamp(0, 1)
    return (points - a - t[..., None] * ab).norm(dim=-1)


def random_border(size: tuple[int, int], generator: torch.Generator) -> Tensor:
    """Outpainting (1, H, W): one to four sides masked, each 15–50 % of the image deep."""
    height, width = size
    mask = torch.zeros(1, height, width)
    sides = torch.randperm(4, generator=generator)[: _randint(generator, 1, 4)].tolist()
    for side in sides:
        depth = _uniform(generator, 0.15, 0.5)
        if side == 0:
            mask[..., : max(1, round(height * depth)), :] = 1
        elif side == 1:
            mask[..., height - max(1, round(height * depth)) :, :] = 1
        elif side == 2:
            mask[..., : max(1, round(width * depth))] = 1
        else:
            mask[..., width - max(1, round(width * depth)) :] = 1
    return mask


MAKERS = {"box": random_box, "strokes": random_strokes, "border": random_border,
          "full": lambda size, generator: torch.ones(1, *size)}


def random_masks(n: int, size: tuple[int, int], generator: torch.Generator,
                 mix: dict[str, float] | None = None) -> Tensor:
    """n training masks (n, 1, H, W), each of a kind drawn with the weights of ``mix``
    (default :data:`TRAINING_MASKS`), all from ``generator`` (a CPU generator: the same seed gives
    the same masks on any device)."""
    mix = TRAINING_MASKS if mix is None else mix
    unknown = sorted(set(mix) - set(MAKERS))
    if unknown or not mix or min(mix.values()) < 0 or sum(mix.values()) <= 0:
        raise ValueError(f"a mask mix gives non-negative weights to some of {', '.join(MAKERS)}, got {mix}")
    kinds = list(mix)
    weights = torch.tensor([float(mix[k]) for k in kinds])
    picks = torch.multinomial(weights, n, replacement=True, generator=generator).tolist()
    return torch.stack([MAKERS[kinds[k]](tuple(size), generator) for k in picks])
