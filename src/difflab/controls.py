"""Control images for ControlNet (Zhang et al. 2023): made from images, at load time.

Each kind maps uint8 images (N, C, H, W) to uint8 control images (N, C', H, W), the same for a
training set (once, when the run loads its data) and for a picture a user passes at sampling
(``--control-preprocess KIND``, A1111's "preprocessor"):

==============  ====  ===========================================================================
kind            C'    what it is
==============  ====  ===========================================================================
``canny``       1     Canny edges (scikit-image's ``feature.canny`` on the luma: Gaussian σ,
                      hysteresis thresholds ``low`` < ``high`` on the gradient of [0, 1] images)
``soft_edges``  1     HED-like soft edges: the Sobel gradient magnitude of the Gaussian-blurred
                      luma, divided by its image's maximum (no learned edge detector offline)
``fill``        1     the set's own control images (the fill set's circle outlines,
                      :mod:`difflab.data.fill`; ControlNet's Fill50K task)
``tile``        C     the image area-downsampled by ``factor`` and upsampled back (nearest):
                      the "tile" / detail-regeneration control
``grayscale``   1     the luma ``0.299 R + 0.587 G + 0.114 B``: colourisation
``folder``      1|3   user-supplied control images in ``path``, paired with the training
                      images by relative file name (an image folder's ``a/b.png`` ↔
                      ``path/a/b.*``), resized to the images' size; ``channels`` (default 3)
==============  ====  ===========================================================================

A ControlNet reads its control image in [0, 1] (the reference code's ``hint / 255``):
:func:`to_hint`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

CONTROL_KINDS = ("canny", "soft_edges", "fill", "tile", "grayscale", "folder")
PIXEL_KINDS = ("canny", "soft_edges", "tile", "grayscale")  # computed from the pixels (the others are given)
LUMA = (0.299, 0.587, 0.114)


@dataclass
class ControlSpec:
    """How a run's control images are made: a :data:`CONTROL_KINDS` name and its options
    (canny: ``sigma``, ``low``, ``high``; soft_edges: ``sigma``; tile: ``factor``; folder:
    ``path``, ``channels``)."""

    kind: str
    options: dict = field(default_factory=dict)

    ALLOWED = {"canny": {"sigma", "low", "high"}, "soft_edges": {"sigma"}, "fill": set(), "tile": {"factor"},
               "grayscale": set(), "folder": {"path", "channels"}}

    def __post_init__(self):
        if self.kind not in CONTROL_KINDS:
            raise ValueError(f"unknown control kind {self.kind!r}; choose one of: {', '.join(CONTROL_KINDS)}")
        unknown = sorted(set(self.options) - self.ALLOWED[self.kind])
        if unknown:
            allowed = ", ".join(sorted(self.ALLOWED[self.kind])) or "none"
            raise ValueError(f"unknown option(s) {unknown} of the {self.kind} control; it takes: {allowed}")
        if self.kind == "folder" and not self.options.get("path"):
            raise ValueError("the folder control needs the folder of control images: options: {path: DIR}")
        if self.kind == "canny":
            low, high = self.options.get("low", 0.1), self.options.get("high", 0.2)
            if not 0 <= low < high:
                raise ValueError(f"Canny's thresholds need 0 <= low < high, got low={low}, high={high}")
        if self.kind == "tile" and int(self.options.get("factor", 4)) < 2:
            raise ValueError(f"the tile control's factor must be at least 2, got {self.options['factor']}")

    def to_config(self) -> dict:
        return {"kind": self.kind, **self.options}

    @classmethod
    def from_config(cls, config: dict | str) -> ControlSpec:
        if isinstance(config, str):
            return cls(config)
        options = dict(config)
        return cls(options.pop("kind", None), options)


def luma(images: Tensor) -> Tensor:
    """Grey float images (N, 1, H, W) in [0, 1] from uint8 (N, 1 or 3, H, W)."""
    x = images.to(torch.float32) / 255
    if x.shape[1] == 1:
        return x
    weights = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


def _to_uint8(x: Tensor) -> Tensor:
    return torch.round(x.clamp(0, 1) * 255).to(torch.uint8)


def canny(images: Tensor, sigma: float = 1.0, low: float = 0.1, high: float = 0.2) -> Tensor:
    """Canny edges (Canny 1986) of each image's luma, 255 on edges: uint8 (N, 1, H, W)."""
    try:
        from skimage.feature import canny as skimage_canny
    except ImportError:
        raise ValueError("Canny edges need scikit-image: pip install scikit-image") from None
    grey = luma(images).squeeze(1).cpu().numpy().astype("float64")
    edges = [skimage_canny(g, sigma=sigma, low_threshold=low, high_threshold=high) for g in grey]
    return (torch.from_numpy(np.stack(edges)).to(torch.uint8) * 255)[:, None]


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """A separable Gaussian blur (radius ⌈3σ⌉, reflected borders) of (N, C, H, W)."""
    if sigma <= 0:
        return x
    radius = max(1, int(3 * sigma + 0.999))
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).repeat(x.shape[1], 1)
    pad = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect") if pad else x
    extra = radius - pad  # zero padding beyond what reflection can give (tiny images)
    x = F.pad(x, (extra, extra, extra, extra)) if extra else x
    x = F.conv2d(x, kernel.view(x.shape[1], 1, 1, -1), groups=x.shape[1])
    return F.conv2d(x, kernel.view(x.shape[1], 1, -1, 1), groups=x.shape[1])


def soft_edges(images: Tensor, sigma: float = 1.0) -> Tensor:
    """Soft edges: |∇(G_σ * luma)| by Sobel filters, divided by each image's maximum."""
    grey = gaussian_blur(luma(images), sigma)
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=grey.device)
    padded = F.pad(grey, (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(padded, sobel.view(1, 1, 3, 3))
    gy = F.conv2d(padded, sobel.t().contiguous().view(1, 1, 3, 3))
    magnitude = torch.sqrt(gx * gx + gy * gy)
    peak = magnitude.flatten(1).amax(1).clamp_min(1e-8).view(-1, 1, 1, 1)
    return _to_uint8(magnitude / peak)


def tile(images: Tensor, factor: int = 4) -> Tensor:
    """The images area-downsampled by ``factor`` and upsampled back by repetition."""
    h, w = images.shape[-2:]
    small = F.interpolate(images.to(torch.float32), size=(max(1, h // factor), max(1, w // factor)), mode="area")
    return torch.round(F.interpolate(small, size=(h, w), mode="nearest")).clamp(0, 255).to(torch.uint8)


def grayscale(images: Tensor) -> Tensor:
    """The images' luma, uint8 (N, 1, H, W)."""
    return _to_uint8(luma(images))


def folder_controls(path: str | Path, dataset, channels: int = 3) -> Tensor:
    """The control images in ``path`` paired with ``dataset``'s images by relative file name
    (without extension), read with ``channels`` at the images' size."""
    from .data.image_folder import find_images
    from .pipelines.img2img import load_init_images_at

    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"the folder of control images {root} does not exist")
    files = dataset.files
    if files is None:
        raise ValueError(f"control images from a folder are paired by file name, and {dataset.name!r} has none: "
                         "train on an image folder (data.dataset: DIR)")
    found = {str(p.relative_to(root).with_suffix("")): p for p in find_images(root)}
    keys = [str(Path(f).with_suffix("")) for f in files]
    missing = [f for f, key in zip(files, keys) if key not in found]
    if missing:
        raise ValueError(f"{len(missing)} of the {len(files)} training images have no control image in {root} "
                         f"(paired by name without extension), e.g. {missing[0]}")
    side = tuple(dataset.images.shape[-2:])
    return load_init_images_at([found[k] for k in keys], channels, side, what="control image").images


def make_controls(spec: ControlSpec, dataset) -> Tensor:
    """The control images of ``dataset`` (an :class:`~difflab.data.ImageDataset`, or uint8 images
    (N, C, H, W) for the kinds computed from pixels): uint8 (N, C', H, W)."""
    images = dataset if isinstance(dataset, Tensor) else dataset.images
    o = spec.options
    if spec.kind == "canny":
        return canny(images, o.get("sigma", 1.0), o.get("low", 0.1), o.get("high", 0.2))
    if spec.kind == "soft_edges":
        return soft_edges(images, o.get("sigma", 1.0))
    if spec.kind == "tile":
        return tile(images, int(o.get("factor", 4)))
    if spec.kind == "grayscale":
        return grayscale(images)
    if isinstance(dataset, Tensor):  # not one of PIXEL_KINDS
        raise ValueError(f"the {spec.kind} control is not computed from pixels: pass a ready control image")
    if spec.kind == "fill":
        if dataset.controls is None:
            raise ValueError(f"the fill control uses the dataset's own control images and {dataset.name!r} has "
                             "none: use data.dataset: fill")
        return dataset.controls
    return folder_controls(o["path"], dataset, int(o.get("channels", 3)))


def to_hint(controls: Tensor) -> Tensor:
    """uint8 control images → the float [0, 1] a ControlNet reads."""
    return controls.to(torch.float32) / 255
