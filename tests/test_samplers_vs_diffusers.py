"""Every sampler diffusers also has reproduces diffusers' scheduler loop to 1e-4 (relative).

Both sides get the same exact model function (a Gaussian mixture's ε-prediction), the same
initial noise, the same noise levels (read off the diffusers scheduler after ``set_timesteps``)
and, for stochastic samplers, the same torch generator seed: the draws line up one for one.
"""

import inspect

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is a test dependency: pip install -e '.[dev]'")

from difflab import schedules  # noqa: E402
from difflab.analytic import GaussianMixture  # noqa: E402
from difflab.denoiser import Denoiser  # noqa: E402
from difflab.sampling import sample  # noqa: E402

SCHEDULE = schedules.linear()
DATA = GaussianMixture.random(4, 3, std_range=(0.3, 0.6), seed=0)
SEED = 1234


def _noise(dtype):
    return torch.randn(16, 3, generator=torch.Generator().manual_seed(7), dtype=dtype)


def _run_diffusers(scheduler, model, noise, steps, step_kwargs=None, sigma_space=False):
    scheduler.set_timesteps(steps)
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    rng = {"generator": torch.Generator().manual_seed(SEED)} if takes_generator else {}
    timesteps = scheduler.timesteps
    sigma0 = SCHEDULE.sigma(torch.as_tensor(timesteps[0], dtype=torch.float64))
    # Start from the same point as ours: VP schedulers hold x_T = noise; σ-space ones x_T·√(1 + σ²).
    x = noise * float(SCHEDULE.prior_std(sigma0)) if sigma_space else noise.clone()
    for t in timesteps:
        x_in = scheduler.scale_model_input(x, t)
        out = model(x_in, torch.full((x.shape[0],), float(t), dtype=x.dtype))
        x = scheduler.step(out, t, x, **rng, **(step_kwargs or {})).prev_sample
    return x, timesteps


def _our_sigmas(timesteps, unique=False, end=0.0):
    t = torch.as_tensor(timesteps, dtype=torch.float64)
    if unique:  # Heun's diffusers timesteps repeat every interior point
        t = torch.unique_consecutive(t)
    return torch.cat([SCHEDULE.sigma(t), torch.tensor([end], dtype=torch.float64)])


def _assert_close(ours, theirs, tol=1e-4):
    rel = ((ours.double() - theirs.double()).norm() / theirs.double().norm()).item()
    assert rel < tol, f"relative difference {rel:.2e} exceeds {tol:.0e}"


SCHEDULER_KW = dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, num_train_timesteps=1000)

CASES = [
    # (id, scheduler factory, our method, our options, steps, dtype, sigma-space, diffusers step kwargs)
    ("ddpm_fixed_small",
     lambda: diffusers.DDPMScheduler(**SCHEDULER_KW, variance_type="fixed_small", clip_sample=False),
     "ddpm", dict(variance="fixed_small"), 25, torch.float64, False, None),
    ("ddpm_fixed_large",
     lambda: diffusers.DDPMScheduler(**SCHEDULER_KW, variance_type="fixed_large", clip_sample=False),
     "ddpm", dict(variance="fixed_large"), 25, torch.float64, False, None),
    ("ddim_leading", lambda: diffusers.DDIMScheduler(**SCHEDULER_KW, clip_sample=False),
     "ddim", {}, 20, torch.float64, False, None),
    ("ddim_trailing", lambda: diffusers.DDIMScheduler(**SCHEDULER_KW, clip_sample=False, timestep_spacing="trailing"),
     "ddim", {}, 10, torch.float64, False, None),
    ("ddim_eta", lambda: diffusers.DDIMScheduler(**SCHEDULER_KW, clip_sample=False),
     "ddim", dict(eta=0.6), 20, torch.float64, False, dict(eta=0.6)),
    ("dpmpp_2m_10", lambda: diffusers.DPMSolverMultistepScheduler(**SCHEDULER_KW, solver_order=2),
     "dpmpp_2m", {}, 10, torch.float64, False, None),
    ("dpmpp_2m_20", lambda: diffusers.DPMSolverMultistepScheduler(**SCHEDULER_KW, solver_order=2),
     "dpmpp_2m", {}, 20, torch.float64, False, None),
    ("dpmpp_3m_10", lambda: diffusers.DPMSolverMultistepScheduler(**SCHEDULER_KW, solver_order=3),
     "dpmpp_3m", {}, 10, torch.float64, False, None),
    ("dpmpp_3m_20", lambda: diffusers.DPMSolverMultistepScheduler(**SCHEDULER_KW, solver_order=3),
     "dpmpp_3m", {}, 20, torch.float64, False, None),
    ("dpmpp_2m_sde", lambda: diffusers.DPMSolverMultistepScheduler(
        **SCHEDULER_KW, solver_order=2, algorithm_type="sde-dpmsolver++"),
     "dpmpp_2m_sde", {}, 20, torch.float32, False, None),
    ("unipc_2", lambda: diffusers.UniPCMultistepScheduler(**SCHEDULER_KW, solver_order=2),
     "unipc", {}, 10, torch.float64, False, None),
    ("unipc_3", lambda: diffusers.UniPCMultistepScheduler(**SCHEDULER_KW, solver_order=3),
     "unipc", dict(order=3), 20, torch.float64, False, None),
    # diffusers' bh1 returns NaN on a step to σ = 0 (B(h) = h is infinite there): end at σ_min.
    ("unipc_3_bh1", lambda: diffusers.UniPCMultistepScheduler(
        **SCHEDULER_KW, solver_order=3, solver_type="bh1", final_sigmas_type="sigma_min"),
     "unipc", dict(order=3, variant="bh1"), 12, torch.float64, False, None),
    ("euler", lambda: diffusers.EulerDiscreteScheduler(**SCHEDULER_KW, timestep_spacing="trailing"),
     "euler", {}, 20, torch.float64, True, None),
    ("heun", lambda: diffusers.HeunDiscreteScheduler(**SCHEDULER_KW, timestep_spacing="trailing"),
     "heun", {}, 10, torch.float64, True, None),
    ("euler_ancestral", lambda: diffusers.EulerAncestralDiscreteScheduler(**SCHEDULER_KW, timestep_spacing="trailing"),
     "euler_ancestral", {}, 20, torch.float64, True, None),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_diffusers(case):
    _, make, method, options, steps, dtype, sigma_space, step_kwargs = case
    model = DATA.model(SCHEDULE, "epsilon")
    noise = _noise(dtype)
    scheduler = make()
    theirs, timesteps = _run_diffusers(scheduler, model, noise, steps, step_kwargs, sigma_space)
    end = SCHEDULE.sigma_min if scheduler.config.get("final_sigmas_type") == "sigma_min" else 0.0
    sigmas = _our_sigmas(timesteps, unique=(method == "heun"), end=end)
    ours = sample(model, noise, SCHEDULE, method=method, sigmas=sigmas, generator=SEED, **options)
    if end > 0:  # diffusers returns the network-space x = s·x at σ_min
        ours = ours * float(SCHEDULE.scale_std_at_sigma(end)[0])
    _assert_close(ours, theirs)


def test_ddpm_learned_variance_matches_diffusers():
    """improved DDPM's learned range: log Σ = f·log β + (1 − f)·log β̃ with f = (v + 1)/2."""
    eps_model = DATA.model(SCHEDULE, "epsilon")

    def model(x_t, t):  # ε and a variance output in [−1, 1] that varies with x and t
        return torch.cat([eps_model(x_t, t), torch.tanh(x_t + t[:, None] / 500 - 1)], dim=1)

    noise = _noise(torch.float64)
    scheduler = diffusers.DDPMScheduler(**SCHEDULER_KW, variance_type="learned_range", clip_sample=False)
    theirs, timesteps = _run_diffusers(scheduler, model, noise, 25)
    denoiser = Denoiser(model, SCHEDULE, "epsilon", learned_variance=True)
    ours = sample(denoiser, noise, method="ddpm", sigmas=_our_sigmas(timesteps), generator=SEED, variance="learned")
    _assert_close(ours, theirs)


@pytest.mark.parametrize("prediction,diffusers_name", [("v", "v_prediction"), ("x0", "sample")])
def test_prediction_types_match_diffusers(prediction, diffusers_name):
    model = DATA.model(SCHEDULE, prediction)
    noise = _noise(torch.float64)
    scheduler = diffusers.DPMSolverMultistepScheduler(**SCHEDULER_KW, prediction_type=diffusers_name)
    theirs, timesteps = _run_diffusers(scheduler, model, noise, 15)
    ours = sample(model, noise, SCHEDULE, method="dpmpp_2m", sigmas=_our_sigmas(timesteps), prediction=prediction)
    _assert_close(ours, theirs)


@pytest.mark.parametrize("name,ours", [
    ("linear", schedules.linear()),
    ("scaled_linear", schedules.scaled_linear()),
    ("squaredcos_cap_v2", schedules.cosine()),
    ("sigmoid", schedules.sigmoid()),
])
def test_schedules_match_diffusers(name, ours):
    kw = dict(beta_start=0.00085, beta_end=0.012) if name == "scaled_linear" else {}
    theirs = diffusers.DDPMScheduler(beta_schedule=name, **kw).alphas_cumprod.double()
    torch.testing.assert_close(ours.alphas_cumprod, theirs, rtol=2e-6, atol=1e-6)


def test_zero_terminal_snr_matches_diffusers():
    theirs = diffusers.DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True
    ).alphas_cumprod.double()
    ours = schedules.rescale_zero_terminal_snr(schedules.scaled_linear()).alphas_cumprod
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert ours[-1] == 0


@pytest.mark.parametrize("spacing,steps", [("leading", 20), ("trailing", 12)])
def test_spacings_match_diffusers_ddim(spacing, steps):
    from difflab.sampling import get_sigmas

    scheduler = diffusers.DDIMScheduler(**SCHEDULER_KW, timestep_spacing=spacing)
    scheduler.set_timesteps(steps)
    expected = SCHEDULE.sigma(scheduler.timesteps.double())
    torch.testing.assert_close(get_sigmas(SCHEDULE, steps, spacing)[:-1], expected)


def test_linspace_matches_diffusers_euler():
    from difflab.sampling import get_sigmas

    scheduler = diffusers.EulerDiscreteScheduler(**SCHEDULER_KW, timestep_spacing="linspace")
    scheduler.set_timesteps(13)
    # diffusers interpolates σ linearly between integer steps, we interpolate log σ: compare t.
    ours_t = SCHEDULE.t_from_sigma(get_sigmas(SCHEDULE, 13, "linspace")[:-1])
    torch.testing.assert_close(ours_t, scheduler.timesteps.double(), rtol=0, atol=1e-3)
