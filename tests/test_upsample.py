"""Upsampling as one transposed convolution (difflab.nn.upsample) equals nearest 2× then a 3×3
convolution, in values and in gradients, in either memory layout, and keeps the parameters."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from difflab.models.autoencoder import AutoencoderConfig, AutoencoderKL
from difflab.models.unet import ResBlock, UNet, UNetConfig
from difflab.nn.upsample import Upsample, tap_matrix, transposed_kernel, upsample_conv3x3


def plain(x, conv):
    return conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (1, 8, 1, 1), (3, 4, 6, 6)])
def test_equals_nearest_then_conv_in_values_and_gradients(shape, channels_last):
    torch.manual_seed(0)
    conv = nn.Conv2d(shape[1], 7, 3, padding=1).double()
    x = torch.randn(*shape, dtype=torch.float64)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    taps = tap_matrix(torch.float64)
    ours, reference = upsample_conv3x3(x, conv, taps), plain(x, conv)
    assert ours.shape == (shape[0], 7, 2 * shape[2], 2 * shape[3])
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(reference)
    grads = torch.autograd.grad(ours, (x, conv.weight, conv.bias), g)
    expected = torch.autograd.grad(reference, (x, conv.weight, conv.bias), g)
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    if channels_last:
        assert ours.is_contiguous(memory_format=torch.channels_last)


def test_kernel_is_the_tap_sums_of_the_derivation():
    """K = (w₁, w₀ + w₁, w₋₁ + w₀, w₋₁) along each axis, as the module docstring derives."""
    w = torch.randn(1, 1, 3, 3, dtype=torch.float64)
    k = transposed_kernel(w, tap_matrix(torch.float64))[0, 0]
    m = torch.tensor([[0, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=torch.float64)
    torch.testing.assert_close(k, m @ w[0, 0] @ m.T)
    assert k[0, 0] == w[0, 0, 2, 2] and k[3, 3] == w[0, 0, 0, 0]


def test_float32_and_bf16_autocast_stay_close_to_the_plain_layer():
    torch.manual_seed(0)
    layer = Upsample(16, 8)
    x = torch.randn(4, 16, 8, 8)
    torch.testing.assert_close(layer(x), plain(x, layer.conv), rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, reference = layer(x), plain(x, layer.conv)
    assert ours.dtype == reference.dtype == torch.bfloat16
    scale = reference.float().abs().max()
    assert (ours.float() - reference.float()).abs().max() / scale < 2e-2


def test_parameters_and_state_dict_keys_are_the_plain_layers():
    """Checkpoints and imported weights (diffusers' ``conv``) load unchanged: the tap matrix is not saved."""
    layer = Upsample(4)
    assert list(layer.state_dict()) == ["conv.weight", "conv.bias"]
    layer.to(torch.float64)
    assert layer.taps.dtype == torch.float64  # follows the module, so the product stays in its dtype


def test_rejects_a_convolution_it_does_not_equal():
    x = torch.randn(1, 2, 4, 4)
    for conv in (nn.Conv2d(2, 2, 5, padding=2), nn.Conv2d(2, 2, 3, padding=1, groups=2),
                 nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")):
        with pytest.raises(ValueError, match="plain 3×3 convolution"):
            upsample_conv3x3(x, conv, tap_matrix())


def test_upsampling_residual_block_equals_its_plain_formulation():
    """ADM's BigGAN-style "up" block: conv1(up(SiLU(GN(x)))) runs as the transposed convolution."""
    torch.manual_seed(0)
    block = ResBlock(8, 16, 8, norm_groups=4, resample="up").eval()  # GroupNorm32: float32
    nn.init.normal_(block.conv2.weight)  # zero-initialized: make the residual branch count
    x, emb = torch.randn(2, 8, 4, 4), torch.randn(2, 16)
    h = plain(F.silu(block.norm1(x)), block.conv1)
    scale, shift = block.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
    h = block.conv2(F.silu(torch.addcmul(shift, block.norm2(h), 1 + scale)))
    expected = F.interpolate(x, scale_factor=2.0, mode="nearest") + h
    torch.testing.assert_close(block(x, emb), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("build", [
    lambda: UNet(UNetConfig(in_channels=1, image_size=8, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                            attention_resolutions=(), num_heads=1, norm_groups=4)),
    lambda: UNet(UNetConfig(in_channels=1, image_size=8, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                            attention_resolutions=(), num_heads=1, norm_groups=4, resblock_updown=True)),
    lambda: AutoencoderKL(AutoencoderConfig(in_channels=3, image_size=8, model_channels=8, channel_mult=(1, 2),
                                            num_res_blocks=1, z_channels=2, norm_groups=4)),
], ids=["unet", "unet-resblock-updown", "autoencoder"])
def test_networks_match_the_plain_upsampling(build, monkeypatch):
    """Whole networks: the same outputs as with every upsampling written as nearest then convolution."""
    from difflab.models import unet
    from difflab.nn import upsample

    torch.manual_seed(0)
    model = build()  # float32: GroupNorm32 normalizes in float32
    for p in model.parameters():  # zero-initialized outputs would hide a difference
        nn.init.normal_(p, std=0.3)
    x = torch.randn(2, model.config.in_channels, 8, 8)
    t = torch.tensor([3.0, 700.0])

    def run():
        with torch.no_grad():
            return model(x, t) if isinstance(model, UNet) else model.decode(model.encode(x).mean)

    ours = run()
    with monkeypatch.context() as m:
        for module in (unet, upsample):
            m.setattr(module, "upsample_conv3x3", lambda h, conv, taps: plain(h, conv))
        reference = run()
    assert not torch.equal(ours, reference)  # the formulation did change
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4 * reference.abs().max().item())
