"""Caption retrieval: does a text-to-image model draw the training image its caption names?

For each requested caption c_i (taken from the training set) the model draws one image g_i; its
k nearest training images x_j in a feature space φ, by Euclidean distance ‖φ(g_i) − φ(x_j)‖, are
looked up. Then

    top-1 = (1/n) Σ_i [caption(nearest_1(g_i)) = c_i]
    top-k = (1/n) Σ_i [c_i ∈ {caption(nearest_1(g_i)), …, caption(nearest_k(g_i))}]

A model that ignores its caption scores about (images per caption) / (training images) on top-1;
one that follows it draws an image closest to the captioned one. On a set where each caption
names one image (emoji: "red apple") this is a memorisation test of caption following, the
retrieval check of issue 6. The feature spaces: an autoencoder's posterior means (the latent
model's own, or any ``difflab train-autoencoder`` run), the Inception pool features of FID, or
raw pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class CaptionRetrieval:
    """The scores and, per generated image, its neighbours.

    Attributes:
        top1, topk: fractions of the n images whose nearest / one of whose k nearest training
            images carries the requested caption.
        k, n: neighbours looked at; images scored.
        neighbours: (n, k) training-set indices, nearest first.
        rank: (n,) position (0 … k−1) of the first neighbour with the requested caption, −1 if none.
    """

    top1: float
    topk: float
    k: int
    n: int
    neighbours: Tensor
    rank: Tensor

    def to_dict(self) -> dict:
        return {"top1": self.top1, f"top{self.k}": self.topk, "k": self.k, "n": self.n}


def nearest_neighbours(queries: Tensor, keys: Tensor, k: int, batch_size: int = 1024) -> Tensor:
    """Indices (N, k) of the k rows of ``keys`` (M, D) nearest to each row of ``queries`` (N, D)
    in Euclidean distance, nearest first; computed in float64, ``batch_size`` queries at a time."""
    if queries.ndim != 2 or keys.ndim != 2 or queries.shape[1] != keys.shape[1]:
        raise ValueError(f"expected (N, D) queries and (M, D) keys, got {tuple(queries.shape)} and {tuple(keys.shape)}")
    if not 1 <= k <= len(keys):
        raise ValueError(f"k={k} neighbours asked for among {len(keys)} keys; pick 1 <= k <= {len(keys)}")
    keys = keys.double()
    found = []
    for start in range(0, len(queries), batch_size):
        distances = torch.cdist(queries[start : start + batch_size].double(), keys)  # (B, M)
        found.append(distances.topk(k, dim=1, largest=False).indices)
    return torch.cat(found)


def caption_retrieval(generated: Tensor, training: Tensor, training_captions: list[str], requested: list[str],
                      k: int = 5) -> CaptionRetrieval:
    """Score generated images against the training set (see the module docstring).

    Args:
        generated: (n, D) features of the generated images, row i drawn for ``requested[i]``.
        training: (M, D) features of the training images.
        training_captions: the M captions of the training images.
        requested: the n captions the images were drawn for.
        k: neighbours for the top-k score.
    """
    if len(generated) != len(requested):
        raise ValueError(f"{len(generated)} generated images but {len(requested)} requested captions")
    if len(training) != len(training_captions):
        raise ValueError(f"{len(training)} training images but {len(training_captions)} captions")
    neighbours = nearest_neighbours(generated.flatten(1), training.flatten(1), k)
    match = torch.tensor([[training_captions[j] == caption for j in row] for row, caption
                          in zip(neighbours.tolist(), requested)], dtype=torch.bool).view(len(requested), k)
    rank = torch.where(match.any(1), match.float().argmax(1), torch.full((len(requested),), -1))
    return CaptionRetrieval(top1=match[:, 0].float().mean().item(), topk=match.any(1).float().mean().item(),
                            k=k, n=len(requested), neighbours=neighbours, rank=rank)
