"""FID∞: FID with its finite-sample bias removed (Chong & Forsyth 2020, "Effectively Unbiased FID
and Inception Score and where to find them", CVPR, §3).

FID computed from N generated samples overestimates the FID of the generator, and by how much
depends on the generator as well as on N. To first order in 1/N (from a
Taylor expansion of the estimate around the true covariance),

    E[FID_N] = FID∞ + k / N,

with k > 0 set by the generated distribution's covariance. So the FIDs of m random subsets of
sizes N₁ < … < N_m, each against the same reference statistics, lie on a line in 1/N; its
intercept is FID∞ and its slope k. The paper draws 15 sizes from 5,000 to 50,000; here the
sizes are spread evenly from a fifth of the samples to all of them.

Why it matters: the bias compresses ratios of FIDs toward 1. At 2,000 samples against 2,000
Fashion-MNIST 16×16 test images, 2,000 real training images already score 9.5, so a generator
twice as good as another by FID∞ is far less than twice as good by FID_2000 (docs/benchmarks.md).
The reference's own sampling error is not removed (its statistics are held fixed): compare FID∞
values made against the same reference images only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from difflab.metrics.frechet import _psd_eigenvalues

POINTS = 10  # subset sizes the line is fitted to
SMALLEST = 0.2  # the smallest subset, as a fraction of the samples
MIN_SAMPLES = 100  # below this the subsets are too small for the 1/N law to hold


@dataclass(frozen=True)
class FidInfinity:
    """The extrapolated FID∞, the line's slope k (FID_N ≈ FID∞ + k/N), and the points fitted."""

    value: float
    slope: float
    sizes: tuple[int, ...]
    fids: tuple[float, ...]


class ReferenceFrechet:
    """Fréchet distances of many feature sets to one fixed reference N(μ, Σ).

    With A the set's centred features over √(N − 1), Σ_g = AᵀA, and tr((Σ_gΣ)^½) = Σᵢ √λᵢ over
    the eigenvalues λ of Σ^½ Σ_g Σ^½ (D × D), which are also those of A Σ Aᵀ (N × N): the smaller
    of the two is solved, and Σ^½ is factored once, the first time a set has N ≥ D.
    """

    def __init__(self, mu: np.ndarray, sigma: np.ndarray):
        self.mu = np.asarray(mu, np.float64)
        self.sigma = np.asarray(sigma, np.float64)
        if self.sigma.shape != self.mu.shape * 2:
            raise ValueError(f"reference statistics do not fit together: mu {self.mu.shape}, sigma {self.sigma.shape}")
        self.trace = float(np.trace(self.sigma))
        self._sqrt_sigma: np.ndarray | None = None

    def _sqrt(self) -> np.ndarray:
        if self._sqrt_sigma is None:
            eigenvalues, eigenvectors = _psd_eigenvalues(self.sigma, "the reference covariance")
            self._sqrt_sigma = (eigenvectors * np.sqrt(eigenvalues)) @ eigenvectors.T
        return self._sqrt_sigma

    def __call__(self, features: np.ndarray) -> float:
        features = np.asarray(features, np.float64)
        if features.ndim != 2 or features.shape[1] != len(self.mu) or len(features) < 2:
            raise ValueError(f"need at least 2 feature vectors of {len(self.mu)} dimensions, got {features.shape}")
        mu = features.mean(axis=0)
        a = (features - mu) / np.sqrt(len(features) - 1)
        if len(a) < a.shape[1]:
            product = a @ self.sigma @ a.T
        else:
            root = self._sqrt()
            product = root @ (a.T @ a) @ root
        eigenvalues, _ = _psd_eigenvalues(product, "the covariance product", vectors=False)
        diff = mu - self.mu
        return float(max(diff @ diff + (a * a).sum() + self.trace - 2.0 * np.sqrt(eigenvalues).sum(), 0.0))


def subset_sizes(n: int, points: int = POINTS, smallest: float = SMALLEST) -> list[int]:
    """``points`` sizes spread evenly from ``smallest``·n to n (distinct, ascending)."""
    if n < MIN_SAMPLES:
        raise ValueError(f"FID-infinity needs at least {MIN_SAMPLES} samples, got {n}: generate more, or drop "
                         "the FID-infinity option")
    return sorted({int(round(s)) for s in np.linspace(smallest * n, n, points)})


def fid_infinity(features: np.ndarray, mu_ref: np.ndarray, sigma_ref: np.ndarray, points: int = POINTS,
                 smallest: float = SMALLEST, seed: int = 0) -> FidInfinity:
    """FID∞ of generated ``features`` (N, D) against reference statistics: FID of a random subset
    (without replacement, ``seed``) at each of :func:`subset_sizes`, then the least-squares line
    FID = FID∞ + k/N through them, read at 1/N = 0."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {features.shape}")
    sizes = subset_sizes(len(features), points, smallest)
    if len(sizes) < 2:
        raise ValueError("FID-infinity needs at least two subset sizes")
    distance = ReferenceFrechet(mu_ref, sigma_ref)
    rng = np.random.default_rng(seed)
    fids = [distance(features[rng.choice(len(features), size, replace=False)]) for size in sizes]
    slope, intercept = np.polyfit(1.0 / np.asarray(sizes, np.float64), np.asarray(fids), 1)
    return FidInfinity(float(intercept), float(slope), tuple(sizes), tuple(fids))
