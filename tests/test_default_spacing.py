"""sample()'s default spacing: the measured rule of spacing.default_spacing, and that an explicit
spacing (the caller's, or the one a run's config names) is never replaced by it."""

from types import SimpleNamespace

import pytest
import torch

from difflab import schedules
from difflab.analytic import GaussianMixture
from difflab.pipelines.generate import SamplerSettings
from difflab.sampling import default_spacing, get_sigmas, sample

LINEAR, SCALED, COSINE = schedules.linear(), schedules.scaled_linear(), schedules.cosine()
MIXTURE = GaussianMixture.random(4, 2, std_range=(0.4, 0.6), seed=3)


@pytest.mark.parametrize("schedule,steps,expected", [
    # DDPM's linear schedule, ln(σ_max/σ_min) = 9.7: trailing below 1.2 x 9.7 steps, then log-SNR.
    (LINEAR, 5, "trailing"), (LINEAR, 10, "trailing"), (LINEAR, 11, "trailing"), (LINEAR, 12, "log_snr"),
    (LINEAR, 20, "log_snr"), (LINEAR, 50, "log_snr"),
    # scaled-linear, 6.2: log-SNR from 8 steps, Karras from 13.
    (SCALED, 5, "trailing"), (SCALED, 8, "log_snr"), (SCALED, 10, "log_snr"), (SCALED, 13, "karras"),
    (SCALED, 20, "karras"), (SCALED, 50, "karras"),
    # cosine, σ_max ≈ 20,000: always trailing.
    (COSINE, 5, "trailing"), (COSINE, 20, "trailing"), (COSINE, 50, "trailing"),
])
def test_default_spacing_per_schedule_and_steps(schedule, steps, expected):
    assert default_spacing(schedule, steps) == expected


def test_default_spacing_on_a_zero_terminal_snr_schedule_is_trailing():
    schedule = schedules.get_schedule("linear", zero_terminal_snr=True)
    assert default_spacing(schedule, 20) == "trailing"


def test_default_spacing_names_a_spacing_and_checks_steps():
    for schedule in (LINEAR, SCALED, COSINE, schedules.EDMSchedule()):
        for steps in (1, 2, 7, 25, 100):
            assert len(get_sigmas(schedule, steps, default_spacing(schedule, steps))) == steps + 1
    with pytest.raises(ValueError, match="steps must be an integer"):
        default_spacing(LINEAR, 0)


def _levels(schedule, **kwargs) -> list[float]:
    seen = []
    noise = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sample(MIXTURE.model(schedule), noise, schedule, method="unipc_3", callback=lambda s: seen.append(s.sigma),
           **kwargs)
    return seen


@pytest.mark.parametrize("schedule,steps", [(LINEAR, 20), (SCALED, 20), (COSINE, 10)])
def test_sample_uses_the_rule_and_never_overrides_an_explicit_spacing(schedule, steps):
    rule = default_spacing(schedule, steps)
    expected = get_sigmas(schedule, steps, rule)[:-1].tolist()
    assert _levels(schedule, steps=steps) == pytest.approx(expected, rel=1e-12)
    for explicit in ("trailing", "leading", "log_snr"):
        given = get_sigmas(schedule, steps, explicit)[:-1].tolist()
        assert _levels(schedule, steps=steps, spacing=explicit) == pytest.approx(given, rel=1e-12)


def _model(schedule, sample_defaults: dict):
    """What SamplerSettings.resolve reads from a loaded run: its schedule and config's sample section."""
    return SimpleNamespace(schedule=schedule, record=SimpleNamespace(sample_defaults=sample_defaults, distilled=None),
                           learned_variance=False)


def test_resolve_falls_back_to_the_rule_only_when_nothing_names_a_spacing():
    assert SamplerSettings.resolve(_model(LINEAR, {}), steps=20).spacing == "log_snr"
    assert SamplerSettings.resolve(_model(LINEAR, {}), steps=10).spacing == "trailing"
    assert SamplerSettings.resolve(_model(SCALED, {"steps": 20}), None).spacing == "karras"
    # A run whose config names a spacing keeps it; a flag beats both.
    assert SamplerSettings.resolve(_model(LINEAR, {"spacing": "trailing"}), steps=20).spacing == "trailing"
    assert SamplerSettings.resolve(_model(LINEAR, {"spacing": "log_snr"}), steps=20, spacing="leading").spacing \
        == "leading"
    assert SamplerSettings.resolve(_model(COSINE, {}), steps=20, spacing="karras").spacing == "karras"
