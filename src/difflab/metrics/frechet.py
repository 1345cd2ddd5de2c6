"""Fréchet distance between Gaussians fitted to features: FID (Heusel et al. 2017).

    d² = ||μ₁ − μ₂||² + tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^½)            (Dowson & Landau 1982)

Statistics are stored as ``.npz`` files with the arrays ``mu`` and ``sigma``, the format of
pytorch-fid's ``--save-stats``, so published reference statistics can be reused.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

# Rounding makes the smallest eigenvalues of a PSD matrix slightly negative; anything more
# negative than this fraction of the largest eigenvalue means the input is not a covariance.
_NEGATIVE_EIGENVALUE_TOLERANCE = 1e-6


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (N − 1) of features (N, D), in float64, as pytorch-fid."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"need at least 2 feature vectors (N, D) for statistics, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _psd_eigenvalues(matrix: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of a symmetric PSD matrix, tiny negative eigenvalues set to 0."""
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    floor = -_NEGATIVE_EIGENVALUE_TOLERANCE * max(float(np.abs(eigenvalues).max()), 1e-300)
    if eigenvalues.min() < floor:
        raise ValueError(f"{what} is not positive semi-definite (eigenvalue {eigenvalues.min():.3g})")
    return np.clip(eigenvalues, 0.0, None), eigenvectors


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((Σ₁Σ₂)^½) for covariances Σ₁, Σ₂, in float64.

    Σ₁Σ₂ is similar to the symmetric PSD matrix M = Σ₁^½ Σ₂ Σ₁^½, so both have the same
    real, non-negative eigenvalues λᵢ and tr((Σ₁Σ₂)^½) = Σᵢ √λᵢ. Working with symmetric
    eigen-decompositions avoids the complex intermediate values of a general ``sqrtm``
    (and pytorch-fid's eps retry): it is exact for singular covariances too.
    """
    eigenvalues, eigenvectors = _psd_eigenvalues(sigma1, "sigma1")
    sqrt_sigma1 = (eigenvectors * np.sqrt(eigenvalues)) @ eigenvectors.T
    product_eigenvalues, _ = _psd_eigenvalues(sqrt_sigma1 @ sigma2 @ sqrt_sigma1, "sigma1^½ sigma2 sigma1^½")
    return float(np.sqrt(product_eigenvalues).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return float(max(distance, 0.0))


def save_statistics(path: str | Path, mu: np.ndarray, sigma: np.ndarray) -> None:
    """Write ``mu`` and ``sigma`` to an ``.npz`` in pytorch-fid's format."""
    np.savez(path, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64))


def load_statistics(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read ``mu`` and ``sigma`` from a pytorch-fid-style ``.npz``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"statistics file {path} does not exist")
    with np.load(path) as stats:
        if "mu" not in stats.files or "sigma" not in stats.files:
            raise ValueError(f"{path} is not an FID statistics file: it needs arrays 'mu' and 'sigma', "
                             f"found {', '.join(stats.files) or 'none'}")
        mu, sigma = stats["mu"].astype(np.float64), stats["sigma"].astype(np.float64)
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise ValueError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not fit together")
    return mu, sigma


def is_statistics_file(path: str | Path) -> bool:
    """True for an ``.npz`` that holds ``mu`` and ``sigma`` (rather than images)."""
    path = Path(path)
    if path.suffix != ".npz" or not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {"mu", "sigma"} <= set(npz.files)
    except (ValueError, OSError, zipfile.BadZipFile):  # not a zip of arrays: the image
        return False  # loader says what is wrong with it, naming the file
