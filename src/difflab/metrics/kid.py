"""Kernel Inception Distance (Bińkowski et al. 2018, "Demystifying MMD GANs", section 4).

KID is the squared maximum mean discrepancy between real and generated features under the
cubic polynomial kernel k(x, y) = (xᵀy / d + 1)³, estimated without bias (Gretton et al.
2012, eq. 3) on random subsets of m points from each set and averaged over the subsets.
Unlike FID its estimator is unbiased, so it can be compared across sample sizes.
"""

from __future__ import annotations

import numpy as np


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (xᵀy / d + 1)³ for all pairs of rows."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² between two equally sized samples (diagonal terms left out)."""
    m = len(x)
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.mean())


def kernel_inception_distance(real: np.ndarray, fake: np.ndarray, subset_size: int = 1000,
                              subsets: int = 100, seed: int = 0) -> tuple[float, float]:
    """KID: mean and standard deviation of the unbiased MMD² over random subsets.

    The subset size is capped at the smaller set's size, as in clean-fid and torch-fidelity.
    """
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    m = min(subset_size, len(real), len(fake))
    if m < 2:
        raise ValueError(f"KID needs at least 2 features in each set, got {len(real)} and {len(fake)}")
    rng = np.random.default_rng(seed)
    values = [mmd2_unbiased(real[rng.choice(len(real), m, replace=False)],
                            fake[rng.choice(len(fake), m, replace=False)]) for _ in range(subsets)]
    return float(np.mean(values)), float(np.std(values))
