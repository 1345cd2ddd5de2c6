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


def _psd_eigenvalues(matrix: np.ndarray, what: str, vectors: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Eigen-decomposition of a symmetric PSD matrix, tiny negative eigenvalues set to 0 (the
    eigenvectors only when asked: the eigenvalues alone are several times cheaper)."""
    symmetric = (matrix + matrix.T) / 2
    eigenvalues, eigenvectors = np.linalg.eigh(symmetric) if vectors else (np.linalg.eigvalsh(symmetric), None)
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
    product_eigenvalues, _ = _psd_eigenvalues(sqrt_sigma1 @ sigma2 @ sqrt_sigma1, "sigma1^½ sigma2 sigma1^½",
                                              vectors=False)
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


def frechet_distance_of_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """:func:`frechet_distance` of the Gaussians fitted to two feature sets (N₁, D) and (N₂, D).

    With Aᵢ the centred features divided by √(Nᵢ − 1), Σᵢ = AᵢᵀAᵢ, and the eigenvalues of Σ₁Σ₂ =
    A₁ᵀ(A₁A₂ᵀ)A₂ are the squared singular values of the N₁ × N₂ matrix A₁A₂ᵀ, so
    tr((Σ₁Σ₂)^½) is the sum of its singular values. When a set is smaller than the feature width
    (500 samples against 2,048 Inception features) that one small SVD replaces two D × D
    eigen-decompositions: the same number (to ~1e-8 relative), about 10× faster. Otherwise the
    covariances are formed and :func:`frechet_distance` is used.
    """
    features1, features2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    if features1.ndim != 2 or features2.ndim != 2 or features1.shape[1] != features2.shape[1]:
        raise ValueError(f"feature sets do not match: {features1.shape} vs {features2.shape}")
    if min(len(features1), len(features2)) >= features1.shape[1]:
        return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))
    if min(len(features1), len(features2)) < 2:
        raise ValueError("need at least 2 feature vectors in each set for statistics")
    mu1, mu2 = features1.mean(axis=0), features2.mean(axis=0)
    a1 = (features1 - mu1) / np.sqrt(len(features1) - 1)
    a2 = (features2 - mu2) / np.sqrt(len(features2) - 1)
    trace_sqrt = np.linalg.svd(a1 @ a2.T, compute_uv=False).sum()
    diff = mu1 - mu2
    distance = diff @ diff + (a1 * a1).sum() + (a2 * a2).sum() - 2.0 * trace_sqrt
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
