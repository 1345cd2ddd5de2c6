"""Improved precision and recall (Kynkäänniemi et al. 2019, "Improved Precision and Recall
Metric for Assessing Generative Models", section 2).

Each set of features approximates its manifold by the union of balls centred on its
points, the radius of each ball being the distance to the point's k-th nearest neighbour
in the same set (k = 3 in the paper). Precision is the fraction of generated points that
fall inside the real manifold; recall is the fraction of real points inside the generated
manifold.
"""

from __future__ import annotations

import numpy as np
import torch


def knn_radii(features: torch.Tensor, k: int = 3, batch_size: int = 1000) -> torch.Tensor:
    """Distance from each point to its k-th nearest neighbour in the same set (itself excluded)."""
    if len(features) <= k:
        raise ValueError(f"k-NN radii with k={k} need more than {k} points, got {len(features)}")
    radii = []
    for begin in range(0, len(features), batch_size):
        distances = torch.cdist(features[begin:begin + batch_size], features)
        # The k + 1 smallest distances include the point itself at distance 0.
        radii.append(distances.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(radii)


def inside_manifold(queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor,
                    batch_size: int = 1000) -> torch.Tensor:
    """For each query, whether it lies within radius r_j of some support point j."""
    inside = []
    for begin in range(0, len(queries), batch_size):
        distances = torch.cdist(queries[begin:begin + batch_size], support)
        inside.append((distances <= radii.unsqueeze(0)).any(dim=1))
    return torch.cat(inside)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3,
                     device: str | torch.device = "cpu") -> tuple[float, float]:
    """Improved precision and recall of ``fake`` features against ``real`` ones (N, D)."""
    real_t = torch.as_tensor(np.asarray(real), dtype=torch.float32, device=device)
    fake_t = torch.as_tensor(np.asarray(fake), dtype=torch.float32, device=device)
    precision = inside_manifold(fake_t, real_t, knn_radii(real_t, k)).float().mean().item()
    recall = inside_manifold(real_t, fake_t, knn_radii(fake_t, k)).float().mean().item()
    return precision, recall
