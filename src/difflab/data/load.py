"""One entry point for every dataset: a built-in name, a folder of IDX files or of images."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from difflab.data.convert import resize_square, to_channels
from difflab.data.dataset import ImageDataset
from difflab.data.digits import load_digits
from difflab.data.emoji import load_emoji
from difflab.data.fashion_mnist import is_idx_directory, load_fashion_mnist
from difflab.data.fill import load_fill
from difflab.data.image_folder import load_image_folder
from difflab.data.paired_edits import EDIT_BASES, SPLIT_SEEDS, paired_edits

BUILTIN = {"digits": load_digits, "fashion-mnist": load_fashion_mnist, "emoji": load_emoji}


def parse_spec(spec: str, default_split: str = "train") -> tuple[str, str]:
    """``"digits:test"`` → ("digits", "test"); an existing path or a bare name takes the default."""
    name, sep, split = spec.rpartition(":")
    if not sep or Path(spec).exists() or not name:
        return spec, default_split
    return name, split


def load_dataset(name_or_path: str | Path, split: str = "train", resolution: int | None = None,
                 channels: int | None = None, use_cache: bool = True) -> ImageDataset:
    """Load a dataset as uint8 (N, C, H, W) images.

    Args:
        name_or_path: a built-in name (``digits``, ``fashion-mnist``, ``emoji``, ``fill``: the
            ControlNet toy of :mod:`difflab.data.fill`, drawn at ``resolution``), an editing
            set made from one (``edits-digits``, ``edits-fashion-mnist``, ``edits-emoji``; see
            :mod:`difflab.data.paired_edits`), a folder holding the Fashion-MNIST/MNIST IDX
            files, or an image folder (see :mod:`difflab.data.image_folder`).
        split: ``train`` or ``test`` (``emoji`` also has ``all``). An image folder uses its
            sub-folder of that name when it has one; otherwise the whole folder is the
            ``train`` split.
        resolution: square side in pixels; None keeps the native size (emoji: 64).
        channels: 1 or 3; None keeps the native channels.
        use_cache: read/write the decode cache (image folders and emoji).
    """
    name = str(name_or_path)
    if name.startswith("edits-") and not Path(name).exists():
        base = name.removeprefix("edits-")
        if base not in EDIT_BASES:
            raise ValueError(f"unknown instruction dataset {name!r}; choose one of: "
                             f"{', '.join(f'edits-{b}' for b in sorted(EDIT_BASES))}")
        # The base split at the requested size, then edited with that split's fixed seed.
        return paired_edits(load_dataset(base, split, resolution, channels, use_cache), seed=SPLIT_SEEDS[split])
    if name == "emoji":  # drawn at the requested size rather than resized afterwards
        dataset = load_emoji(split, resolution, use_cache=use_cache)
    elif name == "fill":
        return load_fill(split, resolution)
    elif name in BUILTIN:
        dataset = BUILTIN[name](split)
    else:
        path = Path(name_or_path)
        if not path.exists():
            raise FileNotFoundError(f"dataset {name!r} is neither a built-in ({', '.join([*BUILTIN, 'fill'])}) "
                                    f"nor an existing folder")
        if not path.is_dir():
            raise ValueError(f"dataset {name!r} must be a folder of images or of IDX files")
        if is_idx_directory(path):
            dataset = load_fashion_mnist(split, path)
        elif (path / split).is_dir() or split == "train":
            folder = path / split if (path / split).is_dir() else path
            return load_image_folder(folder, resolution, channels, use_cache)
        else:
            raise FileNotFoundError(f"image folder {path} has no {split!r} sub-folder: put the "
                                    f"{split} images in {path / split}")
    images = to_channels(resize_square(dataset.images, resolution), channels)
    return replace(dataset, images=images)
