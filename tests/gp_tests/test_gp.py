from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

from optuna_ext._gp.box import UnitBox
from optuna_ext._gp.gp import fit_gp
from optuna_ext._gp.gp import GPRegressor


def _data(n: int, seed: int = 0, noise: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.random((n, 2))
    t = rng.integers(0, 5, n).astype(float)
    y = np.sin(4 * X[:, 0]) + X[:, 1] ** 2 - 0.2 * t + noise * rng.standard_normal(n)
    return X, y, t


@pytest.mark.parametrize("with_time", [True, False])
@pytest.mark.parametrize("kernel", ["matern52", "rbf"])
def test_noiseless_gp_interpolates_and_variance_shrinks(with_time: bool, kernel: str) -> None:
    X, y, t = _data(12)
    gp = fit_gp(X, y, t if with_time else None, kernel=kernel, deterministic=True)
    mean, var = gp.predict(X, t if with_time else None)
    np.testing.assert_allclose(mean, y, atol=1e-3 * np.std(y))
    prior_var = gp.kernel_scale.item() * gp.y_std**2
    assert np.all(var < 1e-3 * prior_var)
    # Far from the data (a corner with no point nearby, or many epochs later), the variance
    # is much larger.
    far_x = np.array([[1.0, 1.0]]) if not with_time else X[:1]
    far_t = np.array([50.0]) if with_time else None
    _, far_var = gp.predict(far_x, far_t)
    assert far_var[0] > 100 * var.max()


def test_marginal_log_likelihood_matches_scipy() -> None:
    X, y, t = _data(9, noise=0.1)
    yt = torch.from_numpy((y - y.mean()) / y.std())
    gp = GPRegressor(
        X=torch.from_numpy(X),
        y=yt,
        t=torch.from_numpy(t),
        inverse_squared_lengthscales=torch.tensor([3.0, 0.5], dtype=torch.float64),
        kernel_scale=torch.tensor(1.3, dtype=torch.float64),
        noise_var=torch.tensor(0.05, dtype=torch.float64),
    )
    cov = gp.kernel(torch.from_numpy(X), torch.from_numpy(t)).numpy() + 0.05 * np.eye(9)
    expected = scipy.stats.multivariate_normal(mean=np.zeros(9), cov=cov).logpdf(yt.numpy())
    assert gp.marginal_log_likelihood().item() == pytest.approx(expected, rel=1e-10)
    fast, _ = gp._mll_with_gradient()
    assert fast == pytest.approx(expected, rel=1e-10)


def test_fast_likelihood_gradient_matches_autograd() -> None:
    X, y, t = _data(15, noise=0.1)
    raw = torch.tensor([0.3, -0.5, 0.2, -2.0], dtype=torch.float64, requires_grad=True)

    def build() -> GPRegressor:
        return GPRegressor(
            X=torch.from_numpy(X),
            y=torch.from_numpy((y - y.mean()) / y.std()),
            t=torch.from_numpy(t),
            inverse_squared_lengthscales=raw[:2].exp(),
            kernel_scale=raw[2].exp(),
            noise_var=raw[3].exp(),
        )

    (expected,) = torch.autograd.grad(build().marginal_log_likelihood(), raw)
    _, surrogate = build()._mll_with_gradient()
    (fast,) = torch.autograd.grad(surrogate, raw)
    np.testing.assert_allclose(fast.numpy(), expected.numpy(), rtol=1e-8, atol=1e-10)


def test_fit_raises_likelihood_and_recovers_relevance() -> None:
    rng = np.random.default_rng(1)
    X = rng.random((40, 2))
    y = np.sin(6 * X[:, 0]) + 0.01 * rng.standard_normal(40)  # the 2nd input is irrelevant
    gp = fit_gp(X, y, prior=False)
    start = GPRegressor(
        X=gp.X,
        y=gp.y,
        t=None,
        inverse_squared_lengthscales=torch.full((2,), 4.0, dtype=torch.float64),
        kernel_scale=torch.tensor(1.0, dtype=torch.float64),
        noise_var=torch.tensor(0.1, dtype=torch.float64),
    )
    assert gp.marginal_log_likelihood().item() > start.marginal_log_likelihood().item()
    lengthscales = gp.lengthscales
    assert lengthscales[1] > 3 * lengthscales[0]
    assert gp.noise_var.item() < 0.01


def test_fit_standardizes_targets() -> None:
    X, y, t = _data(10)
    gp = fit_gp(X, 1000.0 + 50.0 * y, t)
    assert gp.y_mean == pytest.approx(np.mean(1000.0 + 50.0 * y))
    assert gp.y.mean().item() == pytest.approx(0.0, abs=1e-12)
    assert gp.y.std(unbiased=False).item() == pytest.approx(1.0)
    constant = fit_gp(X, np.full(10, 3.0), t)
    mean, _ = constant.predict(X[:2], t[:2])
    np.testing.assert_allclose(mean, 3.0)


def test_single_observation_is_fine() -> None:
    gp = fit_gp(np.array([[0.5]]), np.array([2.0]), np.array([0.0]))
    mean, var = gp.predict(np.array([[0.5]]), np.array([0.0]))
    assert np.isfinite(mean).all() and np.isfinite(var).all()


@pytest.mark.parametrize(
    "X, y, match",
    [
        (np.zeros((3, 1)), np.array([0.0, np.nan, 1.0]), "finite"),
        (np.zeros((3, 1)), np.zeros(2), "shapes"),
        (np.zeros((0, 1)), np.zeros(0), "shapes"),
    ],
)
def test_fit_rejects_bad_data(X: np.ndarray, y: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fit_gp(X, y)


def test_time_query_is_required_for_a_time_gp() -> None:
    X, y, t = _data(5)
    gp = fit_gp(X, y, t)
    with pytest.raises(ValueError, match="epochs"):
        gp.predict(X)


def test_unit_box_round_trip_and_log_scale() -> None:
    box = UnitBox(lows=[1e-4, -1.0], highs=[1.0, 1.0], logs=[True, False])
    values = np.array([[1e-4, -1.0], [1e-2, 0.0], [1.0, 1.0]])
    unit = box.to_unit(values)
    np.testing.assert_allclose(unit, [[0.0, 0.0], [0.5, 0.5], [1.0, 1.0]], atol=1e-12)
    np.testing.assert_allclose(box.from_unit(unit), values, rtol=1e-12)


@pytest.mark.parametrize(
    "low, high, log, match",
    [
        (0.0, 1.0, True, "positive bounds"),
        (-1.0, 1.0, True, "positive bounds"),
        (1.0, 1.0, False, "low < high"),
        (0.0, np.inf, False, "finite"),
    ],
)
def test_unit_box_rejects_bad_bounds(low: float, high: float, log: bool, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        UnitBox(lows=[low], highs=[high], logs=[log])
