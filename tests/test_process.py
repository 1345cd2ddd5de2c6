"""Forward process, posterior and parametrizations, against the DDPM formulas and each other."""

import pytest
import torch

from difflab import process, schedules

S = schedules.linear()


@pytest.mark.parametrize("prediction", process.PREDICTION_TYPES)
def test_parametrizations_round_trip(prediction):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 3, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([3.0, 400.0, 999.0], dtype=torch.float64)
    scale, std = S.scale_std(t)
    x_t = process.q_sample(S, x0, t, eps)
    target = process.training_target(prediction, x0, eps, scale, std)
    torch.testing.assert_close(process.to_x0(prediction, target, x_t, scale, std), x0)
    torch.testing.assert_close(process.to_epsilon(x_t, x0, scale, std), eps)


def test_q_sample_moments():
    x0 = torch.full((200000, 1), 0.7, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x_t = process.q_sample(S, x0, torch.full((200000,), 250.0, dtype=torch.float64), eps)
    ab = float(S.alpha_bar(250))
    assert float(x_t.mean()) == pytest.approx(ab**0.5 * 0.7, abs=5e-3)
    assert float(x_t.var()) == pytest.approx(1 - ab, rel=1e-2)


def test_posterior_matches_ddpm_equations():
    t, tp = torch.tensor([1.0, 500.0]), torch.tensor([0.0, 499.0])
    post = process.posterior(S, t, tp)
    b = S.betas[[1, 500]]
    ab, ab_prev = S.alphas_cumprod[[1, 500]], S.alphas_cumprod[[0, 499]]
    torch.testing.assert_close(post.beta, b)
    torch.testing.assert_close(post.coef_x0, ab_prev.sqrt() * b / (1 - ab))
    torch.testing.assert_close(post.coef_xt, (1 - b).sqrt() * (1 - ab_prev) / (1 - ab))
    torch.testing.assert_close(post.variance, b * (1 - ab_prev) / (1 - ab))
    last = process.posterior(S, torch.tensor([0.0]), torch.tensor([-1.0]))
    assert float(last.variance) == 0.0
    # improved DDPM clips the last log-variance to step 1's: log β̃₁.
    assert float(last.log_variance_clipped) == pytest.approx(float(post.variance[0].log()))


def test_posterior_is_the_true_conditional():
    """Monte Carlo: x_{t−1} | x_t, x₀ drawn by the forward chain has the posterior's mean/variance."""
    g = torch.Generator().manual_seed(2)
    n, t = 400000, 300
    x0 = torch.full((n, 1), -0.4, dtype=torch.float64)
    x_prev = process.q_sample(S, x0, torch.full((n,), t - 1.0), torch.randn(n, 1, generator=g, dtype=torch.float64))
    beta = float(S.betas[t])
    x_t = (1 - beta) ** 0.5 * x_prev + beta**0.5 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    # regress x_prev on x_t: slope and residual variance must match coef_xt and β̃
    post = process.posterior(S, torch.tensor([float(t)]), torch.tensor([t - 1.0]))
    cov = torch.cov(torch.stack([x_t[:, 0], x_prev[:, 0]]))
    slope = cov[0, 1] / cov[0, 0]
    resid = cov[1, 1] - slope * cov[0, 1]
    assert float(slope) == pytest.approx(float(post.coef_xt), rel=2e-2)
    assert float(resid) == pytest.approx(float(post.variance), rel=2e-2)


def test_clip_and_dynamic_threshold():
    x = torch.tensor([[0.5, -3.0, 2.0, 0.1]])
    torch.testing.assert_close(process.clip_x0(x), torch.tensor([[0.5, -1.0, 1.0, 0.1]]))
    y = process.dynamic_threshold(x, percentile=1.0, max_value=10.0)  # s = max |x| = 3
    torch.testing.assert_close(y, x / 3)
    z = process.dynamic_threshold(torch.tensor([[0.2, -0.5]]), percentile=1.0)  # s clamps at 1: unchanged
    torch.testing.assert_close(z, torch.tensor([[0.2, -0.5]]))


def test_unknown_prediction_type():
    with pytest.raises(ValueError, match="unknown prediction type 'eps'"):
        process.check_prediction_type("eps")
