"""EDM's log-normal training noise levels on any schedule (``diffusion.t_sampling: lognormal``,
losses.sample_lognormal_t): the levels follow ln σ ~ N(−1.2, 1.2²) on a continuous schedule,
land on the nearest step of a discrete one, and the trainer draws its times from them."""

import math

import pytest
import torch

from difflab import losses, schedules
from difflab.data import load_dataset
from difflab.training.objectives.base import TrainingData
from difflab.training.objectives.diffusion import DiffusionObjective
from difflab.training.trainer import train
from helpers import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def test_continuous_levels_are_edms_log_normal():
    schedule = schedules.VPSchedule()
    t = losses.sample_lognormal_t(schedule, 200_000, torch.Generator().manual_seed(0))
    assert ((t >= schedule.t_min) & (t <= schedule.t_max)).all()
    log_sigma = torch.log(schedule.sigma(t))
    inside = (t > schedule.t_min) & (t < schedule.t_max)  # the clamped tails are the schedule's ends
    assert inside.double().mean() > 0.99
    # the levels inside the range: a normal N(-1.2, 1.2^2) cut at the range's ends
    lo, hi = (float(torch.log(schedule.sigma(torch.tensor(v)))) for v in (schedule.t_min, schedule.t_max))
    reference = torch.distributions.Normal(-1.2, 1.2)
    for q in (0.1, 0.5, 0.9):
        u = reference.cdf(torch.tensor(lo)) + q * (reference.cdf(torch.tensor(hi)) - reference.cdf(torch.tensor(lo)))
        assert float(log_sigma[inside].quantile(q)) == pytest.approx(float(reference.icdf(u)), abs=0.02)


def test_discrete_levels_are_the_nearest_step_of_the_drawn_sigma():
    schedule = schedules.cosine()
    generator = torch.Generator().manual_seed(1)
    t = losses.sample_lognormal_t(schedule, 4096, generator)
    assert torch.equal(t, t.round()) and t.min() >= 0 and t.max() <= schedule.num_steps - 1
    sigma = torch.exp(-1.2 + 1.2 * torch.randn(4096, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    exact = schedule.t_from_sigma(sigma).clamp(0, schedule.num_steps - 1)
    assert (t - exact).abs().max() <= 0.5
    # half the levels below e^-1.2: the median step is the one of σ = e^-1.2
    assert float(t.median()) == pytest.approx(float(schedule.t_from_sigma(torch.tensor(math.exp(-1.2)))), abs=8)


def objective(tmp_path, *extra) -> DiffusionObjective:
    config = tiny_config(tmp_path, *extra)
    dataset = load_dataset("digits", "train")
    return DiffusionObjective(config, TrainingData(dataset, dataset.images, None, torch.device("cpu")))


def test_the_trainer_draws_lognormal_times_and_trains_with_them(tmp_path):
    lognormal = objective(tmp_path, "diffusion.t_sampling=lognormal")
    x0 = torch.zeros(512, 1, 8, 8)
    t, _ = lognormal.draw_t_and_noise(x0, 3, torch.Generator().manual_seed(0))
    seed = lognormal.config.train.seed + 3
    assert torch.equal(t, losses.sample_lognormal_t(lognormal.schedule, 512, torch.Generator().manual_seed(seed)))
    t_uniform, _ = objective(tmp_path).draw_t_and_noise(x0, 3, torch.Generator().manual_seed(0))
    assert not torch.equal(t, t_uniform)
    train(tiny_config(tmp_path / "run", "diffusion.t_sampling=lognormal", "train.steps=3"), progress=False)
    assert (tmp_path / "run" / "checkpoint" / "model.safetensors").is_file()
