"""Contracts of the ADM U-Net (difflab.models.unet) and the shared layers in difflab.nn."""

import json
import math
from dataclasses import asdict

import pytest
import torch

from difflab.models import MODELS, build_config, build_model, model_config_dict
from difflab.models.unet import PRESETS, UNet, UNetConfig
from difflab.nn import SpatialSelfAttention, multi_head_attention, timestep_embedding
from helpers import perturb_head

# A few-thousand-parameter network that still exercises every level, attention and resampling.
TINY = dict(in_channels=2, image_size=8, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
            attention_resolutions=(4,), num_heads=2, norm_groups=4)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny networks run on one thread


def tiny(**overrides) -> UNetConfig:
    return UNetConfig(**{**TINY, **overrides})


def inputs(cfg: UNetConfig, n: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cfg.in_channels, cfg.image_size, cfg.image_size, generator=gen)
    t = torch.rand(n, generator=gen) * 999
    return x, t


@pytest.mark.parametrize(
    "overrides, out_channels",
    [
        ({}, 2),
        ({"learned_sigma": True}, 4),
        ({"num_classes": 5}, 2),
        ({"resblock_updown": True, "use_scale_shift_norm": False}, 2),
        ({"channel_mult": (1, 3, 2), "attention_resolutions": (8, 2), "num_heads": 1, "norm_groups": 8}, 2),
        ({"num_head_channels": 4, "attention_resolutions": (), "out_channels": 3}, 3),
        ({"rescale_skip": True, "rescale_concat_skip": True, "num_res_blocks": 2, "dropout": 0.1}, 2),
    ],
)
def test_output_shapes(overrides, out_channels):
    cfg = tiny(**overrides)
    model = UNet(cfg)
    x, t = inputs(cfg)
    labels = torch.tensor([0, 4, 5]) if cfg.num_classes else None
    out = model(x, t, labels)
    assert out.shape == (3, out_channels, 8, 8)
    assert out.dtype == x.dtype


def test_zero_output_at_init_then_overfits():
    torch.manual_seed(0)
    cfg = tiny()
    model = UNet(cfg)
    x, t = inputs(cfg, n=4)
    assert torch.equal(model(x, t), torch.zeros_like(x))

    target = torch.sin(3 * x)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = (model(x, t) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_timestep_embedding_matches_hand_computed_sinusoid():
    t = torch.tensor([0.0, 1.0, 17.5, 999.0])
    dim = 6
    emb = timestep_embedding(t, dim)
    freqs = [10000 ** (-i / 3) for i in range(3)]
    expected = torch.tensor([[math.cos(s * f) for f in freqs] + [math.sin(s * f) for f in freqs] for s in t.tolist()])
    torch.testing.assert_close(emb, expected, rtol=1e-5, atol=1e-5)
    assert timestep_embedding(t, 7).shape == (4, 7) and timestep_embedding(t, 7)[:, -1].eq(0).all()


def naive_attention(q, k, v, heads):
    n, length, c = q.shape
    d = c // heads
    q, k, v = (z.reshape(n, -1, heads, d).permute(0, 2, 1, 3) for z in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
    return (weights @ v).permute(0, 2, 1, 3).reshape(n, length, c)


def test_attention_matches_naive_softmax():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 10, 12).unbind(0)
    torch.testing.assert_close(multi_head_attention(q, k, v, 3), naive_attention(q, k, v, 3), rtol=1e-5, atol=1e-5)

    block = SpatialSelfAttention(12, num_head_channels=4, norm_groups=4)
    torch.nn.init.normal_(block.attn.proj.weight)
    x = torch.randn(2, 12, 3, 5)
    tokens = block.norm(x).flatten(2).transpose(1, 2)  # (N, H·W, C)
    q, k, v = block.attn.qkv(tokens).chunk(3, dim=-1)
    expected = x + block.attn.proj(naive_attention(q, k, v, 3)).transpose(1, 2).reshape(x.shape)
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_config_json_round_trip_rebuilds_identical_model():
    cfg = tiny(channel_mult=(1, 2, 2), attention_resolutions=(4, 2), num_classes=3, learned_sigma=True)
    restored = UNetConfig(**json.loads(json.dumps(asdict(cfg))))
    assert restored == cfg
    a, b = UNet(cfg).state_dict(), UNet(restored).state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}

    model = build_model({"name": "unet", "preset": "digits", "num_classes": 10})
    saved = json.loads(json.dumps(model_config_dict(model)))
    assert saved["name"] == "unet" and saved["num_classes"] == 10
    assert build_config(saved) == model.config


def test_channels_last_and_bf16_autocast():
    torch.manual_seed(0)
    cfg = tiny(num_classes=4, resblock_updown=True)
    model = UNet(cfg)
    perturb_head(model)
    x, t = inputs(cfg)
    labels = torch.tensor([0, 1, 4])
    ref = model(x, t, labels)

    model_cl = UNet(cfg).to(memory_format=torch.channels_last)
    model_cl.load_state_dict(model.state_dict())
    out = model_cl(x.to(memory_format=torch.channels_last), t, labels)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x, t, labels)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    assert (low - ref).abs().max() < 0.05 * ref.abs().max() + 0.05


def test_ddpm_cifar10_parameter_count():
    # DDPM (Ho et al. 2020) reports 35.7M parameters for its CIFAR-10 model; the count matches
    # the reference implementation exactly.
    assert UNet(PRESETS["ddpm-cifar10"]()).num_parameters() == 35_746_307


def test_class_labels_change_the_output():
    torch.manual_seed(0)
    cfg = tiny(num_classes=3)
    model = UNet(cfg)
    x, t = inputs(cfg, n=2)
    same_x, same_t = x[:1].expand(2, -1, -1, -1), t[:1].expand(2)
    assert not model(same_x, same_t, torch.tensor([0, 1])).any()  # zero head: no effect yet
    perturb_head(model)
    out = model(same_x, same_t, torch.tensor([0, 1]))
    assert not torch.allclose(out[0], out[1])
    null = model(x, t, torch.tensor([3, 3]))  # the reserved null label is the default
    torch.testing.assert_close(model(x, t), null)
    with pytest.raises(ValueError, match="num_classes"):
        UNet(tiny())(x, t, torch.tensor([0, 1]))


@pytest.mark.parametrize(
    "overrides, field, fix",
    [
        ({"attention_resolutions": (16,)}, "attention_resolutions", "pick attention resolutions among"),
        ({"image_size": 12, "channel_mult": (1, 1, 1, 1)}, "image_size", "multiple of 8"),
        ({"model_channels": 6}, "norm_groups", "pick norm_groups"),
        ({"num_heads": 3}, "num_heads", "divisors of"),
        ({"num_head_channels": 5}, "num_head_channels", "choose a divisor"),
        ({"dropout": 1.5}, "dropout", "[0, 1)"),
    ],
)
def test_bad_config_names_the_field_and_the_fix(overrides, field, fix):
    with pytest.raises(ValueError) as err:
        tiny(**overrides)
    assert field in str(err.value) and fix in str(err.value)


def test_registry_errors_and_presets():
    assert set(PRESETS) >= {"digits", "fashion-mnist-32", "ddpm-cifar10"} and "unet" in MODELS
    with pytest.raises(ValueError, match="'name' to one of"):
        build_model({"name": "nope"})
    with pytest.raises(ValueError, match="unknown unet option"):
        build_model({"name": "unet", "channels": 3})
    with pytest.raises(ValueError, match="unknown unet preset"):
        build_model({"name": "unet", "preset": "huge"})
    model = build_model({"name": "unet", "preset": "digits"})
    assert "params" in model.summary() and model.num_parameters() > 0


def test_no_graph_breaks_for_torch_compile():
    cfg = tiny(num_classes=2, resblock_updown=True)
    x, t = inputs(cfg)
    explanation = torch._dynamo.explain(UNet(cfg))(x, t, torch.tensor([0, 1, 2]))
    assert explanation.graph_break_count == 0
