"""Improved DDPM's L_vlb (Nichol & Dhariwal 2021, §3.1) and importance sampling of t (§3.3, eq. 18):
the sampler's warm-up, its probabilities and unbiased weights on hand-made histories, the loss's
gradients, the config keys, a tiny L_vlb run whose bound falls, and exact resume / DDP with the
history in the checkpoint."""

import json
import math

import pytest
import torch

from difflab import losses, process, schedules
from difflab.checkpoint import load_state
from difflab.data import load_dataset
from difflab.data.convert import to_float
from difflab.likelihood import bits_per_dim, vlb_terms
from difflab.pipelines import DiffusionModel
from difflab.training.config import ConfigError, load_config
from difflab.training.trainer import train
from helpers import TINY, assert_two_processes_match_one, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

S = schedules.linear()
# L_vlb with learned Σ and importance-sampled t on 20 steps: TINY's batches of 16 give every t its
# 10 values after 24 steps (seed 0), so importance sampling starts at step 25.
VLB = ["diffusion.loss=vlb", "diffusion.learned_variance=true", "diffusion.t_sampling=importance",
       "diffusion.schedule_options={num_steps: 20}"]


def losses_of(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def filled(sampler: losses.ImportanceSampler, values: list[float]) -> losses.ImportanceSampler:
    """``sampler`` with value list ``values[t]`` seen at every t, in order."""
    for step, row in enumerate(values):
        for value in row:
            sampler.update(torch.tensor([float(step)]), torch.tensor([value]))
    return sampler


def test_the_sampler_is_uniform_until_every_t_has_its_history():
    sampler = losses.ImportanceSampler(5, history=3)
    # before: exactly the uniform integers sample_training_t draws, weight 1
    t = sampler.sample(64, torch.Generator().manual_seed(1))
    assert torch.equal(t, losses.sample_training_t(schedules.linear(num_steps=5), 64, torch.Generator().manual_seed(1)))
    filled(sampler, [[1.0, 2.0, 3.0]] * 4 + [[5.0, 5.0]])  # t = 4 has 2 of its 3 values
    assert not sampler.filled
    torch.testing.assert_close(sampler.probabilities(), torch.full((5,), 0.2, dtype=torch.float64))
    torch.testing.assert_close(sampler.weights(torch.tensor([0.0, 4.0])), torch.ones(2, dtype=torch.float64))
    sampler.update(torch.tensor([4.0]), torch.tensor([5.0]))
    assert sampler.filled and sampler.probabilities()[4] > 0.3  # t = 4's losses are the largest


def test_probabilities_are_the_root_mean_square_of_the_last_values():
    rows = [[1.0, 1.0, 1.0], [3.0, 4.0, 0.0], [0.0, 0.0, 2.0], [10.0, -10.0, 10.0]]
    sampler = filled(losses.ImportanceSampler(4, history=3, uniform_mix=0.0), rows)
    rms = torch.tensor([1.0, math.sqrt(25 / 3), math.sqrt(4 / 3), 10.0], dtype=torch.float64)
    torch.testing.assert_close(sampler.probabilities(), rms / rms.sum())
    # a new value pushes out the oldest: t = 1 keeps [4, 0, 6]
    sampler.update(torch.tensor([1.0]), torch.tensor([6.0]))
    rms[1] = math.sqrt(52 / 3)
    torch.testing.assert_close(sampler.probabilities(), rms / rms.sum())
    # the paper's code mixes in 0.001 of the uniform distribution: no t is left out
    mixed = filled(losses.ImportanceSampler(4, history=3), rows)
    mixed.update(torch.tensor([1.0]), torch.tensor([6.0]))
    torch.testing.assert_close(mixed.probabilities(), 0.999 * rms / rms.sum() + 0.001 / 4)
    # non-finite losses are not kept
    mixed.update(torch.tensor([2.0]), torch.tensor([math.nan]))
    torch.testing.assert_close(mixed.probabilities(), 0.999 * rms / rms.sum() + 0.001 / 4)


def test_the_weighted_estimate_is_unbiased():
    """E_{t∼p}[ℓₜ/(T·pₜ)] = (1/T)·Σₜ ℓₜ, the uniform-t loss, exactly; for losses fixed per t and
    no uniform mix the estimate does not even vary (p ∝ ℓ), and with noisy losses it varies less
    than under uniform t."""
    T = 50
    scale = torch.logspace(-3, 1, T, dtype=torch.float64)  # terms over four orders of magnitude, as L_t's
    sampler = filled(losses.ImportanceSampler(T), [[float(a)] * 10 for a in scale])
    p, w = sampler.probabilities(), sampler.weights(torch.arange(T))
    torch.testing.assert_close((p * w * scale).sum(), scale.mean())  # the closed form
    exact = filled(losses.ImportanceSampler(T, uniform_mix=0.0), [[float(a)] * 10 for a in scale])
    t = exact.sample(1000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(exact.weights(t) * scale[t.long()], torch.full((1000,), float(scale.mean()),
                                                                              dtype=torch.float64))
    # noisy losses ℓ = aₜ·(1 + 0.3·z): Monte Carlo mean within 4 standard errors, smaller variance
    g = torch.Generator().manual_seed(1)
    n = 200_000
    t = sampler.sample(n, g)
    estimate = sampler.weights(t) * scale[t.long()] * (1 + 0.3 * torch.randn(n, generator=g, dtype=torch.float64))
    t_u = torch.randint(0, T, (n,), generator=g)
    uniform = scale[t_u] * (1 + 0.3 * torch.randn(n, generator=g, dtype=torch.float64))
    assert abs(float(estimate.mean() - scale.mean())) < 4 * float(estimate.std()) / math.sqrt(n)
    assert float(estimate.var()) < 0.1 * float(uniform.var())


def test_the_state_round_trips_and_is_checked():
    sampler = filled(losses.ImportanceSampler(3, history=2), [[1.0, 2.0], [3.0], [4.0, 5.0]])
    again = losses.ImportanceSampler(3, history=2)
    again.load_state_dict(sampler.state_dict())
    assert not again.filled
    again.update(torch.tensor([1.0]), torch.tensor([6.0]))
    sampler.update(torch.tensor([1.0]), torch.tensor([6.0]))
    assert again.filled and torch.equal(again.probabilities(), sampler.probabilities())
    with pytest.raises(ValueError, match="does not fit 4 steps x 2 values"):
        losses.ImportanceSampler(4, history=2).load_state_dict(sampler.state_dict())


def _two_part_model():
    mean_param = torch.full((1,), 0.3, requires_grad=True)
    var_param = torch.zeros(1, requires_grad=True)

    def model(x_t, t_in):
        return torch.cat([x_t * mean_param, torch.tanh(var_param).expand_as(x_t)], dim=1)

    return model, mean_param, var_param


def test_the_vlb_loss_trains_mean_and_variance_through_the_bound():
    x0, noise = torch.randn(6, 2, 4, 4), torch.randn(6, 2, 4, 4)
    t = torch.tensor([0.0, 1.0, 10.0, 200.0, 600.0, 999.0])
    model, mean_param, var_param = _two_part_model()
    out = losses.diffusion_loss(model, x0, S, learned_variance=True, loss="vlb", t=t, noise=noise)
    # the loss is T·L_{t−1} (bits/dim) with the gradient through both halves of the output
    x_t = process.q_sample(S, x0, t, noise)
    output, v = model(x_t, t).chunk(2, dim=1)
    bound = S.num_steps * vlb_terms(S, "epsilon", output, x0, x_t, t, (v + 1) / 2).float()
    torch.testing.assert_close(out.per_sample, bound.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.loss, bound.mean(), rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(out.loss, [mean_param, var_param])
    expected = torch.autograd.grad(bound.mean(), [mean_param, var_param])
    for got, want in zip(grads, expected):
        assert got.abs() > 0
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    # unlike the hybrid loss, whose mean gradient is the MSE's alone
    hybrid = losses.diffusion_loss(model, x0, S, learned_variance=True, t=t, noise=noise)
    (hybrid_mean,) = torch.autograd.grad(hybrid.loss, [mean_param])
    assert not torch.allclose(hybrid_mean, grads[0])


def test_importance_weights_scale_each_sample_and_leave_per_sample_alone():
    x0, noise = torch.randn(4, 1, 4, 4), torch.randn(4, 1, 4, 4)
    t = torch.tensor([0.0, 5.0, 300.0, 900.0])
    model, _, _ = _two_part_model()
    plain = losses.diffusion_loss(model, x0, S, learned_variance=True, loss="vlb", t=t, noise=noise)
    weight = torch.tensor([0.5, 2.0, 1.0, 4.0], dtype=torch.float64)
    weighted = losses.diffusion_loss(model, x0, S, learned_variance=True, loss="vlb", t=t, noise=noise,
                                     t_weight=weight)
    torch.testing.assert_close(weighted.per_sample, plain.per_sample)
    torch.testing.assert_close(weighted.loss, (plain.per_sample * weight.float()).mean())


def test_loss_keys_default_to_what_learned_variance_meant():
    assert losses.resolve_loss(None, True) == "hybrid" and losses.resolve_loss(None, False) == "simple"
    x0, noise, t = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4), torch.tensor([0.0, 20.0, 700.0])
    model, _, _ = _two_part_model()
    default = losses.diffusion_loss(model, x0, S, learned_variance=True, t=t, noise=noise)
    hybrid = losses.diffusion_loss(model, x0, S, learned_variance=True, loss="hybrid", t=t, noise=noise)
    assert torch.equal(default.loss, hybrid.loss)
    assert load_config(None, ["diffusion.learned_variance=true"]).diffusion.loss is None  # old configs load as before
    assert load_config(None, ["diffusion.loss=vlb"]).diffusion.loss == "vlb"  # L_vlb with Σ = β̃ is allowed
    for overrides, message in [
        (["diffusion.loss=hybrid"], "needs learned_variance"),
        (["diffusion.loss=simple", "diffusion.learned_variance=true"], "leaves the learned variance untrained"),
        (["diffusion.loss=vlb", "diffusion.weighting=min_snr"], "'diffusion.weighting' must be uniform"),
        (["diffusion.t_sampling=importance", "diffusion.schedule=edm"], "'diffusion.t_sampling'.*discrete schedule"),
        (["diffusion.learned_variance=true", "diffusion.schedule=edm"], "'diffusion.loss'.*discrete schedule"),
        (["diffusion.t_sampling=often"], "must be one of uniform, importance"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(None, overrides)


def test_a_tiny_vlb_run_lowers_its_bound(tmp_path):
    """L_vlb with importance sampling on 8×8 digits: 60 steps lower the bits/dim of held-out
    digits (fixed noise) well below one step's, and the sampler filled (its history saved)."""
    test = load_dataset("digits", "test")
    x0, labels = to_float(test.images[:32]), test.labels[:32]
    bits = {}
    for steps in (1, 60):
        run = tmp_path / f"steps-{steps}"
        train(tiny_config(run, f"train.steps={steps}", *VLB), progress=False)
        model = DiffusionModel.load(run)
        bits[steps] = float(bits_per_dim(model.network, x0, model.schedule, learned_variance=True,
                                         cond={"class_labels": labels},
                                         generator=torch.Generator().manual_seed(0)).total.mean())
    assert bits[60] < bits[1] - 0.5, bits
    _, _, extra = load_state(tmp_path / "steps-60")
    assert (extra["objective"]["t_sampler.counts"] == 10).all()


def test_resume_with_importance_sampling_repeats_the_uninterrupted_run(tmp_path):
    """Killed at step 28 (t importance-sampled since step 25): the history comes back from the
    checkpoint, so steps 29–32 draw the same t and take the same losses. A resumed run without it
    would draw uniform t again."""
    full, part = tmp_path / "full", tmp_path / "part"
    train(tiny_config(full, "train.steps=32", "train.checkpoint_every=28", *VLB), progress=False)
    train(tiny_config(part, "train.steps=28", "train.checkpoint_every=28", *VLB), progress=False)
    _, _, extra = load_state(part)
    assert (extra["objective"]["t_sampler.counts"] == 10).all()  # filled before the kill
    train(tiny_config(part, "train.steps=32", "train.checkpoint_every=28", *VLB), resume=part, progress=False)
    assert losses_of(part) == pytest.approx(losses_of(full), rel=1e-6, abs=1e-7)
    _, full_w, full_extra = load_state(full)
    _, part_w, part_extra = load_state(part)
    for key, value in full_w["model"].items():
        torch.testing.assert_close(part_w["model"][key], value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(part_extra["objective"]["t_sampler.values"],
                               full_extra["objective"]["t_sampler.values"], rtol=1e-5, atol=1e-6)


def test_other_objectives_refuse_the_loss_keys(tmp_path):
    from difflab.training.objectives import NoisyClassifierObjective

    config = tiny_config(tmp_path, "train.steps=1", "diffusion.t_sampling=importance")
    with pytest.raises(ConfigError, match="NoisyClassifierObjective trains with its own loss"):
        train(config, progress=False, objective=NoisyClassifierObjective)


def test_two_processes_share_one_history(tmp_path):
    """Under DDP every process gathers the global batch's losses, so both keep the one history
    a single process keeps, and draw the same importance-sampled t."""
    assert_two_processes_match_one(tmp_path, TINY + VLB + ["train.steps=28", "train.log_every=28"], port=29541)
