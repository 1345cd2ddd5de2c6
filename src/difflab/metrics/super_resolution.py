"""Super-resolution figures: consistency with the input, PSNR and SSIM to the ground truth.

* **consistency** (SR3, Saharia et al. 2021, §4.2): the mean squared error between the output,
  area-downsampled back to the input's size, and the input, in [−1, 1] units — an upsampler must
  not change what it was given;
* **PSNR** 10·log₁₀(255²/MSE) per image, averaged;
* **SSIM** (Wang et al. 2004): local means, variances and covariance under an 11×11 Gaussian
  window of std 1.5, (2μₓμᵧ + C₁)(2σₓᵧ + C₂) / ((μₓ² + μᵧ² + C₁)(σₓ² + σᵧ² + C₂)) with C₁ = (0.01·255)²,
  C₂ = (0.03·255)², the sample covariance (N/(N−1)), over the windows that fit inside the image
  and averaged over channels; scikit-image's ``structural_similarity(..., gaussian_weights=True,
  sigma=1.5, use_sample_covariance=True, data_range=255)`` (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.convert import to_float
from ..image_condition import downsample


def consistency_mse(outputs: Tensor, inputs: Tensor) -> Tensor:
    """Per image: MSE between the uint8 outputs area-downsampled to the uint8 inputs' size and the
    inputs, in [−1, 1] units."""
    low = downsample(to_float(outputs), inputs.shape[-1])
    return (low - to_float(inputs)).pow(2).flatten(1).mean(1)


def psnr(images: Tensor, targets: Tensor) -> Tensor:
    """Per image PSNR in dB of uint8 ``images`` against uint8 ``targets`` (inf where equal)."""
    mse = (images.double() - targets.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(255.0**2 / mse)


def _gaussian_window(size: int = 11, std: float = 1.5) -> Tensor:
    taps = torch.exp(-0.5 * ((torch.arange(size, dtype=torch.float64) - (size - 1) / 2) / std) ** 2)
    return taps / taps.sum()


def ssim(images: Tensor, targets: Tensor, window: int = 11, std: float = 1.5) -> Tensor:
    """Per image SSIM of uint8 (N, C, H, W) images against targets (see the module docstring).
    Images smaller than the window use a window of their side (odd)."""
    x, y = images.double(), targets.double()
    side = min(window, x.shape[-1], x.shape[-2])
    side -= 1 - side % 2
    taps = _gaussian_window(side, std)
    channels = x.shape[1]

    def blur(z: Tensor) -> Tensor:
        z = F.conv2d(z, taps.view(1, 1, 1, -1).expand(channels, 1, 1, side), groups=channels)
        return F.conv2d(z, taps.view(1, 1, -1, 1).expand(channels, 1, side, 1), groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    correction = side * side / (side * side - 1)  # the sample covariance of the window's pixels
    var_x = (blur(x * x) - mu_x**2) * correction
    var_y = (blur(y * y) - mu_y**2) * correction
    cov = (blur(x * y) - mu_x * mu_y) * correction
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return index.flatten(1).mean(1)
