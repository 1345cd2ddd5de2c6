"""FID∞ (Chong & Forsyth 2020) against the closed-form Fréchet distance of the Gaussians that
generated the features: the finite-sample FID is biased upward, the extrapolation is not."""

import numpy as np
import pytest

from difflab.metrics import EvalOptions, Reference, evaluate
from difflab.metrics.fid_infinity import ReferenceFrechet, fid_infinity, subset_sizes
from difflab.metrics.frechet import feature_statistics, frechet_distance

D = 32


def _gaussian(seed: int, shift: float):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(D, D)) / np.sqrt(D)
    return rng.normal(size=D) * shift, a @ a.T + 0.1 * np.eye(D)


@pytest.mark.parametrize("n", [300, 20])  # the D × D route and, for fewer samples than dimensions, the N × N one
def test_reference_frechet_is_the_frechet_distance(n):
    mu_ref, sigma_ref = _gaussian(0, 0.3)
    features = np.random.default_rng(1).normal(size=(n, D)) * 1.3
    expected = frechet_distance(*feature_statistics(features), mu_ref, sigma_ref)
    assert ReferenceFrechet(mu_ref, sigma_ref)(features) == pytest.approx(expected, rel=1e-7)


@pytest.mark.parametrize("scale", [1.0, 1.5, 0.7])
def test_fid_infinity_removes_the_finite_sample_bias(scale):
    """Samples of N(μ, Σ) against the exact N(μ, scale·Σ): the FID of 1,000 samples overshoots the
    closed-form distance on average (by ~0.16–0.34 here); FID∞'s average error is under a third
    of that (its error on one draw is the sample's own noise, which no extrapolation removes)."""
    mu, sigma = _gaussian(10, 0.0)
    true = frechet_distance(mu, sigma, mu, scale * sigma)
    bias, error = [], []
    for seed in range(6):
        features = np.random.default_rng(100 + seed).multivariate_normal(mu, sigma, size=1000)
        result = fid_infinity(features, mu, scale * sigma, seed=seed)
        assert result.sizes == tuple(subset_sizes(1000)) and result.sizes[-1] == 1000
        assert result.slope > 0  # fewer samples, higher FID
        bias.append(result.fids[-1] - true)  # the FID of all 1,000 samples
        error.append(result.value - true)
    assert min(bias) > 0
    assert abs(np.mean(error)) < 0.35 * np.mean(bias)
    if scale == 1.0:  # at the minimum the distance has no first-order noise: FID∞ is ~0
        assert np.mean(np.abs(error)) < 0.2 * np.mean(bias)


def test_subset_sizes_and_too_few_samples():
    assert subset_sizes(1000, points=5) == [200, 400, 600, 800, 1000]
    with pytest.raises(ValueError, match="at least 100 samples"):
        subset_sizes(50)


def test_evaluate_reports_fid_infinity_against_statistics_only():
    """Through the evaluate flow with a statistics-only reference (FID from a stats .npz)."""
    import torch

    from difflab.data.dataset import ImageDataset

    class FlatFeatures:  # a stand-in extractor: the images' pixels are the features
        device, identity = torch.device("cpu"), {}

        def __call__(self, images):
            return images.float().flatten(1)

    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, size=(400, 1, 4, 4), dtype=np.uint8))
    mu, sigma = feature_statistics(rng.integers(0, 256, size=(5000, 16)).astype(np.float64))
    report = evaluate(ImageDataset(images=images, labels=None, class_names=[], name="noise"),
                      Reference(name="stats", mu=mu, sigma=sigma), FlatFeatures(),
                      options=EvalOptions(fid_infinity=True, use_cache=False))
    assert report["fid_infinity"] < report["fid"]
    assert report["fid_infinity_sizes"][-1] == 400 and len(report["fid_infinity_fids"]) == 10
