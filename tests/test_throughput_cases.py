"""The throughput benchmarks compare like with like: our network and diffusers' of the same
architecture have the same parameter count and the same forward FLOPs (benchmarks/throughput_cases.py)."""

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

pytest.importorskip("diffusers", reason="pip install diffusers (the dev extra)")
sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
from throughput_cases import CASES, call, parameters  # noqa: E402


@pytest.mark.parametrize("name", ["demo", "unet"])
def test_unet_cases_match_diffusers_in_parameters_and_flops(name):
    case = CASES[name]
    torch.manual_seed(0)
    ours, theirs = case.ours(), case.theirs()
    assert parameters(ours) == pytest.approx(parameters(theirs), rel=1e-3)  # demo: 128 biases apart
    x = torch.randn(2, *case.shape)
    t = torch.tensor([10, 500])
    labels = torch.tensor([1, 2]) if case.num_classes else None
    flops = {}
    for side, model in (("ours", ours), ("theirs", theirs)):
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            out = call(side, model, x, t, labels)
        assert out.shape == x.shape
        flops[side] = counter.get_total_flops()
    assert flops["ours"] == pytest.approx(flops["theirs"], rel=0.01)


def test_throughput_scripts_run_end_to_end_on_cpu(capsys):
    """A smoke run of both benchmark scripts at a tiny size, so a GPU session does not spend its
    minutes on a broken script (no timing is checked)."""
    import sampling_throughput
    import train_throughput

    train_throughput.main(["--case", "demo", "--batch", "4", "--rounds", "1", "--steps", "1", "--warmup", "1"])
    sampling_throughput.main(["--case", "demo", "--batch", "2", "--rounds", "1", "--repeat", "1", "--runs", "dpmpp_2m-10"])
    out = capsys.readouterr().out
    assert "ours / diffusers:" in out and "dpmpp_2m-10" in out
