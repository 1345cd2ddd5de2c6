"""scikit-learn's 8×8 handwritten digits (1,797 images, 10 classes): tests and the CPU demo."""

from __future__ import annotations

import torch

from difflab.data.dataset import ImageDataset

# load_digits has no official split: within each class, every fifth image (the 5th, 10th,
# ... of that digit in file order) is in the test set, 355 images stratified by class;
# the other 1,442 are the training set.
_TEST_EVERY = 5


def _rank_within_class(labels: torch.Tensor) -> torch.Tensor:
    """For each image, how many earlier images have the same label."""
    rank = torch.empty_like(labels)
    for label in labels.unique():
        members = (labels == label).nonzero().squeeze(1)
        rank[members] = torch.arange(len(members))
    return rank


def load_digits(split: str = "train") -> ImageDataset:
    """The digits as uint8 (N, 1, 8, 8); the 17 grey levels 0..16 are mapped to 0..255."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as err:
        raise ImportError("the digits dataset needs scikit-learn: pip install scikit-learn") from err
    if split not in ("train", "test"):
        raise ValueError(f"digits has splits 'train' and 'test', not {split!r}")
    bunch = sklearn_digits()
    levels = torch.as_tensor(bunch.images, dtype=torch.float64)  # (1797, 8, 8), 0..16
    images = (levels * (255.0 / 16.0)).round().to(torch.uint8).unsqueeze(1)
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    is_test = _rank_within_class(labels) % _TEST_EVERY == _TEST_EVERY - 1
    everything = ImageDataset(images=images, labels=labels, class_names=[str(d) for d in range(10)])
    return everything.subset(is_test if split == "test" else ~is_test, name=f"digits:{split}")
