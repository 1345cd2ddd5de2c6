"""Post-hoc EMA (Karras et al. 2024): the power-function average against its closed form, the
least-squares reconstruction against averages tracked directly, and the trainer and CLI paths."""

import math
import shutil

import pytest
import torch
from torch import nn

from difflab.checkpoint import load_state
from difflab.pipelines import DiffusionModel, generate
from difflab.training.config import ConfigError
from difflab.training.posthoc_ema import (
    PowerEMA,
    coefficients,
    gamma_to_sigma_rel,
    list_snapshots,
    reconstruct,
    sigma_rel_to_gamma,
)
from difflab.training.trainer import train
from helpers import cli, tiny_config


def test_gamma_of_the_papers_widths():
    # the paper's Table/§3.1: sigma_rel 0.05 and 0.10 are gamma 16.97 and 6.94
    assert sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.01)
    assert sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.01)
    for s in (0.01, 0.07, 0.2, 0.28):
        assert gamma_to_sigma_rel(sigma_rel_to_gamma(s)) == pytest.approx(s, rel=1e-9)
    for bad in (0.0, -0.1, 0.29, 1.0):
        with pytest.raises(ValueError, match="sigma_rel"):
            sigma_rel_to_gamma(bad)


def scalar_model(value: float) -> nn.Module:
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(value)
    return model


def test_power_ema_is_the_closed_form_average():
    """β(t) = (1 − 1/t)^(γ+1) telescopes: step τ's weights get (τ^(γ+1) − (τ−1)^(γ+1)) / t^(γ+1)."""
    values = torch.randn(300, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model = scalar_model(0.0).double()
    power = PowerEMA(model, (0.05, 0.2))
    for t, v in enumerate(values.tolist(), 1):
        model.weight.data.fill_(v)
        power.update(model, t)
    t = len(values)
    tau = torch.arange(1, t + 1, dtype=torch.float64)
    for gamma, average in zip(power.gammas, power.averages):
        w = (tau ** (gamma + 1) - (tau - 1) ** (gamma + 1)) / t ** (gamma + 1)
        assert w.sum().item() == pytest.approx(1.0, rel=1e-12)
        assert average["weight"].item() == pytest.approx((w * values).sum().item(), rel=1e-9, abs=1e-12)


def test_coefficients_reproduce_a_snapshot_exactly_and_fit_others_closely():
    gammas = [sigma_rel_to_gamma(0.05), sigma_rel_to_gamma(0.10)]
    snaps = [(float(t), g) for t in range(100, 2001, 100) for g in gammas]
    x, error = coefficients(snaps, (2000.0, gammas[1]))
    assert error < 1e-6 and x[-1].item() == pytest.approx(1.0, abs=1e-6)
    for s in (0.04, 0.07, 0.13):
        x, error = coefficients(snaps, (2000.0, sigma_rel_to_gamma(s)))
        assert error < 0.05 and x.sum().item() == pytest.approx(1.0, abs=0.02)
    # an average of an earlier step uses only what was there by then
    _, error = coefficients(snaps[:20], (1000.0, sigma_rel_to_gamma(0.07)))
    assert error < 0.05


def test_reconstruction_matches_an_average_tracked_directly(tmp_path):
    """Weights on a smooth random trajectory; the average of width 0.07 made from snapshots of the
    0.05 and 0.10 averages is the one a 0.07 average tracked alongside ends at, to the fit's error."""
    gen = torch.Generator().manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)).double()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    drift = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in start.items()}
    power, direct = PowerEMA(model, (0.05, 0.10)), PowerEMA(model, (0.07,))
    for t in range(1, 1201):
        with torch.no_grad():
            for k, p in model.state_dict().items():  # a curved path plus a little noise
                p.copy_(start[k] + drift[k] * math.sin(t / 400) + 0.01 * torch.randn(p.shape, generator=gen,
                                                                                   dtype=torch.float64))
        power.update(model, t)
        direct.update(model, t)
        if t % 50 == 0:
            power.save_snapshot(tmp_path, t)
    state, record = reconstruct(tmp_path, 0.07)
    assert record["step"] == 1200 and record["snapshots"] == 24 and record["profile_error"] < 0.05
    spread = max((direct.averages[0][k] - start[k]).abs().max().item() for k in start)
    for k, value in direct.averages[0].items():
        assert (state[k] - value).abs().max().item() < 0.02 * spread, k
    # a snapshot's own width at its own step comes back as that snapshot
    state, record = reconstruct(tmp_path, 0.10, step=600)
    assert record["snapshots"] == 12
    own = load_state(tmp_path / "posthoc-ema" / "step-0000600", kind="posthoc_ema_snapshot")[1]["posthoc_ema_1"]
    for k, value in own.items():
        torch.testing.assert_close(state[k], value, rtol=1e-6, atol=1e-9)


def test_trainer_snapshots_resume_and_the_cli_makes_a_sampling_run(tmp_path, capsys):
    full, part = tmp_path / "full", tmp_path / "part"
    posthoc = ["train.posthoc_ema_every=2", "train.checkpoint_every=4"]
    train(tiny_config(full, "train.steps=8", *posthoc), progress=False)
    assert [s for s, _ in list_snapshots(full)] == [2, 4, 6, 8]
    train(tiny_config(part, "train.steps=4", *posthoc), progress=False)
    stale = part / "posthoc-ema" / "step-0000005"  # as a process killed after its checkpoint of step 4 leaves
    shutil.copytree(part / "posthoc-ema" / "step-0000004", stale)
    train(tiny_config(part, "train.steps=8", *posthoc), resume=part, progress=False)
    assert not stale.exists() and [s for s, _ in list_snapshots(part)] == [2, 4, 6, 8]
    a = load_state(full / "posthoc-ema" / "step-0000008", kind="posthoc_ema_snapshot")[1]
    b = load_state(part / "posthoc-ema" / "step-0000008", kind="posthoc_ema_snapshot")[1]
    for group in a:
        for k, v in a[group].items():
            torch.testing.assert_close(b[group][k], v, rtol=1e-5, atol=1e-6)

    assert cli(["posthoc-ema", str(full), "--list"]) == 0
    listing = capsys.readouterr().out
    assert "4 snapshots of steps 2 ... 8" in listing and "sigma_rel 0.080" in listing
    new = tmp_path / "made"
    assert cli(["posthoc-ema", str(full), "--sigma-rel", "0.1", "--out", str(new)]) == 0
    config, tensors, _ = load_state(new, with_extra=False)
    assert config["posthoc_ema"]["sigma_rel"] == 0.1 and not any(g.startswith("posthoc") for g in tensors)
    snapshot = load_state(full / "posthoc-ema" / "step-0000008", kind="posthoc_ema_snapshot")[1]["posthoc_ema_1"]
    for k, v in snapshot.items():  # the 0.10 average at the last step is a snapshot's own
        torch.testing.assert_close(tensors["ema"][k], v, rtol=1e-5, atol=1e-6)
    images, _ = generate(DiffusionModel.load(new), 2, steps=3)
    assert images.shape[0] == 2 and torch.isfinite(images).all()
    assert cli(["posthoc-ema", str(full), "--sigma-rel", "0.05", "0.1", "--out", str(tmp_path / "sweep")]) == 0
    assert (tmp_path / "sweep" / "sigma-0.050" / "checkpoint").is_dir()


def test_clear_errors(tmp_path, capsys):
    plain = tmp_path / "plain"
    train(tiny_config(plain, "train.steps=2"), progress=False)

    def one_line_error(*argv):
        assert cli(["posthoc-ema", *argv]) != 0
        err = capsys.readouterr().err.strip()
        assert "Traceback" not in err and len(err.splitlines()) == 1, err
        return err

    assert "train.posthoc_ema_every" in one_line_error(str(plain), "--sigma-rel", "0.1", "--out", str(tmp_path / "x"))
    assert "not a run folder" in one_line_error(str(tmp_path / "missing"), "--list")
    assert "--sigma-rel" in one_line_error(str(plain))
    with pytest.raises(ConfigError, match="without post-hoc EMA"):
        train(tiny_config(plain, "train.steps=4", "train.posthoc_ema_every=2"), resume=plain, progress=False)
    with pytest.raises(ConfigError, match="posthoc_ema_sigma_rels"):
        tiny_config(tmp_path / "y", "train.posthoc_ema_sigma_rels=[0.5]")
    run = tmp_path / "run"
    train(tiny_config(run, "train.steps=2", "train.posthoc_ema_every=1"), progress=False)
    assert "sigma_rel" in one_line_error(str(run), "--sigma-rel", "0.3", "--out", str(tmp_path / "z"))
    assert "at least 1" in one_line_error(str(run), "--sigma-rel", "0.1", "--step", "0", "--out", str(tmp_path / "z"))
    assert "last post-hoc EMA snapshot is of step 2" in one_line_error(str(run), "--sigma-rel", "0.1", "--step", "9",
                                                                        "--out", str(tmp_path / "z"))
    assert "sigma_rel" in one_line_error(str(run), "--sigma-rel", "0.1", "0.4", "--out", str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()  # the good width is not written beside the bad one
    assert cli(["posthoc-ema", str(run), "--sigma-rel", "0.1", "--out", str(tmp_path / "z")]) == 0
    assert "already holds" in one_line_error(str(run), "--sigma-rel", "0.1", "--out", str(tmp_path / "z"))
