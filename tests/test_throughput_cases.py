"""The throughput benchmarks compare like with like: our network and diffusers' of the same
architecture have the same parameter count and the same forward FLOPs when ours computes its
upsampling layers as written (nearest, then 3×3 convolution), and fewer FLOPs as it runs them
(one transposed convolution, difflab.nn.upsample) (benchmarks/throughput_cases.py)."""

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from difflab.nn import upsample

pytest.importorskip("diffusers", reason="pip install diffusers (the dev extra)")
sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
from throughput_cases import CASES, call, parameters, plain_upsample_conv3x3  # noqa: E402


@pytest.mark.parametrize("name", ["demo", "unet"])
def test_unet_cases_match_diffusers_in_parameters_and_flops(name, monkeypatch):
    case = CASES[name]
    torch.manual_seed(0)
    ours, theirs = case.ours(), case.theirs()
    assert parameters(ours) == pytest.approx(parameters(theirs), rel=1e-3)  # demo: 128 biases apart
    x = torch.randn(2, *case.shape)
    t = torch.tensor([10, 500])
    labels = torch.tensor([1, 2]) if case.num_classes else None

    def forward_flops(side, model):
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            out = call(side, model, x, t, labels)
        assert out.shape == x.shape
        return counter.get_total_flops()

    theirs_flops = forward_flops("theirs", theirs)
    ours_flops = forward_flops("ours", ours)
    with monkeypatch.context() as m:
        m.setattr(upsample, "upsample_conv3x3", plain_upsample_conv3x3)
        ours_as_written = forward_flops("ours", ours)
    assert ours_as_written == pytest.approx(theirs_flops, rel=0.01)
    # each upsampling layer: 4 instead of 9 multiply-adds per output pixel and channel pair, plus
    # the (batch-independent) product that derives its 4×4 kernel
    outputs = {}  # upsampling layer → its output shape

    def record(module, args, out):
        outputs[module] = out.shape

    hooks = [m.register_forward_hook(record) for m in ours.modules() if isinstance(m, upsample.Upsample)]
    forward_flops("ours", ours)
    for h in hooks:
        h.remove()
    assert outputs
    saved = sum(2 * n * m.conv.in_channels * c * (9 - 4) * h * w for m, (n, c, h, w) in outputs.items())
    derive = sum(2 * m.conv.out_channels * 16 * 9 * m.conv.in_channels for m in outputs)
    assert ours_flops == ours_as_written - saved + derive


def test_throughput_scripts_run_end_to_end_on_cpu(capsys):
    """A smoke run of both benchmark scripts at a tiny size, so a GPU session does not spend its
    minutes on a broken script (no timing is checked)."""
    import sampling_throughput
    import train_throughput

    train_throughput.main(["--case", "demo", "--batch", "4", "--rounds", "1", "--steps", "1", "--warmup", "1"])
    sampling_throughput.main(["--case", "demo", "--batch", "2", "--rounds", "1", "--repeat", "1",
                              "--runs", "dpmpp_2m-10"])
    out = capsys.readouterr().out
    assert "ours / diffusers:" in out and "dpmpp_2m-10" in out


def test_plain_upsampling_flag_switches_our_upsampling_for_the_run(monkeypatch, capsys):
    """``--plain-upsampling`` (the A/B of difflab.nn.upsample on a new device) reaches our network."""
    import train_throughput
    from difflab.models import unet

    for module in (unet, upsample):  # restored after the test: the flag patches the process
        monkeypatch.setattr(module, "upsample_conv3x3", module.upsample_conv3x3)
    train_throughput.main(["--case", "demo", "--batch", "16", "--rounds", "1", "--steps", "1", "--warmup", "0",
                           "--plain-upsampling"])
    assert unet.upsample_conv3x3 is upsample.upsample_conv3x3 is plain_upsample_conv3x3
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("diff")}
    assert rows["difflab"][4] == rows["diffusers"][4]  # GFLOP/step: as written, ours counts what theirs does


def test_ours_contiguous_flag_keeps_our_network_in_nchw(monkeypatch, capsys):
    """``--ours-contiguous`` (the memory-format A/B on a new device) reaches our side of both scripts."""
    import sampling_throughput
    import train_throughput

    formats = []
    real = train_throughput.TrainStep.__init__

    def spy(self, *args, **kwargs):
        real(self, *args, **kwargs)
        if self.side == "ours":
            formats.append(max((p for p in self.model.parameters() if p.dim() == 4), key=torch.numel).is_contiguous())

    monkeypatch.setattr(train_throughput.TrainStep, "__init__", spy)
    for flags in ([], ["--ours-contiguous"]):
        train_throughput.main(["--case", "demo", "--batch", "4", "--rounds", "1", "--steps", "1", "--warmup", "0",
                               *flags])
    assert formats == [False, True]  # channels-last weights are not contiguous in NCHW
    headers = [line for line in capsys.readouterr().out.splitlines() if line.startswith("demo:")]
    assert ["ours NCHW" in h for h in headers] == [False, True]
    sampler = sampling_throughput.Sampler("ours", CASES["demo"], torch.device("cpu"), 2,
                                          "ddim-50", False, ours_channels_last=False)
    assert all(p.is_contiguous() for p in sampler.net.model.parameters())  # NCHW: every weight
