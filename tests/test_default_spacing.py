"""sample()'s default spacing: the generic tuned levels where they exist, the measured rule of
spacing.rule_spacing elsewhere, and that an explicit spacing (the caller's, or the one a run's
config names) is never replaced by either."""

from types import SimpleNamespace

import pytest
import torch

from difflab import schedules
from difflab.analytic import GaussianMixture
from difflab.pipelines.generate import SamplerSettings
from difflab.sampling import DEFAULT_METHOD, DETERMINISTIC, SPACINGS, default_spacing, get_sigmas, model_calls, sample
from difflab.sampling.generic_levels import GENERIC_LEVELS, generic_levels
from difflab.sampling.spacing import rule_spacing

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
def test_rule_spacing_per_schedule_and_steps(schedule, steps, expected):
    assert rule_spacing(schedule, steps) == expected
    tabled = steps in (10, 20)  # the generic levels' step counts on these three schedules
    assert default_spacing(schedule, steps) == ("generic" if tabled else expected)


def test_default_spacing_on_a_zero_terminal_snr_schedule_is_trailing():
    schedule = schedules.get_schedule("linear", zero_terminal_snr=True)
    assert default_spacing(schedule, 20) == "trailing"  # another sigma range: no generic levels


def test_generic_levels_are_a_descending_walk_from_sigma_max_and_fall_back_to_the_rule():
    assert set(GENERIC_LEVELS) == {"linear", "scaled_linear", "cosine"}
    for schedule in (LINEAR, SCALED, COSINE):
        for steps in (10, 20):
            levels = generic_levels(schedule, steps)
            assert len(levels) == steps and float(levels[0]) == pytest.approx(float(schedule.sigma_max), rel=1e-12)
            assert (levels[1:] < levels[:-1]).all() and float(levels[-1]) >= float(schedule.sigma_min) * (1 - 1e-9)
            assert torch.equal(get_sigmas(schedule, steps, "generic")[:-1], levels)
        for steps in (7, 12):  # no entry: the rule's levels, exactly
            assert generic_levels(schedule, steps) is None
            assert torch.equal(get_sigmas(schedule, steps, "generic"), get_sigmas(schedule, steps,
                                                                                 rule_spacing(schedule, steps)))
    for other in (schedules.get_schedule("linear", num_steps=500), schedules.EDMSchedule()):
        assert generic_levels(other, 20) is None


def test_generic_levels_beat_the_rule_on_a_mixture_outside_their_family():
    """Seed 3 in 16 dimensions (the family: seeds 101-115): at 10 and 20 steps of the linear schedule."""
    data = GaussianMixture.random(8, 16, spread=1.0, std_range=(0.3, 0.6), seed=3)
    noise = torch.randn(128, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = noise * float(LINEAR.prior_std(LINEAR.sigma_max))
    exact = data.denoise(data.ode_solution(x, LINEAR.sigma_max, LINEAR.sigma_min), LINEAR.sigma_min)
    for steps in (10, 20):
        err = {spacing: float((sample(data.model(LINEAR), noise, LINEAR, method="unipc_3", steps=steps,
                                      spacing=spacing) - exact).norm()) for spacing in ("generic", "trailing",
                                                                                       "log_snr", "karras")}
        assert err["generic"] < min(err["trailing"], err["log_snr"], err["karras"])


@pytest.mark.parametrize("schedule", [LINEAR, SCALED, COSINE], ids=["linear", "scaled_linear", "cosine"])
def test_the_default_is_within_1_1x_of_every_fixed_configuration_on_a_mixture_outside_the_fit(schedule):
    """The generic levels' purpose (a minimax fit): UniPC-3 on them against every deterministic
    sampler on every named spacing, at 10 and 20 model calls (Heun at the steps whose calls fit),
    on a 24-dimensional mixture neither in their family (seeds 101-112) nor in the benchmark."""
    data = GaussianMixture.random(8, 24, spread=1.0, std_range=(0.3, 0.6), seed=9)
    noise = torch.randn(128, 24, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    x = noise * float(schedule.prior_std(schedule.sigma_max))
    exact = data.denoise(data.ode_solution(x, schedule.sigma_max, schedule.sigma_min), schedule.sigma_min)

    def error(method, steps, spacing=None):
        levels = {} if spacing is None else {"spacing": spacing}
        return float((sample(data.model(schedule), noise, schedule, method=method, steps=steps, **levels)
                      - exact).norm() / exact.norm())

    for calls in (10, 20):
        default = error(DEFAULT_METHOD, calls)
        best = min(error(method, max(s for s in range(1, calls + 1) if model_calls(method, s) <= calls), spacing)
                   for method in DETERMINISTIC for spacing in SPACINGS)
        assert default <= 1.1 * best, (calls, default, best)


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
def test_sample_uses_the_default_and_never_overrides_an_explicit_spacing(schedule, steps):
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


def test_resolve_falls_back_to_the_default_only_when_nothing_names_a_spacing():
    assert SamplerSettings.resolve(_model(LINEAR, {}), steps=20).spacing == "generic"
    assert SamplerSettings.resolve(_model(LINEAR, {}), steps=12).spacing == "log_snr"
    assert SamplerSettings.resolve(_model(LINEAR, {}), steps=11).spacing == "trailing"
    assert SamplerSettings.resolve(_model(SCALED, {"steps": 13}), None).spacing == "karras"
    # A run whose config names a spacing keeps it; a flag beats both.
    assert SamplerSettings.resolve(_model(LINEAR, {"spacing": "trailing"}), steps=20).spacing == "trailing"
    assert SamplerSettings.resolve(_model(LINEAR, {"spacing": "log_snr"}), steps=20, spacing="leading").spacing \
        == "leading"
    assert SamplerSettings.resolve(_model(COSINE, {}), steps=20, spacing="karras").spacing == "karras"
