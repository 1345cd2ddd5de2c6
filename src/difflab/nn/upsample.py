"""2× nearest-neighbour upsampling followed by a 3×3 convolution, as one transposed convolution.

DDPM's and LDM's decoders upsample with ``Conv3x3(Nearest2x(x))`` (Ho et al. 2020, appendix B;
Rombach et al. 2022), and so do ADM's BigGAN-style "up" residual blocks. Written that way, the
convolution runs at the output resolution over an image whose 2×2 blocks are constant, so most
of its work repeats itself. The same map is one stride-2 transposed convolution with a 4×4
kernel on the low-resolution input, which does 4 multiply-adds per output pixel and channel pair
instead of 9 (2.25× fewer FLOPs) and never writes the upsampled image.

Derivation, along one axis (the 2-D kernel is the outer product of the 1-D maps below). Let
w₋₁, w₀, w₁ be the taps of the 3-tap kernel (padding 1) and u[p] = x[⌊p/2⌋]. An even output
p = 2m reads u at 2m−1, 2m, 2m+1, i.e. x at m−1, m, m; an odd one p = 2m+1 reads x at m, m, m+1:

    y[2m]   = w₋₁·x[m−1] + (w₀ + w₁)·x[m]
    y[2m+1] = (w₋₁ + w₀)·x[m] + w₁·x[m+1]

(zero padding of u at −1 and 2H is zero padding of x at −1 and H, so the edges agree). A
transposed convolution with stride 2, padding 1 and kernel K computes
y[p] = Σ_m x[m]·K[p + 1 − 2m]; matching coefficients gives

    K = (w₁,  w₀ + w₁,  w₋₁ + w₀,  w₋₁)

and the 2-D kernel K[k, l] = Σ_{d,e} T[k, d]·T[l, e]·w[d, e] with T the 4×3 matrix of those sums.
The result equals the plain formulation up to float rounding (the sums are ordered differently);
the parameters are the 3×3 convolution's, so checkpoints and imported weights are unchanged.

Measured on 2 CPU cores (``benchmarks/upsampling_ab.py``; docs/benchmarks.md, "Upsampling as a
transposed convolution"): the layer 1.6–2.2× faster at training batch sizes and in larger
inference, but 0.7× at batch 16 with 4×4 inputs, where oneDNN's per-call cost dominates.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# T[k, d]: the 4-tap transposed kernel's tap k as a sum of the 3-tap kernel's taps d = (w₋₁, w₀, w₁).
_TAPS_1D = ((0.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 0.0), (1.0, 0.0, 0.0))


def tap_matrix(dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """The (16, 9) matrix T ⊗ T that maps a flattened 3×3 kernel to the flattened 4×4 kernel."""
    t = torch.tensor(_TAPS_1D, dtype=dtype, device=device)
    return torch.kron(t, t)


def transposed_kernel(weight: Tensor, taps: Tensor) -> Tensor:
    """The (C_in, C_out, 4, 4) transposed-convolution kernel equivalent to ``Conv3x3 ∘ Nearest2x``
    with 3×3 weight (C_out, C_in, 3, 3); ``taps`` is :func:`tap_matrix`. A view of one batched
    matrix product when the weight is channels-last (no copy of the input weight)."""
    c_out, c_in = weight.shape[:2]
    k = torch.matmul(taps.to(weight.dtype), weight.permute(0, 2, 3, 1).reshape(c_out, 9, c_in))  # (C_out, 16, C_in)
    return k.view(c_out, 4, 4, c_in).permute(3, 0, 1, 2)  # (C_in, C_out, 4, 4)


def upsample_conv3x3(x: Tensor, conv: nn.Conv2d, taps: Tensor) -> Tensor:
    """``conv(F.interpolate(x, scale_factor=2, mode="nearest"))`` for a 3×3, padding-1, stride-1
    convolution ``conv``, computed as one stride-2 transposed convolution (module docstring).

    Args:
        x: (N, C_in, H, W).
        conv: the 3×3 convolution whose parameters are used.
        taps: :func:`tap_matrix`, on x's device (a non-persistent buffer of the calling module).

    Returns:
        (N, C_out, 2H, 2W), in x's memory format.
    """
    if conv.kernel_size != (3, 3) or conv.padding != (1, 1) or conv.stride != (1, 1) or conv.dilation != (1, 1) \
            or conv.groups != 1 or conv.padding_mode != "zeros":
        raise ValueError(f"upsample_conv3x3 needs a plain 3×3 convolution with padding 1, got {conv}")
    return F.conv_transpose2d(x, transposed_kernel(conv.weight, taps), conv.bias, stride=2, padding=1)


class Upsample(nn.Module):
    """2× nearest-neighbour upsampling followed by a 3×3 convolution (DDPM, LDM), computed as one
    stride-2 transposed convolution (:func:`upsample_conv3x3`). The parameters are ``conv``'s, as
    in the plain formulation."""

    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)
        self.register_buffer("taps", tap_matrix(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return upsample_conv3x3(x, self.conv, self.taps)  # (N, C_out, 2H, 2W)
