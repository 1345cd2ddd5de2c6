"""Inpainting only the masked area (AUTOMATIC1111's "Inpaint area: Only masked"): for an image
larger than the model, repaint a crop around the mask at the model's full resolution.

Per image: the bounding box of the mask (pixels above 0) grown by ``padding`` pixels on every
side, then grown to the model's aspect ratio (square) and kept inside the image, shifted where it
would cross an edge; that crop, and the mask's, are resized to the model's size and inpainted as
usual; the result is resized back to the crop and blended into the full-size original with the
full-size mask. Every pixel where the mask is 0 is the input's, bit for bit, and the image keeps
its size. A mask covering nothing leaves its image as it is (its box is the whole image).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .inpaint import feather

INPAINT_AREAS = ("whole", "masked")


def mask_box(mask: Tensor, padding: int, aspect: float = 1.0) -> tuple[int, int, int, int]:
    """The crop (x0, y0, x1, y1; x1, y1 excluded) around ``mask`` (1, H, W): its bounding box grown
    by ``padding`` and to width/height = ``aspect`` (as far as the image allows), inside the image."""
    _, height, width = mask.shape
    ys, xs = (mask[0] > 0).nonzero(as_tuple=True)
    if len(ys) == 0:
        return 0, 0, width, height
    x0, x1 = int(xs.min()) - padding, int(xs.max()) + 1 + padding
    y0, y1 = int(ys.min()) - padding, int(ys.max()) + 1 + padding
    w, h = x1 - x0, y1 - y0
    if w / h < aspect:  # too narrow: widen
        w = min(width, round(h * aspect))
    else:
        h = min(height, round(w / aspect))
    w, h = min(w, width), min(h, height)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    x0 = min(max(0, round(cx - w / 2)), width - w)
    y0 = min(max(0, round(cy - h / 2)), height - h)
    return x0, y0, x0 + w, y0 + h


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Float (N, C, h, w) to ``size`` (H, W): bicubic with antialiasing (bilinear up or down for masks)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bicubic", align_corners=False, antialias=True)


@dataclass
class MaskedArea:
    """The full-size originals (uint8 (N, C, H, W)), their masks (float (N, 1, H, W), feathered as
    the run asks) and each image's crop box; :meth:`crops` gives the model-size inputs and
    :meth:`paste` puts the results back."""

    originals: Tensor
    masks: Tensor
    boxes: list[tuple[int, int, int, int]]
    padding: int = 32
    blur: float = 0.0

    @classmethod
    def around(cls, originals: Tensor, masks: Tensor, padding: int, size: tuple[int, int],
               blur: float = 0.0) -> MaskedArea:
        """The crops of ``originals`` around ``masks`` (one, or one per image; feathered by
        ``blur`` pixels) for a model of pixel ``size`` (H, W)."""
        if padding < 0:
            raise ValueError(f"the inpainting padding must be >= 0 pixels, got {padding}")
        if len(masks) not in (1, len(originals)):
            raise ValueError(f"{len(masks)} masks for {len(originals)} init images: give one, or one each")
        masks = feather(masks.float(), blur)
        masks = masks.expand(len(originals), 1, *originals.shape[-2:]) if len(masks) == 1 else masks
        aspect = size[1] / size[0]
        return cls(originals, masks, [mask_box(m, padding, aspect) for m in masks], padding, blur)

    def crops(self, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Each image's crop and its mask's, at the model's pixel ``size``: uint8 images, float masks."""
        images, masks = [], []
        for image, mask, (x0, y0, x1, y1) in zip(self.originals, self.masks, self.boxes):
            crop = image[None, :, y0:y1, x0:x1].float()
            images.append(_resize(crop, size).round().clamp(0, 255).to(torch.uint8))
            masks.append(F.interpolate(mask[None, :, y0:y1, x0:x1], size=tuple(size), mode="bilinear",
                                       align_corners=False, antialias=True).clamp(0, 1))
        return torch.cat(images), torch.cat(masks)

    def paste(self, results: Tensor, chunk: list[int]) -> Tensor:
        """The full-size images of ``chunk``: each model-size result resized to its crop and blended
        in with the full-size mask (exactly the original where the mask is 0)."""
        out = []
        for result, i in zip(results, chunk):
            x0, y0, x1, y1 = self.boxes[i]
            image = self.originals[i].float().clone()
            mask = self.masks[i, :, y0:y1, x0:x1]
            inside = _resize(result[None].float(), (y1 - y0, x1 - x0))[0]
            image[:, y0:y1, x0:x1] = mask * inside + (1 - mask) * image[:, y0:y1, x0:x1]
            out.append(image.round().clamp(0, 255).to(torch.uint8))
        return torch.stack(out)

    def repeat_to(self, n: int) -> MaskedArea:
        index = [i % len(self.originals) for i in range(n)]
        return MaskedArea(self.originals[index], self.masks[index], [self.boxes[i] for i in index], self.padding,
                          self.blur)
