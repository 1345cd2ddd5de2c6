"""The trainer's fast paths compute what the plain paths compute (CPU, float tolerance)."""

import torch

from difflab.device import bf16_autocast, memory_format
from difflab.losses import diffusion_loss
from difflab.models.unet import PRESETS, UNet
from difflab.schedules import linear
from difflab.training.fast_paths import clip_gradients, fused_adamw_supported, make_optimizer


def _model():
    torch.manual_seed(0)
    return UNet(PRESETS["digits"](num_classes=10))


def _loss(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(8, 1, 8, 8, generator=g) * 2 - 1
    labels = torch.randint(0, 10, (8,), generator=g)
    return diffusion_loss(model, x0, linear(), cond={"class_labels": labels},
                          generator=torch.Generator().manual_seed(seed + 1)).loss


def test_channels_last_gives_the_same_loss_and_gradients():
    plain, fast = _model(), memory_format(_model(), True)
    assert fast.stem.weight.is_contiguous(memory_format=torch.channels_last)
    loss_plain, loss_fast = _loss(plain), _loss(fast)
    torch.testing.assert_close(loss_fast, loss_plain, rtol=1e-5, atol=1e-6)
    loss_plain.backward()
    loss_fast.backward()
    for (name, a), b in zip(plain.named_parameters(), fast.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


def test_fused_adamw_takes_the_same_steps_as_the_default():
    cpu = torch.device("cpu")
    assert fused_adamw_supported(cpu)  # torch >= 2.4
    plain, fast = _model(), _model()
    opt_plain = torch.optim.AdamW(plain.parameters(), lr=1e-3, weight_decay=0.01, foreach=False)
    opt_fast = make_optimizer(fast.parameters(), cpu, lr=1e-3, weight_decay=0.01)
    assert opt_fast.defaults["fused"]
    for step in range(3):
        _loss(plain, step).backward()
        for a, b in zip(plain.parameters(), fast.parameters()):  # the very same gradients
            b.grad = a.grad.clone()
        opt_plain.step()
        opt_fast.step()
        opt_plain.zero_grad()
    for (name, a), b in zip(plain.named_parameters(), fast.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7, msg=lambda m, name=name: f"{name}: {m}")


def test_multi_tensor_clipping_matches_the_per_tensor_loop():
    plain, fast = _model(), _model()
    _loss(plain).backward()
    for a, b in zip(plain.parameters(), fast.parameters()):
        b.grad = a.grad.clone() * 100  # far above the limit, so the clip acts
        a.grad.mul_(100)
    norm_plain = torch.nn.utils.clip_grad_norm_(plain.parameters(), 1.0, foreach=False)
    norm_fast = clip_gradients(fast.parameters(), 1.0)
    torch.testing.assert_close(norm_fast, norm_plain, rtol=1e-6, atol=0)
    assert norm_plain > 1.0
    for (name, a), b in zip(plain.named_parameters(), fast.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-6, atol=1e-9, msg=lambda m, name=name: f"{name}: {m}")


def test_bf16_autocast_is_opt_in_on_cpu_and_stays_close_to_float32():
    cpu = torch.device("cpu")
    with bf16_autocast(cpu, on_gpu=True):  # train.bf16 alone leaves the CPU in float32
        assert not torch.is_autocast_enabled("cpu")
    model = _model()
    with torch.no_grad():  # the zero-initialized output layers would make both losses exactly equal
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    plain = _loss(model)
    with bf16_autocast(cpu, on_gpu=True, on_cpu=True):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
        fast = _loss(model)
    assert fast.dtype == torch.float32  # the loss reduces in float32
    torch.testing.assert_close(fast, plain, rtol=2e-2, atol=1e-3)
    assert fast.item() != plain.item()  # it did run in bf16


def test_optimizer_moments_follow_the_parameters_layout():
    """Fused AdamW walks parameter and moments as flat memory: NCHW moments beside a
    channels-last parameter would corrupt the update unless their layout is matched."""
    from difflab.training.fast_paths import match_optimizer_state_layout

    def two_steps(fix_layout: bool):
        g = torch.Generator().manual_seed(0)
        p = torch.nn.Parameter(torch.randn(8, 4, 3, 3, generator=g).to(memory_format=torch.channels_last))
        opt = make_optimizer([p], torch.device("cpu"), lr=0.1)
        p.grad = torch.randn(8, 4, 3, 3, generator=g).to(memory_format=torch.channels_last)
        opt.step()
        state = opt.state_dict()  # as an NCHW checkpoint would hold it
        state["state"][0] = {k: v.contiguous() for k, v in state["state"][0].items()}
        opt = make_optimizer([p], torch.device("cpu"), lr=0.1)
        opt.load_state_dict(state)
        if fix_layout:
            match_optimizer_state_layout(opt)
            assert opt.state[p]["exp_avg"].is_contiguous(memory_format=torch.channels_last)
        p.grad = torch.randn(8, 4, 3, 3, generator=g).to(memory_format=torch.channels_last)
        opt.step()
        return p.detach().contiguous()

    def reference():
        g = torch.Generator().manual_seed(0)
        p = torch.nn.Parameter(torch.randn(8, 4, 3, 3, generator=g))
        opt = torch.optim.AdamW([p], lr=0.1, weight_decay=0.0, foreach=False)
        for _ in range(2):
            p.grad = torch.randn(8, 4, 3, 3, generator=g)
            opt.step()
        return p.detach()

    torch.testing.assert_close(two_steps(fix_layout=True), reference(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(two_steps(fix_layout=False), reference(), atol=1e-3)  # what the fix prevents
