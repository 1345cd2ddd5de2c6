"""Losses and the variational bound on cases with known answers."""

import math

import pytest
import torch

from difflab import likelihood, losses, process, schedules
from difflab.analytic import GaussianMixture

S = schedules.linear()


def test_ideal_denoiser_mse_is_the_posterior_variance():
    """For x₀ ~ N(0, s²), E‖ε − ε̂*‖²/dim = s²/(s² + σ²) with the exact ε̂*."""
    data = GaussianMixture.gaussian(4, 0.0, 0.5)
    x0 = data.sample(50000, torch.Generator().manual_seed(0))
    for t in [50.0, 300.0, 700.0]:
        out = losses.diffusion_loss(data.model(S), x0, S, t=torch.full((50000,), t),
                                    generator=torch.Generator().manual_seed(1))
        sigma = float(S.sigma(t))
        assert float(out.loss) == pytest.approx(0.25 / (0.25 + sigma**2), rel=0.02)


@pytest.mark.parametrize("prediction", process.PREDICTION_TYPES)
def test_exact_model_has_zero_loss(prediction):
    """A model that knows x₀ and ε predicts the target exactly."""
    x0 = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    noise = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    t = torch.randint(0, 1000, (8,)).double()

    def oracle(x_t, t_in):
        scale, std = S.scale_std(t)
        return process.training_target(prediction, x0, noise, scale, std)

    out = losses.diffusion_loss(oracle, x0, S, prediction=prediction, t=t, noise=noise, weighting="min_snr")
    assert float(out.loss) < 1e-9


def test_weightings():
    snr = torch.tensor([0.1, 1.0, 5.0, 100.0])
    torch.testing.assert_close(losses.loss_weight("min_snr", snr, "epsilon"), torch.tensor([1.0, 1.0, 1.0, 0.05]))
    torch.testing.assert_close(losses.loss_weight("min_snr", snr, "x0"), torch.tensor([0.1, 1.0, 5.0, 5.0]))
    torch.testing.assert_close(losses.loss_weight("min_snr", snr, "v"), torch.tensor([0.1, 1.0, 5.0, 5.0]) / (snr + 1))
    torch.testing.assert_close(losses.loss_weight("p2", snr, "epsilon", p2_k=1, p2_gamma=1), 1 / (1 + snr))
    # The same objective expressed through different predictions: weight·MSE agrees.
    for w in ["min_snr", "p2"]:
        eps_w = losses.loss_weight(w, snr, "epsilon")
        torch.testing.assert_close(losses.loss_weight(w, snr, "x0"), eps_w * snr)
        torch.testing.assert_close(losses.loss_weight(w, snr, "v"), eps_w * snr / (1 + snr))
    with pytest.raises(ValueError, match="unknown loss weighting"):
        losses.loss_weight("snr", snr, "epsilon")


def test_min_snr_is_finite_at_zero_terminal_snr():
    zs = schedules.rescale_zero_terminal_snr(schedules.linear())
    x0 = torch.randn(4, 2)
    out = losses.diffusion_loss(lambda x, t: torch.zeros_like(x), x0, zs, prediction="v", weighting="min_snr",
                                t=torch.tensor([999.0, 999.0, 0.0, 500.0]))
    assert math.isfinite(float(out.loss))


def test_discretized_gaussian_likelihood_against_the_normal_cdf():
    from scipy.stats import norm

    x = torch.tensor([-1.0, -0.2, 0.0, 0.6, 1.0], dtype=torch.float64)
    mean = torch.tensor([-0.9, 0.0, 0.05, 0.5, 0.8], dtype=torch.float64)
    scale = 0.1
    got = likelihood.discretized_gaussian_log_likelihood(x, mean, torch.full_like(x, math.log(scale)))
    h = 1 / 255
    expected = []
    for xi, mi in zip(x.tolist(), mean.tolist()):
        lo = -math.inf if xi <= -1 + h else xi - h
        hi = math.inf if xi >= 1 - h else xi + h
        expected.append(math.log(norm.cdf(hi, mi, scale) - norm.cdf(lo, mi, scale)))
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=1e-9)


def test_normal_kl_against_torch_distributions():
    from torch.distributions import Normal, kl_divergence

    m1, m2 = torch.tensor([0.3, -1.0]), torch.tensor([0.0, 0.5])
    lv1, lv2 = torch.tensor([-1.0, 0.2]), torch.tensor([0.5, -0.3])
    expected = kl_divergence(Normal(m1, (lv1 / 2).exp()), Normal(m2, (lv2 / 2).exp()))
    torch.testing.assert_close(likelihood.normal_kl(m1, lv1, m2, lv2), expected)


def test_bits_per_dim_of_an_oracle_has_a_closed_form():
    """A model that knows x₀ has every KL term 0 (posterior = model with β̃); what remains is the
    prior term and the decoder at t = 0: −log₂(2Φ(1/(255·√β̃₁)) − 1) per interior pixel."""
    small = schedules.linear(num_steps=20, beta_start=1e-3, beta_end=0.3)
    levels = torch.randint(1, 255, (3, 1, 4, 4), generator=torch.Generator().manual_seed(4))
    x0 = (levels.double() / 127.5 - 1)

    def oracle(x_t, t):
        scale, std = small.scale_std(t.double())
        return process.to_epsilon(x_t, x0, scale, std)

    result = likelihood.bits_per_dim(oracle, x0, small, generator=torch.Generator().manual_seed(5))
    assert result.terms[:, 1:].abs().max() < 1e-9
    std0 = math.sqrt(float(process.posterior(small, torch.tensor(1.0), torch.tensor(0.0)).variance))
    phi = 0.5 * (1 + math.erf(1 / (255 * std0) / math.sqrt(2)))
    decoder = -math.log2(2 * phi - 1)
    torch.testing.assert_close(result.terms[:, 0], torch.full((3,), decoder, dtype=torch.float64))
    ab_T = float(small.alpha_bar(19))
    prior = (0.5 * (-1 - math.log(1 - ab_T) + (1 - ab_T) + ab_T * x0.pow(2).reshape(3, -1).mean(1))) / math.log(2)
    torch.testing.assert_close(result.prior, prior)
    torch.testing.assert_close(result.total, result.prior + result.terms.sum(1))


def test_a_worse_model_has_more_bits():
    small = schedules.linear(num_steps=20, beta_start=1e-3, beta_end=0.3)
    x0 = torch.rand(4, 1, 3, 3, generator=torch.Generator().manual_seed(6)).double() * 2 - 1
    zero = likelihood.bits_per_dim(lambda x, t: torch.zeros_like(x), x0, small).total
    half = lambda x, t: 0.5 * x  # noqa: E731
    assert (likelihood.bits_per_dim(half, x0, small).total != zero).all()


def test_hybrid_loss_trains_only_the_variance_through_the_vlb():
    x0 = torch.randn(6, 2, 4, 4)
    noise = torch.randn(6, 2, 4, 4)
    t = torch.tensor([0.0, 1.0, 10.0, 200.0, 600.0, 999.0])
    mean_param = torch.full((1,), 0.3, requires_grad=True)
    var_param = torch.zeros(1, requires_grad=True)

    def model(x_t, t_in):
        return torch.cat([x_t * mean_param, torch.tanh(var_param).expand_as(x_t)], dim=1)

    out = losses.diffusion_loss(model, x0, S, learned_variance=True, vlb_weight=1.0, t=t, noise=noise)
    assert out.vlb is not None and out.vlb.shape == (6,) and torch.isfinite(out.vlb).all()
    grad_mean, grad_var = torch.autograd.grad(out.loss, [mean_param, var_param])
    assert grad_var.abs() > 0
    # the mean's gradient is exactly that of the MSE alone: the vlb sees a detached mean
    plain = losses.diffusion_loss(lambda x_t, t_in: x_t * mean_param, x0, S, t=t, noise=noise)
    (grad_plain,) = torch.autograd.grad(plain.loss, [mean_param])
    torch.testing.assert_close(grad_mean, grad_plain)


def test_wrong_output_shape_is_a_clear_error():
    with pytest.raises(ValueError, match="expected 4 channels .learned variance doubles them"):
        losses.diffusion_loss(lambda x, t: x, torch.randn(2, 2, 3, 3), S, learned_variance=True)
