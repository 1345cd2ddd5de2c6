"""Feature injection: the edit takes the source's spatial features of one U-Net decoder block.

Plug-and-play diffusion features (Tumanyan et al. 2023, §4) observe that the residual-block
features of a middle decoder layer hold an image's layout but little of its appearance, and inject
the source's into the edit's pass for the first steps::

    f*_l  ←  f_l          for step < τ_f·T, at the feature layer l only

Prompt-to-prompt's maps alone keep little layout when the text enters as a nearly global lookup
(a small model where every position attends to the class word): the edit then drifts to what the
new prompt would draw from the same noise. The features keep it. The layer is the one the paper
uses in Stable Diffusion (decoder layer 4: the second residual block of the decoder level at a
quarter of the input's resolution), found the same way in any difflab U-Net; in the Fashion-MNIST
16×16 text model that is the second block of the 4×4 level. The source rows are never touched.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from ..models.unet import UNet


def feature_layer(network: nn.Module) -> nn.Module:
    """The residual block whose output is injected: the second residual block (the first when a
    level has one) of the decoder level whose resolution is nearest a quarter of the input's.

    Raises:
        ValueError: a network without a U-Net decoder (a DiT).
    """
    if not isinstance(network, UNet):
        raise ValueError(f"feature injection takes a U-Net decoder block's features, and a "
                         f"{type(network).__name__} has none: set feature_replace=0 (--feature-replace 0)")
    cfg = network.config
    per_level = cfg.num_res_blocks + 1
    levels = list(reversed(range(len(cfg.resolutions))))  # the decoder's order: coarsest first
    quarter = cfg.resolutions[0] / 4
    position = min(range(len(levels)), key=lambda k: (abs(cfg.resolutions[levels[k]] - quarter), k))
    return network.decoder[position * per_level + min(1, per_level - 1)][0]


@contextmanager
def feature_injection(network: nn.Module, control) -> Iterator[None]:
    """Route :func:`feature_layer`'s output through ``control.features`` for the ``with`` block
    (nothing is installed when ``control`` injects in no step)."""
    if not control.feature_steps:
        yield
        return
    handle = feature_layer(network).register_forward_hook(lambda module, inputs, output: control.features(output))
    try:
        yield
    finally:
        handle.remove()
