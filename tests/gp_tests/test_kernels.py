from __future__ import annotations

import math

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import numpy as np
import pytest
import torch

from optuna_ext._gp.gp import GPRegressor
from optuna_ext._gp.kernels import matern52
from optuna_ext._gp.kernels import rbf
from optuna_ext._gp.kernels import stationary_kernel
from optuna_ext._gp.kernels import time_kernel


def _t(values: list[float] | list[list[float]]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_matern52_hand_values() -> None:
    # r = sqrt(5 d2): d2 = 0 -> 1; d2 = 1 -> (1 + sqrt5 + 5/3) e^-sqrt5; d2 = 0.2 -> r = 1.
    values = matern52(_t([0.0, 1.0, 0.2]))
    s5 = math.sqrt(5.0)
    expected = [
        1.0,
        (1.0 + s5 + 5.0 / 3.0) * math.exp(-s5),
        (1.0 + 1.0 + 1.0 / 3.0) * math.exp(-1),
    ]
    np.testing.assert_allclose(values.numpy(), expected, rtol=1e-12)


def test_matern52_gradient_is_exact_and_finite_at_zero() -> None:
    d2 = _t([0.0, 0.3, 2.0]).requires_grad_(True)
    (grad,) = torch.autograd.grad(matern52(d2).sum(), d2)
    r = np.sqrt(5.0 * np.array([0.0, 0.3, 2.0]))
    np.testing.assert_allclose(grad.numpy(), -5.0 / 6.0 * (1.0 + r) * np.exp(-r), rtol=1e-12)
    # Against finite differences away from 0.
    h = 1e-6
    for x in (0.3, 2.0):
        numeric = (matern52(_t([x + h])) - matern52(_t([x - h]))).item() / (2 * h)
        r1 = math.sqrt(5 * x)
        assert numeric == pytest.approx(-5 / 6 * (1 + r1) * math.exp(-r1), rel=1e-6)


def test_rbf_hand_values() -> None:
    np.testing.assert_allclose(
        rbf(_t([0.0, 1.0, 4.0])).numpy(), [1.0, math.exp(-0.5), math.exp(-2)]
    )
    assert stationary_kernel("rbf") is rbf
    with pytest.raises(ValueError, match="kernel"):
        stationary_kernel("linear")


def test_time_kernel_hand_values() -> None:
    t = _t([0.0, 1.0, 2.0, 4.0])
    k = time_kernel(_t([0.0]), t)
    # beta / (|dt| + beta) with beta = 1/2: 1, 1/3, 1/5, 1/9.
    np.testing.assert_allclose(k.numpy()[0], [1.0, 1 / 3, 1 / 5, 1 / 9], rtol=1e-12)
    k2 = time_kernel(_t([0.0]), _t([1.0]), alpha=2.0, beta=1.0)
    assert k2.item() == pytest.approx((1.0 / 2.0) ** 2)


@pytest.mark.parametrize("alpha, beta", [(0.0, 0.5), (1.0, 0.0), (-1.0, 1.0), (math.nan, 1.0)])
def test_time_kernel_rejects_bad_params(alpha: float, beta: float) -> None:
    with pytest.raises(ValueError, match="alpha|beta"):
        time_kernel(_t([0.0]), _t([1.0]), alpha=alpha, beta=beta)


def test_product_kernel_by_hand() -> None:
    X = _t([[0.1, 0.9], [0.4, 0.2]])
    t = _t([0.0, 2.0])
    gp = GPRegressor(
        X=X,
        y=_t([0.0, 1.0]),
        t=t,
        inverse_squared_lengthscales=_t([4.0, 0.25]),  # lengthscales 0.5 and 2
        kernel_scale=torch.tensor(1.5, dtype=torch.float64),
        noise_var=torch.tensor(1e-3, dtype=torch.float64),
    )
    x = _t([[0.3, 0.5]])
    k = gp.kernel(x, _t([1.0]))
    for j in range(2):
        d2 = ((0.3 - X[j, 0].item()) / 0.5) ** 2 + ((0.5 - X[j, 1].item()) / 2.0) ** 2
        r = math.sqrt(5 * d2)
        k1 = (1 + r + r * r / 3) * math.exp(-r)
        k2 = 0.5 / (abs(1.0 - t[j].item()) + 0.5)
        assert k[0, j].item() == pytest.approx(1.5 * k1 * k2, rel=1e-12)


@settings(max_examples=30, deadline=None)
@given(
    points=st.lists(
        st.tuples(st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.integers(0, 20).map(float)),
        min_size=2,
        max_size=12,
    ),
    lengthscale=st.floats(0.05, 5.0),
    kernel=st.sampled_from(["matern52", "rbf"]),
)
def test_product_kernel_is_symmetric_positive_semidefinite(
    points: list[tuple[float, float, float]], lengthscale: float, kernel: str
) -> None:
    arr = np.array(points)
    X = torch.from_numpy(arr[:, :2])
    t = torch.from_numpy(arr[:, 2])
    gp = GPRegressor(
        X=X,
        y=torch.zeros(len(arr), dtype=torch.float64),
        t=t,
        inverse_squared_lengthscales=torch.full((2,), lengthscale**-2, dtype=torch.float64),
        kernel_scale=torch.tensor(1.0, dtype=torch.float64),
        noise_var=torch.tensor(1e-6, dtype=torch.float64),
        kernel=kernel,
    )
    K = gp.kernel(X, t).numpy()
    np.testing.assert_allclose(K, K.T, atol=1e-12)
    np.testing.assert_allclose(np.diag(K), 1.0, atol=1e-12)
    assert np.linalg.eigvalsh(K).min() > -1e-9
