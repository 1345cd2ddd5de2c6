"""Images stored as arrays: an ``.npz`` of samples, as ``difflab sample`` writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from difflab.data.dataset import ImageDataset


def images_from_array(array: np.ndarray, source: str = "array") -> torch.Tensor:
    """A uint8 array (N, H, W), (N, H, W, C) or (N, C, H, W) with C in {1, 3} → (N, C, H, W)."""
    if array.dtype != np.uint8:
        raise ValueError(f"{source}: expected uint8 pixels 0..255, got {array.dtype}; convert "
                         f"floats in [-1, 1] with difflab.data.to_uint8 first")
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim != 4:
        raise ValueError(f"{source}: expected images (N, H, W[, C]) or (N, C, H, W), got shape {array.shape}")
    elif array.shape[-1] in (1, 3) and array.shape[1] not in (1, 3):
        array = array.transpose(0, 3, 1, 2)
    elif array.shape[1] not in (1, 3):
        raise ValueError(f"{source}: cannot find a channel axis of size 1 or 3 in shape {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array))


def load_npz_images(path: str | Path) -> ImageDataset:
    """Images from an ``.npz``: the array ``samples`` (else the first one), labels from ``labels``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    with np.load(path) as npz:
        if not npz.files:
            raise ValueError(f"{path} holds no array")
        key = "samples" if "samples" in npz.files else npz.files[0]
        images = images_from_array(npz[key], f"{path}[{key!r}]")
        labels = torch.from_numpy(npz["labels"].astype(np.int64)) if "labels" in npz.files else None
    return ImageDataset(images=images, labels=labels, name=str(path))
