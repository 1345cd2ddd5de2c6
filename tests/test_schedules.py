"""Schedules: known values, inverses, and the relations between ᾱ, σ, log-SNR and (s, d)."""

import math

import pytest
import torch

from difflab import schedules

ALL = [
    schedules.linear(),
    schedules.scaled_linear(),
    schedules.cosine(),
    schedules.sigmoid(),
    schedules.rescale_zero_terminal_snr(schedules.linear()),
    schedules.VPSchedule(),
    schedules.CosineSchedule(),
    schedules.VESchedule(),
    schedules.EDMSchedule(),
]


def test_linear_known_values():
    s = schedules.linear()
    assert s.betas[0] == pytest.approx(1e-4) and s.betas[-1] == pytest.approx(0.02)
    # ᾱ_0 = 1 − β_0; ᾱ_999 of DDPM's schedule is about 4.04e-5.
    assert float(s.alpha_bar(0)) == pytest.approx(1 - 1e-4, rel=1e-12)
    assert float(s.alpha_bar(999)) == pytest.approx(4.0358e-5, rel=1e-3)
    assert s.sigma_max == pytest.approx(157.407, rel=1e-4)


def test_cosine_matches_its_formula():
    s = schedules.cosine(num_steps=1000)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in [0, 10, 500, 900]:
        assert float(s.alpha_bar(t)) == pytest.approx(f((t + 1) / 1000) / f(0), rel=1e-9)
    assert float(s.betas.max()) == pytest.approx(0.999)  # clipped


@pytest.mark.parametrize("s", ALL, ids=lambda s: s.name)
def test_relations_and_inverse(s):
    t = torch.linspace(s.t_min, s.t_max, 37, dtype=torch.float64)
    lam = s.log_snr(t)
    ab = s.alpha_bar(t)
    torch.testing.assert_close(s.sigma(t), torch.exp(-lam / 2))
    torch.testing.assert_close(ab, torch.sigmoid(lam))
    torch.testing.assert_close(s.alpha(t) ** 2, ab)
    scale, std = s.scale_std(t)
    torch.testing.assert_close(std / scale, s.sigma(t))  # σ = d/s in every schedule
    if s.variance_preserving:
        torch.testing.assert_close(scale**2 + std**2, torch.ones_like(t))
    assert (lam[1:] < lam[:-1]).all(), "log-SNR must fall with t"
    torch.testing.assert_close(s.t_from_log_snr(lam), t, atol=1e-8 * max(1.0, s.t_max), rtol=1e-8)
    torch.testing.assert_close(s.t_from_sigma(s.sigma(t)), t, atol=1e-8 * max(1.0, s.t_max), rtol=1e-8)


def test_fractional_t_interpolates_log_sigma():
    s = schedules.linear()
    mid = float(s.sigma(10.25))
    lo, hi = float(s.sigma(10)), float(s.sigma(11))
    assert mid == pytest.approx(math.exp(0.75 * math.log(lo) + 0.25 * math.log(hi)), rel=1e-12)


def test_zero_terminal_snr():
    s = schedules.rescale_zero_terminal_snr(schedules.scaled_linear())
    assert float(s.alphas_cumprod[-1]) == 0.0
    assert float(s.alpha_bar(0)) == pytest.approx(float(schedules.scaled_linear().alpha_bar(0)))
    assert math.isfinite(s.sigma_max) and s.sigma_max > 1000


def test_config_round_trip():
    for s in ALL:
        again = schedules.schedule_from_config(s.to_config())
        t = torch.linspace(s.t_min, s.t_max, 5, dtype=torch.float64)
        torch.testing.assert_close(again.log_snr(t), s.log_snr(t))


def test_unknown_schedule_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown noise schedule 'lineer'.*linear"):
        schedules.get_schedule("lineer")
    with pytest.raises(ValueError, match="bad arguments"):
        schedules.get_schedule("linear", bogus=1)
