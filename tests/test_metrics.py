"""Metric maths on synthetic features: Fréchet distance, precision/recall, KID, classifier score."""

import ast
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from difflab.metrics import (
    class_accuracy,
    classifier_score,
    confident_fraction,
    feature_statistics,
    frechet_distance,
    frechet_distance_of_features,
    kernel_inception_distance,
    load_statistics,
    precision_recall,
    save_statistics,
)


def _pytorch_fid_frechet():
    """pytorch-fid's own ``calculate_frechet_distance``, taken from its source file.

    pytorch_fid.fid_score imports torchvision at module level, which difflab does not
    install, so only this one function is compiled from the installed file.
    """
    spec = importlib.util.find_spec("pytorch_fid")
    if spec is None:
        pytest.skip("pytorch-fid not installed (pip install pytorch-fid==0.3.0 --no-deps)")
    source_path = Path(spec.submodule_search_locations[0]) / "fid_score.py"
    tree = ast.parse(source_path.read_text())
    function = next(node for node in tree.body
                    if isinstance(node, ast.FunctionDef) and node.name == "calculate_frechet_distance")
    from scipy import linalg

    namespace = {"np": np, "linalg": linalg}
    exec(compile(ast.Module(body=[function], type_ignores=[]), str(source_path), "exec"), namespace)
    return namespace["calculate_frechet_distance"]


def _gaussian_features(n, d, shift=0.0, scale=1.0, seed=0):
    """Samples of one correlated Gaussian (the mixing matrix is fixed), shifted and scaled."""
    mixing = np.random.default_rng(1234).normal(size=(d, d)) / np.sqrt(d)
    return np.random.default_rng(seed).normal(size=(n, d)) @ mixing * scale + shift


@pytest.mark.parametrize("shift, scale", [(0.0, 1.0), (0.3, 1.5), (2.0, 0.2)])
def test_frechet_distance_matches_pytorch_fid(shift, scale):
    reference = _pytorch_fid_frechet()
    mu1, sigma1 = feature_statistics(_gaussian_features(500, 64, seed=1))
    mu2, sigma2 = feature_statistics(_gaussian_features(500, 64, shift, scale, seed=2))
    ours = frechet_distance(mu1, sigma1, mu2, sigma2)
    assert ours == pytest.approx(float(reference(mu1, sigma1, mu2, sigma2)), rel=1e-6, abs=1e-6)


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    sigma1, sigma2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 1.0, 9.0])
    # ||mu1 - mu2||^2 + sum (sqrt(a) - sqrt(b))^2 for commuting covariances
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(5.0 + 1.0 + 1.0 + 0.0)


@pytest.mark.parametrize("n1, n2", [(30, 90), (90, 30), (200, 300)])
def test_frechet_distance_of_features_equals_the_covariance_route(n1, n2):
    # fewer vectors than features (the SVD of A1 A2^T) and more (the covariances): both the same number
    rng = np.random.default_rng(n1)
    a, b = rng.normal(size=(n1, 120)), 0.5 + 1.3 * rng.normal(size=(n2, 120)) @ rng.normal(size=(120, 120)) / 11
    expected = frechet_distance(*feature_statistics(a), *feature_statistics(b))
    # 1e-7: the covariance route takes square roots of the rounding noise in the zero eigenvalues
    # of a singular covariance (n < 120); the SVD never forms them
    assert frechet_distance_of_features(a, b) == pytest.approx(expected, rel=1e-7)
    with pytest.raises(ValueError, match="do not match"):
        frechet_distance_of_features(a, b[:, :5])


def test_frechet_distance_of_a_set_with_itself_is_zero_even_when_singular():
    mu, sigma = feature_statistics(_gaussian_features(20, 64))  # rank 19 < 64
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-9


def test_frechet_distance_rejects_mismatched_or_invalid_statistics():
    mu, sigma = feature_statistics(_gaussian_features(50, 4))
    with pytest.raises(ValueError, match="do not match"):
        frechet_distance(mu, sigma, mu[:3], sigma[:3, :3])
    with pytest.raises(ValueError, match="not positive semi-definite"):
        frechet_distance(mu, sigma, mu, -sigma)


def test_frechet_distance_grows_with_the_shift():
    base = _gaussian_features(400, 16)
    mu, sigma = feature_statistics(base)
    def shifted(noise):  # the same draw at every level, scaled
        return base + noise * np.random.default_rng(3).normal(size=base.shape)

    distances = [frechet_distance(mu, sigma, *feature_statistics(shifted(noise))) for noise in (0.1, 0.3, 1.0)]
    assert distances == sorted(distances) and distances[0] > 0


def test_statistics_npz_is_pytorch_fid_format(tmp_path):
    mu, sigma = feature_statistics(_gaussian_features(30, 8))
    save_statistics(tmp_path / "stats.npz", mu, sigma)
    with np.load(tmp_path / "stats.npz") as raw:
        assert sorted(raw.files) == ["mu", "sigma"]
    loaded_mu, loaded_sigma = load_statistics(tmp_path / "stats.npz")
    assert np.array_equal(loaded_mu, mu) and np.array_equal(loaded_sigma, sigma)
    np.savez(tmp_path / "images.npz", samples=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="needs arrays 'mu' and 'sigma'"):
        load_statistics(tmp_path / "images.npz")


def test_precision_recall_of_a_set_against_itself_is_one():
    features = _gaussian_features(200, 32)
    assert precision_recall(features, features) == (1.0, 1.0)


def test_precision_recall_of_disjoint_clusters_is_zero():
    real = _gaussian_features(200, 32, seed=1)
    fake = _gaussian_features(200, 32, shift=50.0, seed=2)
    precision, recall = precision_recall(real, fake)
    assert precision == pytest.approx(0.0, abs=0.01) and recall == pytest.approx(0.0, abs=0.01)


def test_precision_high_recall_low_for_a_collapsed_generator():
    real = _gaussian_features(400, 8, seed=1)
    fake = real[:20] + 1e-3                                   # samples a few modes only
    precision, recall = precision_recall(real, np.repeat(fake, 10, axis=0))
    assert precision == 1.0 and recall < 0.2


def test_kid_near_zero_for_same_distribution_positive_for_different():
    real = _gaussian_features(600, 32, seed=1)
    same = _gaussian_features(600, 32, seed=2)
    other = _gaussian_features(600, 32, shift=0.5, seed=3)
    kid_same, std_same = kernel_inception_distance(real, same, subset_size=200, subsets=20)
    kid_other, _ = kernel_inception_distance(real, other, subset_size=200, subsets=20)
    assert abs(kid_same) < 3 * std_same + 1e-3
    assert kid_other > 10 * abs(kid_same) and kid_other > 0


def test_classifier_score_bounds_and_accuracy():
    uniform = torch.full((100, 10), 0.1, dtype=torch.float64)
    assert classifier_score(uniform)[0] == pytest.approx(1.0)
    one_hot = torch.eye(10, dtype=torch.float64).repeat(10, 1)   # every class, fully confident
    assert classifier_score(one_hot)[0] == pytest.approx(10.0)
    labels = torch.arange(10).repeat(10)
    assert class_accuracy(one_hot, labels) == 1.0 and class_accuracy(one_hot, (labels + 1) % 10) == 0.0
    assert confident_fraction(uniform) == 0.0 and confident_fraction(one_hot) == 1.0
