"""Programmatic image-editing pairs for instruction-following editors (InstructPix2Pix).

InstructPix2Pix (Brooks, Holynski and Efros 2023, "InstructPix2Pix: Learning to Follow Image
Editing Instructions") trains a diffusion model on triples (source image, instruction, edited
image), with the source fed to the denoiser as extra input channels. Its triples were generated
by GPT-3 and Prompt-to-Prompt; ours are made offline from difflab's built-in sets, and every
edit is *exact*: the target is computed from the source by a closed-form pixel operation, not
generated, so a trained editor can be scored against the true answer.

Each instruction **family** (:data:`FAMILIES`) names an edit, the plain-English paraphrases
that ask for it and whether it only makes sense in colour:

==========  ===================================  ===============================================
family      instructions                         target (uint8, rounding half to even)
==========  ===================================  ===============================================
hflip       "flip it horizontally", ...          columns reversed
vflip       "turn it upside down", ...           rows reversed
rotate      "rotate it a quarter turn", ...      90° counter-clockwise (square images)
invert      "invert the colours", ...            255 − x
darker      "make it darker", "darken it"        round(x / 2)
brighter    "make it brighter", "brighten it"    255 − round((255 − x) / 2)
grayscale   "make it grayscale", ... (RGB only)  luma = round(0.299 R + 0.587 G + 0.114 B) ×3
red         "make it red", ... (RGB only)        R = luma, G = B = round(0.3 luma)
==========  ===================================  ===============================================

:func:`paired_edits` gives every image of a base set one family (uniformly among those that
apply: the RGB-only ones are left out for grey images) and one of its paraphrases, from a
generator seeded by ``seed``. ``load_dataset("edits-digits" | "edits-emoji" |
"edits-fashion-mnist", split, ...)`` pairs the base set's split with the seed of that split
(:data:`SPLIT_SEEDS`). The base sets' test splits never share an image with their train splits
(digits: every fifth image of each class; Fashion-MNIST: its official t10k files; emoji: code
points that are multiples of 10), so the ``test`` edits start from held-out images.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from difflab.data.dataset import ImageDataset


class Family(NamedTuple):
    """One kind of edit: the instructions that ask for it and the exact pixel operation."""

    paraphrases: tuple[str, ...]
    edit: Callable[[torch.Tensor], torch.Tensor]  # uint8 (N, C, H, W) -> uint8 (N, C, H, W)
    rgb_only: bool = False


def _divide_round(numerator: torch.Tensor, denominator: int) -> torch.Tensor:
    """round(numerator / denominator), half to even, exactly: float64 division is correctly
    rounded, so an exact half (k + 0.5) stays a half and nothing else crosses one."""
    return torch.round(numerator.to(torch.float64) / denominator).to(torch.uint8)


def hflip(images: torch.Tensor) -> torch.Tensor:
    return images.flip(-1)


def vflip(images: torch.Tensor) -> torch.Tensor:
    return images.flip(-2)


def rotate(images: torch.Tensor) -> torch.Tensor:
    """A quarter turn counter-clockwise: the top row becomes the left column, read bottom up."""
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"the rotate edit needs square images, got {images.shape[-2]}×{images.shape[-1]}")
    return torch.rot90(images, 1, dims=(-2, -1))


def invert(images: torch.Tensor) -> torch.Tensor:
    return 255 - images


def darker(images: torch.Tensor) -> torch.Tensor:
    """Half the intensity: round(x / 2)."""
    return _divide_round(images.to(torch.int64), 2)


def brighter(images: torch.Tensor) -> torch.Tensor:
    """Half the distance to white: 255 − round((255 − x) / 2), i.e. darker in the negative."""
    return invert(darker(invert(images)))


def luma(images: torch.Tensor) -> torch.Tensor:
    """ITU-R BT.601 luma of uint8 RGB (N, 3, H, W) as uint8 (N, 1, H, W): round(0.299 R + 0.587 G + 0.114 B)."""
    r, g, b = images.to(torch.int64).unbind(1)
    return _divide_round(299 * r + 587 * g + 114 * b, 1000).unsqueeze(1)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    return luma(images).expand(-1, 3, -1, -1).contiguous()


def red(images: torch.Tensor) -> torch.Tensor:
    """A red tint: R = luma, G = B = round(0.3 luma)."""
    y = luma(images)
    dim = _divide_round(3 * y.to(torch.int64), 10)
    return torch.cat([y, dim, dim], dim=1)


FAMILIES: dict[str, Family] = {
    "hflip": Family(("flip it horizontally", "mirror it", "flip it left to right"), hflip),
    "vflip": Family(("turn it upside down", "flip it vertically"), vflip),
    "rotate": Family(("rotate it a quarter turn", "turn it ninety degrees"), rotate),
    "invert": Family(("invert the colours", "invert the colors", "make a negative of it"), invert),
    "darker": Family(("make it darker", "darken it"), darker),
    "brighter": Family(("make it brighter", "brighten it"), brighter),
    "grayscale": Family(("make it grayscale", "make it black and white", "remove the colour"), grayscale,
                        rgb_only=True),
    "red": Family(("make it red", "tint it red"), red, rgb_only=True),
}

# The built-in sets load_dataset pairs as "edits-<name>", and the seed each split is paired with.
EDIT_BASES = ("digits", "emoji", "fashion-mnist")
SPLIT_SEEDS = {"train": 0, "test": 1, "all": 2}


def allowed_families(channels: int, families: list[str] | None = None) -> list[str]:
    """The families (in :data:`FAMILIES` order) that apply to images with ``channels`` channels."""
    names = list(FAMILIES) if families is None else list(families)
    unknown = [name for name in names if name not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown edit famil{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))}; "
                         f"choose from: {', '.join(FAMILIES)}")
    allowed = [name for name in FAMILIES if name in names and (channels == 3 or not FAMILIES[name].rgb_only)]
    if not allowed:
        raise ValueError(f"none of the edit families {', '.join(names)} applies to {channels}-channel images "
                         f"(the RGB-only ones are {', '.join(n for n, f in FAMILIES.items() if f.rgb_only)})")
    return allowed


def paired_edits(base: ImageDataset, seed: int = 0, families: list[str] | None = None) -> ImageDataset:
    """Turn ``base`` into an editing set: each image edited by one randomly chosen instruction.

    Args:
        base: the source images (uint8, 1 or 3 channels); their labels and captions are dropped.
        seed: seeds the draw of each image's family and paraphrase; the same seed gives the
            same dataset.
        families: the family names to draw from (default all of :data:`FAMILIES`); the RGB-only
            ones are left out when ``base`` is grey.

    Returns:
        An :class:`ImageDataset` with ``sources`` = the base images, ``images`` = the edited
        targets, ``captions`` = the instructions, ``labels`` = each image's family as an index
        into ``class_names`` (the families that applied, in :data:`FAMILIES` order) and
        ``name`` = ``"edits-<base name>"``.
    """
    names = allowed_families(base.channels, families)
    generator = torch.Generator().manual_seed(seed)
    n = len(base)
    labels = torch.randint(len(names), (n,), generator=generator)
    # One draw in 0..lcm-1 per image picks a paraphrase uniformly whatever the family's count.
    counts = [len(FAMILIES[name].paraphrases) for name in names]
    picks = torch.randint(math.lcm(*counts), (n,), generator=generator)
    sources = base.images
    targets = torch.empty_like(sources)
    for index, name in enumerate(names):
        members = labels == index
        if members.any():
            targets[members] = FAMILIES[name].edit(sources[members])
    captions = [FAMILIES[names[label]].paraphrases[pick % counts[label]]
                for label, pick in zip(labels.tolist(), picks.tolist())]
    return ImageDataset(images=targets, labels=labels, class_names=names, captions=captions,
                        name=f"edits-{base.name}", sources=sources)
