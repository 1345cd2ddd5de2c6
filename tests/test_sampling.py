"""Samplers on closed-form data: convergence order, equivalences, determinism, inversion, errors."""

import math

import pytest
import torch

from difflab import schedules
from difflab.analytic import GaussianMixture
from difflab.denoiser import Denoiser
from difflab.sampling import SAMPLERS, Step, get_sigmas, invert, model_calls, sample

SCHEDULE = schedules.linear()
GAUSS = GaussianMixture.gaussian(3, mean=0.3, std=0.5)
MIXTURE = GaussianMixture.random(4, 2, std_range=(0.4, 0.6), seed=3)


def _noise(n, dim, seed=0):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _reference(data, noise):
    """Exact ODE solution from σ_max to σ_min, then the final x̂₀ every sampler ends with."""
    x = noise * float(SCHEDULE.prior_std(SCHEDULE.sigma_max))
    x = data.ode_solution(x, SCHEDULE.sigma_max, SCHEDULE.sigma_min)
    return data.denoise(x, SCHEDULE.sigma_min)


@pytest.fixture(scope="module")
def mixture_problem():
    noise = _noise(24, MIXTURE.dim)
    return noise, _reference(MIXTURE, noise)


def _observed_order(data, noise, ref, method, steps_list):
    model = data.model(SCHEDULE, "epsilon")
    errors, calls = [], []
    for steps in steps_list:
        x = sample(model, noise, SCHEDULE, method=method, steps=steps, spacing="log_snr")
        errors.append(float((x - ref).norm() / ref.norm()))
        calls.append(model_calls(method, steps))
    return math.log(errors[-2] / errors[-1]) / math.log(calls[-1] / calls[-2]), errors


@pytest.mark.parametrize("method,order", [("ddim", 1), ("euler", 1), ("heun", 2), ("dpmpp_2m", 2), ("unipc", 3)])
def test_convergence_order_gaussian(method, order):
    noise = _noise(32, GAUSS.dim)
    observed, errors = _observed_order(GAUSS, noise, _reference(GAUSS, noise), method, [32, 64, 128])
    assert errors[-1] < errors[0]
    assert observed == pytest.approx(order, abs=0.25), f"errors {errors}"


@pytest.mark.parametrize("method,order", [("euler", 1), ("heun", 2), ("dpmpp_2m", 2)])
def test_convergence_order_mixture(method, order, mixture_problem):
    noise, ref = mixture_problem
    observed, errors = _observed_order(MIXTURE, noise, ref, method, [32, 64, 128])
    assert observed == pytest.approx(order, abs=0.25), f"errors {errors}"


def test_higher_order_solvers_beat_euler_at_equal_calls(mixture_problem):
    noise, ref = mixture_problem
    model = MIXTURE.model(SCHEDULE, "epsilon")
    err = {}
    for method in ["euler", "dpmpp_2m", "dpmpp_3m", "unipc", "unipc_3"]:
        x = sample(model, noise, SCHEDULE, method=method, steps=20, spacing="log_snr")
        err[method] = float((x - ref).norm() / ref.norm())
    assert max(err[m] for m in ["dpmpp_2m", "dpmpp_3m", "unipc", "unipc_3"]) < err["euler"] / 4, err


def test_ddim_eta0_equals_euler():
    model = GAUSS.model(SCHEDULE)
    noise = _noise(8, 3)
    a = sample(model, noise, SCHEDULE, method="ddim", steps=12)
    b = sample(model, noise, SCHEDULE, method="euler", steps=12)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", sorted(SAMPLERS))
def test_every_sampler_runs_and_is_deterministic_with_a_seed(method):
    model = MIXTURE.model(SCHEDULE)
    noise = _noise(6, 2).float()
    a = sample(model, noise, SCHEDULE, method=method, steps=6, generator=11)
    b = sample(model, noise, SCHEDULE, method=method, steps=6, generator=11)
    assert a.shape == noise.shape and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, b)


def test_per_sample_seeds_make_results_batch_independent():
    model = MIXTURE.model(SCHEDULE)
    noise = _noise(4, 2)
    full = sample(model, noise, SCHEDULE, method="euler_ancestral", steps=10, seeds=[1, 2, 3, 4])
    part = sample(model, noise[2:], SCHEDULE, method="euler_ancestral", steps=10, seeds=[3, 4])
    torch.testing.assert_close(full[2:], part, rtol=1e-12, atol=1e-12)


def test_stochastic_samplers_sample_the_data_distribution():
    """Stochastic samples of a Gaussian have its mean and std. First-order ancestral steps shrink
    the variance by O(1/steps) (≈9% at 50 steps), so they get 200; the second-order SDE solver 50."""
    model = GAUSS.model(SCHEDULE)
    noise = _noise(4000, 3, seed=5)
    for method, steps in [("ddpm", 200), ("euler_ancestral", 200), ("dpmpp_2m_sde", 50)]:
        x = sample(model, noise, SCHEDULE, method=method, steps=steps, generator=3)
        assert float(x.mean()) == pytest.approx(0.3, abs=0.03), method
        assert float(x.std()) == pytest.approx(0.5, rel=0.05), method


def test_callback_sees_every_step():
    seen: list[Step] = []
    sample(GAUSS.model(SCHEDULE), _noise(2, 3), SCHEDULE, method="dpmpp_2m", steps=7, callback=seen.append)
    assert [s.i for s in seen] == list(range(7)) and seen[-1].sigma_next == 0.0
    assert seen[0].sigma == pytest.approx(SCHEDULE.sigma_max)


def test_final_denoise_option():
    sig = get_sigmas(SCHEDULE, 10, "karras", final_denoise=False)
    assert float(sig[-1]) == pytest.approx(SCHEDULE.sigma_min) and len(sig) == 10  # already ends at σ_min
    sig = get_sigmas(SCHEDULE, 10, "trailing", final_denoise=False)
    assert float(sig[-1]) == pytest.approx(SCHEDULE.sigma_min) and len(sig) == 11
    assert float(get_sigmas(SCHEDULE, 10, "trailing")[-1]) == 0.0


def test_spacings_are_descending_and_in_range():
    for name in ["leading", "trailing", "linspace", "log_snr", "karras"]:
        for sch in [SCHEDULE, schedules.VPSchedule(), schedules.EDMSchedule()]:
            s = get_sigmas(sch, 9, name)
            assert len(s) == 10 and (s[:-1] > s[1:]).all(), (name, sch)
            assert float(s[0]) <= sch.sigma_max * (1 + 1e-9) and float(s[-2]) >= sch.sigma_min * (1 - 1e-9)


def test_learned_variance_ddpm_interpolates():
    """With the variance output at −1 learned DDPM equals fixed_small, at +1 fixed_large."""
    eps_model = GAUSS.model(SCHEDULE)
    noise = _noise(5, 3)
    for value, fixed in [(-1.0, "fixed_small"), (1.0, "fixed_large")]:
        def model(x_t, t, value=value):
            return torch.cat([eps_model(x_t, t), torch.full_like(x_t, value)], dim=1)

        d = Denoiser(model, SCHEDULE, learned_variance=True)
        a = sample(d, noise, method="ddpm", steps=15, generator=4, variance="learned")
        b = sample(eps_model, noise, SCHEDULE, method="ddpm", steps=15, generator=4, variance=fixed)
        torch.testing.assert_close(a, b)


def test_ddim_inversion_round_trip():
    """image → noise → image; the round-trip error is first order and shrinks with steps."""
    model = MIXTURE.model(SCHEDULE)
    x0 = MIXTURE.sample(16, torch.Generator().manual_seed(9))
    errors = []
    for steps in [25, 100]:
        noise = invert(model, x0, SCHEDULE, steps=steps, spacing="log_snr")
        assert float(noise.std()) == pytest.approx(1.0, abs=0.35)  # it looks like noise
        back = sample(model, noise, SCHEDULE, method="ddim", steps=steps, spacing="log_snr")
        errors.append(float((back - x0).norm() / x0.norm()))
    assert errors[1] < 0.05 and errors[1] < errors[0] / 3, errors


def test_clip_x0_keeps_samples_in_range():
    wide = GaussianMixture.gaussian(4, 0.0, 2.0)
    x = sample(wide.model(SCHEDULE), _noise(64, 4), SCHEDULE, method="dpmpp_2m", steps=10, clip_x0=1.0)
    assert float(x.abs().max()) <= 1.0 + 1e-6


# -- bad input -------------------------------------------------------------------------------
def test_unknown_sampler_spacing_and_steps():
    model = GAUSS.model(SCHEDULE)
    noise = _noise(2, 3)
    with pytest.raises(ValueError, match="unknown sampler 'dpm'.*dpmpp_2m"):
        sample(model, noise, SCHEDULE, method="dpm")
    with pytest.raises(ValueError, match="unknown step spacing 'karas'.*karras"):
        sample(model, noise, SCHEDULE, spacing="karas")
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        sample(model, noise, SCHEDULE, steps=0)
    with pytest.raises(ValueError, match="has no option 'eta'"):
        sample(model, noise, SCHEDULE, method="dpmpp_2m", eta=0.5)
    with pytest.raises(ValueError, match="pass the schedule"):
        sample(model, noise)


def test_wrong_shape_and_nan_are_clear_errors():
    noise = _noise(2, 3)
    with pytest.raises(ValueError, match=r"returned shape \(2, 6\), expected \(2, 3\)"):
        sample(lambda x, t: torch.cat([x, x], 1), noise, SCHEDULE, steps=3)
    with pytest.raises(FloatingPointError, match="NaN or inf at model call 1"):
        sample(lambda x, t: x * float("nan"), noise, SCHEDULE, steps=3)
