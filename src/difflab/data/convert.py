"""Pixel conversions shared by the data loaders, the trainer and the metrics.

Images travel as uint8 tensors (N, C, H, W) in 0..255; networks see floats in [-1, 1]
(DDPM's convention, Ho et al. 2020, section 3.3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# ITU-R BT.601 luma weights, the ones Pillow's ``convert("L")`` uses.
_LUMA = (0.299, 0.587, 0.114)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 → float32 in [-1, 1]."""
    return images.float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] → uint8 0..255 (clamped, rounded to nearest)."""
    return x.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def to_channels(images: torch.Tensor, channels: int | None) -> torch.Tensor:
    """Convert uint8 (N, C, H, W) images to 1 (grey) or 3 (RGB) channels; None keeps them.

    Grey → RGB repeats the channel; RGB → grey uses the BT.601 luma weights.
    """
    have = images.shape[1]
    if channels is None or channels == have:
        return images
    if channels == 3 and have == 1:
        return images.expand(-1, 3, -1, -1).contiguous()
    if channels == 1 and have == 3:
        weights = torch.tensor(_LUMA, dtype=torch.float32).view(1, 3, 1, 1)
        return (images.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    raise ValueError(f"cannot convert {have}-channel images to {channels} channels (use 1 or 3)")


def resize_square(images: torch.Tensor, resolution: int | None) -> torch.Tensor:
    """Resize square uint8 images to ``resolution`` pixels a side (antialiased bilinear).

    None or the current size returns the images unchanged.
    """
    if resolution is None or images.shape[-1] == resolution == images.shape[-2]:
        return images
    resized = F.interpolate(images.float(), size=(resolution, resolution), mode="bilinear",
                            align_corners=False, antialias=True)
    return resized.round().clamp(0, 255).to(torch.uint8)


def random_hflip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image of a batch (N, C, H, W) left-right with probability 1/2."""
    device = generator.device if generator is not None else x.device
    flip = (torch.rand(len(x), generator=generator, device=device) < 0.5).to(x.device)
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def random_crop(x: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random ``size``×``size`` window of each image of a batch (N, C, H, W), offsets uniform
    and independent per image (the crops LDM trains its autoencoders on)."""
    n, _, height, width = x.shape
    if not 1 <= size <= min(height, width):
        raise ValueError(f"cannot crop {size}x{size} windows from {height}x{width} images; "
                         f"pick a crop size between 1 and {min(height, width)}")
    device = generator.device if generator is not None else x.device
    top = torch.randint(height - size + 1, (n,), generator=generator, device=device).to(x.device)
    left = torch.randint(width - size + 1, (n,), generator=generator, device=device).to(x.device)
    offsets = torch.arange(size, device=x.device)
    rows = (top[:, None] + offsets)[:, None, :, None]  # (N, 1, size, 1)
    cols = (left[:, None] + offsets)[:, None, None, :]  # (N, 1, 1, size)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return x[batch, channel, rows, cols]


def random_placement(x: torch.Tensor, scales: tuple[float, float],
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Each image of a batch (N, C, H, W), float or uint8, shrunk by a factor s ~ U(scales) and
    pasted at a uniformly random position on its top-left pixel's colour (the white of emoji, the
    black of Fashion-MNIST); same shape and dtype.

    The area-resized image is round(s·H) × round(s·W); its top-left corner is uniform over the
    positions where it fits. A ControlNet trained on subjects that always fill the frame can learn
    to copy the layout its base already draws from the prompt; placed subjects give it layouts the
    base never drew, which only the control image can set (``data.random_placement``).
    """
    low, high = scales
    if not 0 < low <= high <= 1:
        raise ValueError(f"the placement's scales must satisfy 0 < min <= max <= 1, got [{low}, {high}]")
    n, _, height, width = x.shape
    device = generator.device if generator is not None else x.device
    draws = torch.rand(n, 3, generator=generator, device=device).cpu().tolist()
    pixels = x.to(torch.float32)
    out = pixels[:, :, :1, :1].expand_as(pixels).clone()
    for i, (u, a, b) in enumerate(draws):
        s = low + (high - low) * u
        h, w = max(1, round(s * height)), max(1, round(s * width))
        top, left = int(a * (height - h + 1)), int(b * (width - w + 1))
        out[i, :, top : top + h, left : left + w] = F.interpolate(pixels[i : i + 1], size=(h, w), mode="area")[0]
    return out.round().clamp(0, 255).to(torch.uint8) if x.dtype == torch.uint8 else out.to(x.dtype)
