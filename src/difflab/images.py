"""Writing images: a PNG grid of a batch, one PNG per image, and an ``.npz`` of the batch."""

from __future__ import annotations

import io
import math
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo


def make_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """uint8 (N, C, H, W) → one uint8 (H', W', C) array of the images in rows of ``nrow``
    (default: a near-square grid), separated by ``padding`` pixels of black."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError("make_grid takes a uint8 tensor (N, C, H, W)")
    n, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    grid = np.zeros((rows * (h + padding) + padding, nrow * (w + padding) + padding, c), dtype=np.uint8)
    array = images.permute(0, 2, 3, 1).cpu().numpy()
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[top : top + h, left : left + w] = array[i]
    return grid


def _pil(array: np.ndarray) -> Image.Image:
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, upscale: int = 1,
              pnginfo: PngInfo | None = None) -> Path:
    """Save a grid PNG; ``upscale`` enlarges small images (nearest neighbour) for viewing;
    ``pnginfo``: text chunks to store (generation parameters)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = _pil(make_grid(images, nrow))
    if upscale > 1:
        image = image.resize((image.width * upscale, image.height * upscale), Image.NEAREST)
    image.save(path, pnginfo=pnginfo)
    return path


def to_pil(image: torch.Tensor) -> Image.Image:
    """One uint8 (C, H, W) image as a PIL image (grey or RGB)."""
    return _pil(image.permute(1, 2, 0).cpu().numpy())


def image_path(folder: str | Path, i: int, n: int, prefix: str = "") -> Path:
    """The file of image i of n: ``PREFIX00042.png``, at least five digits, sorted as numbered."""
    return Path(folder) / f"{prefix}{i:0{max(5, len(str(n)))}d}.png"


def save_images(images: torch.Tensor, folder: str | Path, prefix: str = "", pnginfos: list[PngInfo] | None = None,
                names: list[str] | None = None) -> list[Path]:
    """One PNG per image, numbered from 0 (or named ``names``); ``pnginfos``: each image's text chunks."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / name for name in names] if names else [image_path(folder, i, len(images), prefix)
                                                              for i in range(len(images))]
    for path, image, info in zip(paths, images, pnginfos or [None] * len(images)):
        to_pil(image).save(path, pnginfo=info)
    return paths


def read_pngs(paths: list[Path]) -> torch.Tensor:
    """uint8 (N, C, H, W) of image files written by :func:`save_images`."""
    arrays = [np.asarray(Image.open(path)) for path in paths]
    return torch.from_numpy(np.stack([a if a.ndim == 3 else a[..., None] for a in arrays])).permute(0, 3, 1, 2)


def save_npz(images: torch.Tensor, path: str | Path, labels: torch.Tensor | None = None) -> Path:
    """``samples`` as uint8 NHWC (the layout of ADM's and pytorch-fid's sample files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"samples": images.permute(0, 2, 3, 1).cpu().numpy()}
    if labels is not None:
        arrays["labels"] = labels.cpu().numpy()
    np.savez(path, **arrays)
    return path


def save_npz_from_files(paths: list[Path], path: str | Path, labels: torch.Tensor | None = None) -> Path:
    """:func:`save_npz` of image files, one image in memory at a time: the images fill a ``.npy``
    on disk (numpy's ``open_memmap``), which goes into the zip as it is; written atomically."""
    path = Path(path)
    first = np.asarray(Image.open(paths[0]))
    shape = (len(paths), *first.shape[:2], first.shape[2] if first.ndim == 3 else 1)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        array = np.lib.format.open_memmap(Path(tmp) / "samples.npy", mode="w+", dtype=np.uint8, shape=shape)
        for i, file in enumerate(paths):
            array[i] = np.asarray(Image.open(file)).reshape(shape[1:])
        array.flush()
        del array
        staged = Path(tmp) / path.name
        with zipfile.ZipFile(staged, "w", allowZip64=True) as npz:
            npz.write(Path(tmp) / "samples.npy", "samples.npy")
            if labels is not None:
                buffer = io.BytesIO()
                np.save(buffer, labels.cpu().numpy())
                npz.writestr("labels.npy", buffer.getvalue())
        os.replace(staged, path)
    return path


def check_output_folder(folder: str | Path) -> Path:
    """``folder`` after checking that it can be created and written (nothing is created yet): one
    clear error before any work when it, or a folder above it, is a file or cannot be written."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "the output" if existing == folder else f"{existing}, above the output {folder},"
        raise NotADirectoryError(f"{what} is a file, not a folder: give another --out")
    try:
        tempfile.TemporaryFile(dir=existing).close()  # can a file be created there?
    except OSError as err:
        raise PermissionError(f"cannot write in {existing} ({err.strerror or err}): give another --out or fix "
                              "its permissions") from None
    return folder
