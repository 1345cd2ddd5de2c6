"""LDM's spatial transformer in the U-Net: shapes, identity at initialization, padding masks,
and classifier-free guidance with a null text context."""

import pytest
import torch

from difflab.guidance import ClassifierFreeGuidance
from difflab.models import UNetConfig, build_model
from difflab.nn.attention import multi_head_attention
from difflab.nn.transformer import SpatialTransformer

CONFIG = dict(name="unet", in_channels=3, image_size=8, model_channels=16, channel_mult=[1, 2], num_res_blocks=1,
              attention_resolutions=[4], num_heads=2, norm_groups=8, context_dim=12)


def randomize_(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return module


def test_masked_attention_matches_the_softmax_formula():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, L, 8, generator=g) for L in (3, 5, 5))
    mask = torch.tensor([[True, True, False, True, False], [False] * 5])
    out = multi_head_attention(q, k, v, num_heads=2, key_mask=mask)
    for i, row_mask in enumerate(mask):
        keep = row_mask if row_mask.any() else torch.ones(5, dtype=torch.bool)  # all padding: attend to all
        for h in range(2):
            cols = slice(4 * h, 4 * h + 4)
            weights = (q[i, :, cols] @ k[i, keep][:, cols].T / 2.0).softmax(-1)
            torch.testing.assert_close(out[i, :, cols], weights @ v[i, keep][:, cols], rtol=1e-5, atol=1e-6)


def test_spatial_transformer_starts_as_the_identity_and_respects_padding():
    block = SpatialTransformer(16, context_dim=12, num_heads=2, depth=2, norm_groups=8)
    x = torch.randn(2, 16, 4, 4)
    context = torch.randn(2, 6, 12)
    mask = torch.tensor([[True] * 4 + [False] * 2, [True] * 6])
    assert torch.equal(block(x, context, mask), x)  # zero-initialized output projection
    randomize_(block)
    out = block(x, context, mask)
    changed = context.clone()
    changed[0, 4:] = 100.0  # only padding of sample 0 changes
    torch.testing.assert_close(block(x, changed, mask), out)
    assert not torch.allclose(block(x, changed, torch.ones_like(mask)), out)


def test_unet_with_cross_attention_uses_the_context():
    net = randomize_(build_model(CONFIG))
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10.0, 500.0])
    context, mask = torch.randn(2, 5, 12), torch.ones(2, 5, dtype=torch.bool)
    out = net(x, t, context=context, context_mask=mask)
    assert out.shape == x.shape
    assert not torch.allclose(net(x, t, context=context.flip(0), context_mask=mask), out)
    with pytest.raises(ValueError, match="pass context="):
        net(x, t)
    plain = build_model({**CONFIG, "context_dim": 0})
    with pytest.raises(ValueError, match="without cross-attention"):
        plain(x, t, context=context)
    with pytest.raises(ValueError, match="context_dim must be >= 0"):
        UNetConfig(context_dim=-1)


def test_classifier_free_guidance_with_a_null_text_context():
    net = randomize_(build_model(CONFIG))
    x, t = torch.randn(3, 3, 8, 8), torch.full((3,), 300.0)
    context, mask = torch.randn(3, 5, 12), torch.ones(3, 5, dtype=torch.bool)
    null = {"context": torch.zeros(1, 5, 12), "context_mask": torch.tensor([[True, False, False, False, False]])}
    guided = ClassifierFreeGuidance(net, 4.0, lambda cond: null)
    with torch.no_grad():
        out = guided(x, t, context=context, context_mask=mask)
        c = net(x, t, context=context, context_mask=mask)
        u = net(x, t, context=null["context"].expand(3, -1, -1), context_mask=null["context_mask"].expand(3, -1))
    torch.testing.assert_close(out, u + 4.0 * (c - u), rtol=1e-4, atol=1e-5)
