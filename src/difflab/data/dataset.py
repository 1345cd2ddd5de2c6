"""The in-memory image dataset every loader returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ImageDataset:
    """Images decoded once into one uint8 tensor, with optional labels and captions.

    Attributes:
        images: uint8 tensor (N, C, H, W), values 0..255, C = 1 (grey) or 3 (RGB).
        labels: int64 tensor (N,) of class indices into ``class_names``, or None.
        class_names: the name of each class (empty when the set has no labels).
        captions: one caption per image, or None when the set has no captions.
        name: where the images came from, for messages and reports.
        sources: for an image-editing dataset (see :mod:`difflab.data.paired_edits`), the
            uint8 source image each edit starts from, same shape as ``images``; ``images``
            are then the edited targets and ``captions`` the edit instructions. None otherwise.
    """

    images: torch.Tensor
    labels: torch.Tensor | None = None
    class_names: list[str] = field(default_factory=list)
    captions: list[str] | None = None
    name: str = ""
    sources: torch.Tensor | None = None
    controls: torch.Tensor | None = None
    files: list[str] | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"dataset {self.name!r}: images must be a uint8 tensor (N, C, H, W), "
                f"got {self.images.dtype} with shape {tuple(self.images.shape)}"
            )
        n = len(self.images)
        if self.labels is not None and self.labels.shape != (n,):
            raise ValueError(f"dataset {self.name!r}: {n} images but labels of shape {tuple(self.labels.shape)}")
        if self.captions is not None and len(self.captions) != n:
            raise ValueError(f"dataset {self.name!r}: {n} images but {len(self.captions)} captions")
        if self.sources is not None and (self.sources.dtype != torch.uint8 or self.sources.shape != self.images.shape):
            raise ValueError(
                f"dataset {self.name!r}: sources must be a uint8 tensor shaped like the images "
                f"{tuple(self.images.shape)}, got {self.sources.dtype} with shape {tuple(self.sources.shape)}"
            )
        if self.files is not None and len(self.files) != n:
            raise ValueError(f"dataset {self.name!r}: {n} images but {len(self.files)} file names")
        if self.controls is not None and (self.controls.dtype != torch.uint8 or self.controls.ndim != 4
                                          or len(self.controls) != n
                                          or self.controls.shape[-2:] != self.images.shape[-2:]):
            raise ValueError(
                f"dataset {self.name!r}: controls must be a uint8 tensor (N, C, H, W) with the images' N, H and W "
                f"{tuple(self.images.shape)}, got {self.controls.dtype} with shape {tuple(self.controls.shape)}"
            )

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: torch.Tensor | slice, name: str | None = None) -> ImageDataset:
        """The images selected by ``index`` (a slice, indices or a boolean mask)."""
        if isinstance(index, torch.Tensor) and index.dtype == torch.bool:
            index = index.nonzero().squeeze(1)
        positions = range(len(self))[index] if isinstance(index, slice) else index.tolist()
        return ImageDataset(
            images=self.images[index].contiguous(),
            labels=None if self.labels is None else self.labels[index].contiguous(),
            class_names=list(self.class_names),
            captions=None if self.captions is None else [self.captions[i] for i in positions],
            name=self.name if name is None else name,
            sources=None if self.sources is None else self.sources[index].contiguous(),
            controls=None if self.controls is None else self.controls[index].contiguous(),
            files=None if self.files is None else [self.files[i] for i in positions],
        )

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def resolution(self) -> int:
        return self.images.shape[-1]
