"""Fill: ControlNet's toy task, drawn procedurally.

ControlNet (Zhang, Rao and Agrawala 2023, "Adding Conditional Control to Text-to-Image Diffusion
Models", the Fill50K set of its training tutorial) learns to fill a circle outline with the colour a
prompt names. Ours is drawn offline at any resolution: each image is one disc of a named colour
(:data:`COLOURS`) on a grey background, and its control image is the disc's outline. The disc's
colour is the class label and the caption ("a red circle"), so a class- or text-conditioned base
model learns colours and shapes, and only a ControlNet can put the disc where an outline says.

Geometry, for side ``s`` (pixel centres at integers + 0.5): radius r ~ U[0.12 s, 0.36 s], centre
uniform so that the disc lies inside the image, background grey level g ~ U[0, 1]. The disc is
anti-aliased by coverage ``clamp(r + 0.5 − d, 0, 1)`` at distance d from the centre, the outline
is the ring ``clamp(1 − |d − r|, 0, 1)`` (white on black, one channel). :func:`disc_masks` gives
the exact disc ``d ≤ r`` that the fill benchmark scores IoU against.

``load_dataset("fill", split, resolution)`` draws 20,000 training or 2,000 test images from the
split's own seed (:data:`SPLITS`); the same call always draws the same images.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from difflab.data.dataset import ImageDataset

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (240, 140, 20),
    "yellow": (235, 220, 40),
    "green": (40, 170, 60),
    "cyan": (40, 200, 220),
    "blue": (40, 70, 220),
    "purple": (140, 50, 200),
    "pink": (240, 110, 180),
}
SPLITS = {"train": (20_000, 0xF111), "test": (2_000, 0xF112)}  # (images, seed)
DEFAULT_RESOLUTION = 32


class Circles(NamedTuple):
    """Disc parameters in pixels: centres (N, 2) as (x, y), radii (N,)."""

    centres: torch.Tensor
    radii: torch.Tensor


def random_circles(n: int, side: int, generator: torch.Generator) -> Circles:
    """``n`` discs that fit in a ``side``×``side`` image (radius in [0.12, 0.36]·side)."""
    radii = side * (0.12 + 0.24 * torch.rand(n, generator=generator, dtype=torch.float64))
    room = side - 2 * radii  # the centre's range along each axis
    centres = radii[:, None] + room[:, None] * torch.rand(n, 2, generator=generator, dtype=torch.float64)
    return Circles(centres, radii)


def _distances(circles: Circles, side: int) -> torch.Tensor:
    """Distance of every pixel centre to each disc's centre, (N, side, side) float64."""
    coords = torch.arange(side, dtype=torch.float64) + 0.5
    dx = coords[None, None, :] - circles.centres[:, 0, None, None]
    dy = coords[None, :, None] - circles.centres[:, 1, None, None]
    return torch.sqrt(dx * dx + dy * dy)


def disc_masks(circles: Circles, side: int) -> torch.Tensor:
    """The exact discs (d ≤ r) as bool (N, side, side)."""
    return _distances(circles, side) <= circles.radii[:, None, None]


def outlines(circles: Circles, side: int) -> torch.Tensor:
    """The discs' outlines, white on black: uint8 (N, 1, side, side)."""
    ring = (1 - (_distances(circles, side) - circles.radii[:, None, None]).abs()).clamp(0, 1)
    return torch.round(ring * 255).to(torch.uint8)[:, None]


def filled(circles: Circles, colours: torch.Tensor, backgrounds: torch.Tensor, side: int) -> torch.Tensor:
    """Anti-aliased discs of ``colours`` (N, 3) in 0..255 on grey ``backgrounds`` (N,) in [0, 1]:
    uint8 (N, 3, side, side)."""
    coverage = (circles.radii[:, None, None] + 0.5 - _distances(circles, side)).clamp(0, 1)[:, None]
    grey = (backgrounds * 255)[:, None, None, None]
    image = coverage * colours.to(torch.float64)[:, :, None, None] + (1 - coverage) * grey
    return torch.round(image).to(torch.uint8)


def draw_fill(n: int, side: int, seed: int) -> tuple[ImageDataset, Circles]:
    """``n`` fill images of ``side`` pixels from ``seed``: the dataset (discs, colour labels,
    captions, outlines as ``controls``) and the discs' geometry."""
    g = torch.Generator().manual_seed(seed)
    names = list(COLOURS)
    labels = torch.randint(len(names), (n,), generator=g)
    circles = random_circles(n, side, g)
    backgrounds = torch.rand(n, generator=g, dtype=torch.float64)
    palette = torch.tensor(list(COLOURS.values()))
    dataset = ImageDataset(
        images=filled(circles, palette[labels], backgrounds, side),
        labels=labels,
        class_names=names,
        captions=[f"a {names[i]} circle" for i in labels.tolist()],
        name=f"fill-{side}",
        controls=outlines(circles, side),
    )
    return dataset, circles


def load_fill(split: str = "train", resolution: int | None = None) -> ImageDataset:
    """The ``split`` (train or test) of the fill set at ``resolution`` (default 32)."""
    if split not in SPLITS:
        raise ValueError(f"the fill set has splits {', '.join(SPLITS)}, not {split!r}")
    side = resolution or DEFAULT_RESOLUTION
    if side < 8:
        raise ValueError(f"fill images need at least 8 pixels a side to draw a circle, got {side}")
    n, seed = SPLITS[split]
    return draw_fill(n, side, seed)[0]
