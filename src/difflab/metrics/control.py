"""How well generated images follow their control images (ControlNet, docs/controlnet.md).

* **Fill** (the fill set of :mod:`difflab.data.fill`): the generated disc is the set of pixels
  whose colour is farther than ``threshold`` (RGB, 0–255 units) from the image's background,
  estimated as the median of its border pixels (the background is a uniform grey and the discs
  are saturated colours). Its IoU with the outline's exact disc says whether the disc went where
  the outline is; its mean colour's nearest palette colour says whether the prompt's colour was
  drawn.
* **Edges**: precision, recall and F1 of binary edge maps with a distance tolerance (a predicted
  edge pixel counts as right when a reference edge pixel lies within ``tolerance`` pixels, and
  vice versa; the BSDS benchmark's matching, relaxed to a disc instead of a one-to-one assignment).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def border_median(images: Tensor) -> Tensor:
    """Each image's median border colour, float (N, C)."""
    x = images.to(torch.float32)
    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., 1:-1, 0], x[..., 1:-1, -1]], dim=-1)  # (N, C, P)
    return border.median(dim=-1).values


def foreground(images: Tensor, threshold: float = 64.0) -> Tensor:
    """Pixels whose colour is farther than ``threshold`` from the border median: bool (N, H, W)."""
    x = images.to(torch.float32)
    background = border_median(images)[:, :, None, None]
    return (x - background).square().sum(1).sqrt() > threshold


def iou(predicted: Tensor, reference: Tensor) -> Tensor:
    """Intersection over union of boolean masks (N, H, W), per image (two empty masks: 1)."""
    inter = (predicted & reference).flatten(1).sum(1).float()
    union = (predicted | reference).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def nearest_colour(images: Tensor, masks: Tensor, palette: Tensor) -> Tensor:
    """The palette index nearest to each image's mean colour inside its mask (−1 for an empty mask)."""
    x = images.to(torch.float32)
    m = masks[:, None].to(torch.float32)
    count = m.flatten(1).sum(1)
    mean = (x * m).flatten(2).sum(2) / count.clamp_min(1)[:, None]  # (N, C)
    index = torch.cdist(mean, palette.to(torch.float32)).argmin(1)
    return torch.where(count > 0, index, torch.full_like(index, -1))


def fill_scores(images: Tensor, discs: Tensor, labels: Tensor, palette: Tensor, threshold: float = 64.0) -> dict:
    """IoU of the generated discs with the outlines' ``discs`` (bool (N, H, W)) and the fraction
    drawn in the asked colour (``labels`` into ``palette`` (K, 3)); per image and averaged."""
    drawn = foreground(images, threshold)
    per_image = iou(drawn, discs)
    colours = nearest_colour(images, drawn, palette)
    return {"iou": float(per_image.mean()), "colour_accuracy": float((colours == labels).float().mean()),
            "iou_per_image": per_image}


def _dilate(edges: Tensor, radius: int) -> Tensor:
    """Binary dilation of (N, H, W) by a disc of ``radius`` pixels."""
    r = torch.arange(-radius, radius + 1, dtype=torch.float32)
    disc = ((r[:, None] ** 2 + r[None, :] ** 2) <= radius**2 + 1e-6).to(torch.float32)
    hits = F.conv2d(edges[:, None].to(torch.float32), disc[None, None], padding=radius)
    return hits[:, 0] > 0


def edge_f1(predicted: Tensor, reference: Tensor, tolerance: int = 2) -> dict:
    """Precision, recall and F1 of boolean edge maps (N, H, W) with a ``tolerance`` in pixels,
    pooled over the batch (every edge pixel counts once), and F1 per image. (N, 1, H, W) maps
    (what :func:`difflab.controls.canny` gives, > 0) are taken as (N, H, W)."""
    predicted, reference = (x.bool()[:, 0] if x.ndim == 4 else x.bool() for x in (predicted, reference))
    near_ref, near_pred = _dilate(reference, tolerance), _dilate(predicted, tolerance)
    tp_p = (predicted & near_ref).flatten(1).sum(1).float()
    tp_r = (reference & near_pred).flatten(1).sum(1).float()
    n_p, n_r = predicted.flatten(1).sum(1).float(), reference.flatten(1).sum(1).float()

    def f1(tp_p, tp_r, n_p, n_r):
        precision = tp_p / n_p.clamp_min(1)
        recall = tp_r / n_r.clamp_min(1)
        return precision, recall, 2 * precision * recall / (precision + recall).clamp_min(1e-12)

    precision, recall, score = f1(tp_p.sum(), tp_r.sum(), n_p.sum(), n_r.sum())
    return {"precision": float(precision), "recall": float(recall), "f1": float(score),
            "f1_per_image": f1(tp_p, tp_r, n_p, n_r)[2]}
