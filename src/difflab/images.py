"""Writing images: a PNG grid of a batch, one PNG per image, and an ``.npz`` of the batch."""

from __future__ import annotations

import math
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


def save_images(images: torch.Tensor, folder: str | Path, prefix: str = "",
                pnginfos: list[PngInfo] | None = None) -> list[Path]:
    """One PNG per image, numbered from 0; ``pnginfos``: each image's text chunks."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    digits = max(5, len(str(len(images))))
    paths = []
    for i, image in enumerate(images):
        paths.append(folder / f"{prefix}{i:0{digits}d}.png")
        to_pil(image).save(paths[-1], pnginfo=pnginfos[i] if pnginfos else None)
    return paths


def save_npz(images: torch.Tensor, path: str | Path, labels: torch.Tensor | None = None) -> Path:
    """``samples`` as uint8 NHWC (the layout of ADM's and pytorch-fid's sample files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"samples": images.permute(0, 2, 3, 1).cpu().numpy()}
    if labels is not None:
        arrays["labels"] = labels.cpu().numpy()
    np.savez(path, **arrays)
    return path
