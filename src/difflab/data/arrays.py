"""Images stored as arrays: an ``.npz`` of samples, as ``difflab sample`` writes.

An ``.npz`` is read with ``allow_pickle=False``: an object array (pickled Python objects) is
refused, never unpickled.
"""

from __future__ import annotations

import zipfile
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
    """Images from an ``.npz``: the array ``samples`` (else the first one), labels from ``labels``.

    Anything else than a zip of numeric arrays (a text file, a lone ``.npy``, a truncated
    archive, an object array) is one ValueError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    with open(path, "rb") as f:
        head = f.read(6)
    if not head.startswith(b"PK"):
        found = ("an empty file" if not head else "a single .npy array (np.save)" if head.startswith(b"\x93NUMPY")
                 else f"a file starting {head!r}")
        raise ValueError(f"{path} is not an .npz (a zip of arrays, as np.savez and difflab sample write) but "
                         f"{found}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not npz.files:
                raise ValueError(f"{path} holds no array")
            key = "samples" if "samples" in npz.files else npz.files[0]
            images = images_from_array(_numeric(npz, key, path), f"{path}[{key!r}]")
            labels = None
            if "labels" in npz.files:
                labels = _numeric(npz, "labels", path)
                if labels.dtype.kind not in "iu":
                    raise ValueError(f"{path}['labels']: expected integer class indices, got {labels.dtype}")
                labels = torch.from_numpy(labels.astype(np.int64))
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise ValueError(f"{path} is not a readable .npz ({err}); it may be truncated: write it again") from err
    return ImageDataset(images=images, labels=labels, name=str(path))


def _numeric(npz, key: str, path: Path) -> np.ndarray:
    """``npz[key]`` as an array, refusing object arrays (pickles) and non-array members."""
    try:
        array = npz[key]
    except ValueError as err:
        if "pickle" in str(err) or "Object arrays" in str(err):
            raise ValueError(f"{path}[{key!r}] is an object array (pickled Python objects), which difflab never "
                             f"loads: save the images as a uint8 array") from None
        raise ValueError(f"{path}[{key!r}] is not a readable array ({err})") from err
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{path}[{key!r}] is not a NumPy array (the zip member {key!r} has no .npy data)")
    return array
