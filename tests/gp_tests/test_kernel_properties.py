"""Property-based tests of Hyperdyn's GP kernels (hypothesis).

``test_kernels.py`` holds hand values and the symmetry and PSD of the product kernel at
integer epochs with one length scale; these draw real-valued epochs, per-dimension length
scales and the time kernel's ``alpha`` and ``beta``: the time kernel is the closed form
``beta**alpha / (|t1 - t2| + beta)**alpha`` (1 on the diagonal, in ``(0, 1]``, falling with
the distance, shift invariant), and every kernel matrix is symmetric and positive
semi-definite.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import numpy as np
import torch

from optuna_ext._gp.gp import GPRegressor
from optuna_ext._gp.kernels import matern52
from optuna_ext._gp.kernels import rbf
from optuna_ext._gp.kernels import time_kernel


_epochs = st.lists(st.floats(0.0, 200.0), min_size=1, max_size=12)
_alpha = st.floats(0.05, 10.0)
_beta = st.floats(0.01, 50.0)


def _t(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


@settings(max_examples=100, deadline=None)
@given(t1=_epochs, t2=_epochs, alpha=_alpha, beta=_beta, shift=st.floats(-50.0, 50.0))
def test_time_kernel_is_the_closed_form(
    t1: list[float], t2: list[float], alpha: float, beta: float, shift: float
) -> None:
    k = time_kernel(_t(t1), _t(t2), alpha=alpha, beta=beta).numpy()
    distance = np.abs(np.subtract.outer(t1, t2))
    np.testing.assert_allclose(k, beta**alpha / (distance + beta) ** alpha, rtol=1e-12)
    assert np.all((k > 0.0) & (k <= 1.0))
    np.testing.assert_allclose(
        time_kernel(_t(t1) + shift, _t(t2) + shift, alpha=alpha, beta=beta).numpy(),
        k,
        rtol=1e-9,
    )


@settings(max_examples=100, deadline=None)
@given(
    t=st.floats(0.0, 100.0),
    gaps=st.lists(st.floats(0.0, 100.0), min_size=2, max_size=8).map(sorted),
    alpha=_alpha,
    beta=_beta,
)
def test_time_kernel_is_one_at_zero_and_falls_with_the_distance(
    t: float, gaps: list[float], alpha: float, beta: float
) -> None:
    others = _t([t + g for g in gaps])
    row = time_kernel(_t([t]), others, alpha=alpha, beta=beta).numpy()[0]
    # (torch may divide through a reciprocal and raise to alpha: 1 up to a few ulps)
    assert abs(time_kernel(_t([t]), _t([t]), alpha=alpha, beta=beta).item() - 1.0) < 1e-12
    assert np.all(np.diff(row) <= 1e-12)  # non-increasing in |t1 - t2|


@settings(max_examples=60, deadline=None)
@given(t=_epochs, alpha=_alpha, beta=_beta)
def test_time_kernel_matrix_is_symmetric_psd(t: list[float], alpha: float, beta: float) -> None:
    k = time_kernel(_t(t), _t(t), alpha=alpha, beta=beta).numpy()
    np.testing.assert_allclose(k, k.T, rtol=1e-12)  # symmetric up to the last bit of pow
    np.testing.assert_allclose(np.diag(k), 1.0)
    assert np.linalg.eigvalsh(k).min() > -1e-9


@settings(max_examples=60, deadline=None)
@given(d2=st.lists(st.floats(0.0, 400.0), min_size=2, max_size=10).map(sorted))
def test_stationary_kernels_are_one_at_zero_and_fall(d2: list[float]) -> None:
    for kernel in (matern52, rbf):
        assert kernel(_t([0.0])).item() == 1.0
        values = kernel(_t(d2)).numpy()
        assert np.all((values >= 0.0) & (values <= 1.0))
        assert np.all(np.diff(values) <= 1e-12)


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 10),
    dims=st.integers(1, 3),
    kernel=st.sampled_from(["matern52", "rbf"]),
    alpha=_alpha,
    beta=_beta,
    scale=st.floats(0.1, 10.0),
)
def test_product_kernel_with_real_epochs_is_symmetric_psd(
    data: st.DataObject, n: int, dims: int, kernel: str, alpha: float, beta: float, scale: float
) -> None:
    unit = st.floats(0.0, 1.0)
    X = _t(data.draw(st.lists(unit, min_size=n * dims, max_size=n * dims))).reshape(n, dims)
    t = _t(data.draw(st.lists(st.floats(0.0, 50.0), min_size=n, max_size=n)))
    inverse = data.draw(st.lists(st.floats(0.01, 400.0), min_size=dims, max_size=dims))
    gp = GPRegressor(
        X=X,
        y=torch.zeros(n, dtype=torch.float64),
        t=t,
        inverse_squared_lengthscales=_t(inverse),
        kernel_scale=torch.tensor(scale, dtype=torch.float64),
        noise_var=torch.tensor(1e-6, dtype=torch.float64),
        kernel=kernel,
        alpha=alpha,
        beta=beta,
    )
    K = gp.kernel(X, t).numpy()
    np.testing.assert_allclose(K, K.T, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(np.diag(K), scale, rtol=1e-12)
    assert np.linalg.eigvalsh(K).min() > -1e-9 * scale
