"""Fashion-MNIST (Xiao et al. 2017): 28×28 grey, 60,000 train + 10,000 test, 10 classes.

The images come from the Debian package ``dataset-fashion-mnist`` (files under
``/usr/share/datasets/fashion-mnist/``) or from any folder holding the four IDX files,
gzipped or not. Every image carries a caption made from its class name ("a photo of a
t-shirt/top", ...; see :mod:`difflab.data.captions`) for text-conditional training.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from difflab.data.captions import templated_captions
from difflab.data.dataset import ImageDataset

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# IDX magic numbers: 0x0000 + type 0x08 (unsigned byte) + number of dimensions.
_MAGIC = {1: 0x00000801, 3: 0x00000803}


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes (LeCun's MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise ValueError(f"cannot read IDX file {path}: {err}") from err
    magic = int.from_bytes(data[:4], "big")
    if magic != _MAGIC[ndim]:
        raise ValueError(f"{path} is not a {ndim}-d IDX file of bytes (magic number {magic:#010x})")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {body.size} bytes")
    return body.reshape(shape)


def _find(directory: Path, stem: str) -> Path:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}[.gz] not found in {directory}: install the Debian package "
        f"(apt-get install dataset-fashion-mnist) or pass a directory holding the four IDX files"
    )


def load_fashion_mnist(split: str = "train", directory: str | Path | None = None) -> ImageDataset:
    """Fashion-MNIST as uint8 (N, 1, 28, 28) with labels 0..9 and templated captions."""
    if split not in _FILES:
        raise ValueError(f"fashion-mnist has splits 'train' and 'test', not {split!r}")
    directory = Path(directory) if directory is not None else DEFAULT_DIR
    image_stem, label_stem = _FILES[split]
    images = read_idx(_find(directory, image_stem), ndim=3)
    labels = read_idx(_find(directory, label_stem), ndim=1)
    if len(images) != len(labels):
        raise ValueError(f"{directory}: {len(images)} {split} images but {len(labels)} labels")
    labels = torch.from_numpy(labels.astype(np.int64))
    return ImageDataset(images=torch.from_numpy(images.copy()).unsqueeze(1), labels=labels,
                        class_names=list(CLASS_NAMES), captions=templated_captions(labels, CLASS_NAMES),
                        name=f"fashion-mnist:{split}")


def is_idx_directory(path: Path) -> bool:
    """True when ``path`` is a folder holding the Fashion-MNIST (or MNIST) IDX image files."""
    return path.is_dir() and any((path / f"{stem}{ext}").is_file()
                                 for stem, _ in _FILES.values() for ext in ("", ".gz"))
