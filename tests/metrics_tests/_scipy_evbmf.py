"""An independent NumPy/SciPy port of the reference ``EVBMF`` (autoHyper/AdaS), for the tests.

It follows the reference literally: full SVD, ``H = L``, scipy's bounded Brent search with an
absolute ``xatol``, and scipy's ``ValueError`` when the bounds are reversed. ``rescale`` divides
by the RMS of the entries first, to compare with the corrected search.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar


def _objective(sigma2: float, n_rows: int, n_cols: int, s: np.ndarray, x_bar: float) -> float:
    alpha = n_rows / n_cols
    x = s**2 / (n_cols * sigma2)
    big = x[x > x_bar]
    small = x[x <= x_bar]
    tau = 0.5 * (big - (1 + alpha) + np.sqrt((big - (1 + alpha)) ** 2 - 4 * alpha))
    value = np.sum(small - np.log(small)) + np.sum(big - tau) + np.sum(np.log((tau + 1) / big))
    value += alpha * np.sum(np.log(tau / alpha + 1)) + (n_rows - len(s)) * np.log(sigma2)
    return float(value)


def scipy_evbmf(
    matrix: np.ndarray, *, xatol: float = 1e-5, rescale: bool = False
) -> tuple[int, float, np.ndarray]:
    """Return ``(rank, sigma2, shrunk singular values)``; raises ``ValueError`` like scipy."""
    n_rows, n_cols = matrix.shape
    alpha = n_rows / n_cols
    tau_bar = 2.5129 * math.sqrt(alpha)
    x_bar = (1 + tau_bar) * (1 + alpha / tau_bar)
    s = np.linalg.svd(matrix, compute_uv=False)
    scale = float(np.sum(s**2) / (n_rows * n_cols)) if rescale else 1.0
    searched = s / math.sqrt(scale)
    first = int(min(math.ceil(n_rows / (1 + alpha)) - 1, n_rows)) - 1 + 1
    upper = np.sum(searched**2) / (n_rows * n_cols)
    lower = max(searched[first] ** 2 / (n_cols * x_bar), np.mean(searched[first:] ** 2) / n_cols)
    result = minimize_scalar(
        _objective,
        args=(n_rows, n_cols, searched, x_bar),
        bounds=(lower, upper),
        method="bounded",
        options={"xatol": xatol},
    )
    sigma2 = float(result.x) * scale
    threshold = math.sqrt(n_cols * sigma2 * x_bar)
    kept = s[s > threshold]
    ratio = (n_rows + n_cols) * sigma2 / kept**2
    shrunk = (kept / 2) * (
        1 - ratio + np.sqrt((1 - ratio) ** 2 - 4 * n_rows * n_cols * sigma2**2 / kept**4)
    )
    return len(kept), sigma2, shrunk
