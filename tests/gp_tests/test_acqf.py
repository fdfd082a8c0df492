from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from optuna_ext._gp.acqf import incumbent_threshold
from optuna_ext._gp.acqf import log_expected_improvement
from optuna_ext._gp.acqf import maximize_log_ei
from optuna_ext._gp.gp import fit_gp


def _closed_form_ei(mean: float, sigma: float, tau: float) -> float:
    z = (mean - tau) / sigma
    return (mean - tau) * scipy.stats.norm.cdf(z) + sigma * scipy.stats.norm.pdf(z)


@pytest.mark.parametrize("z", [-35.0, -20.0, -6.0, -5.0, -4.9, -1.0, 0.0, 0.5, 3.0, 10.0])
@pytest.mark.parametrize("sigma", [0.1, 2.0])
def test_log_ei_matches_the_closed_form(z: float, sigma: float) -> None:
    tau = 0.3
    mean = tau + z * sigma
    got = log_expected_improvement(
        torch.tensor([mean], dtype=torch.float64),
        torch.tensor([sigma**2], dtype=torch.float64),
        tau,
    ).item()
    expected = math.log(_closed_form_ei(mean, sigma, tau))
    assert got == pytest.approx(expected, rel=1e-7, abs=1e-9)


def test_log_ei_gradient_is_finite_far_below_the_threshold() -> None:
    mean = torch.tensor([-40.0, -5.0, 0.0], dtype=torch.float64, requires_grad=True)
    value = log_expected_improvement(mean, torch.ones(3, dtype=torch.float64), 0.0).sum()
    (grad,) = torch.autograd.grad(value, mean)
    assert torch.isfinite(grad).all() and (grad > 0).all()


def _synthetic(x: np.ndarray) -> np.ndarray:
    # One broad peak at (0.8, 0.25) on the unit square.
    return -((x[:, 0] - 0.8) ** 2) - (x[:, 1] - 0.25) ** 2


def test_ei_prefers_the_better_region() -> None:
    rng = np.random.default_rng(0)
    X = rng.random((25, 2))
    gp = fit_gp(X, _synthetic(X))
    best, value = maximize_log_ei(gp, t=None, seed=0)
    assert np.linalg.norm(best - np.array([0.8, 0.25])) < 0.2
    # EI over a grid is higher near the peak than in the opposite corner.
    good = torch.tensor([[0.8, 0.25]], dtype=torch.float64)
    bad = torch.tensor([[0.05, 0.95]], dtype=torch.float64)
    tau = incumbent_threshold(gp, None)
    ei = [log_expected_improvement(*gp.posterior(x), tau).item() for x in (good, bad)]
    assert ei[0] > ei[1]
    assert value >= ei[0] - 1e-9


def test_ei_at_a_fixed_epoch_follows_the_latest_epochs() -> None:
    """The optimum moves from x = 0.2 (epochs 0-3) to x = 0.8 (epochs 8-11)."""
    rng = np.random.default_rng(1)
    X: list[float] = []
    y: list[float] = []
    t: list[float] = []
    for epoch in list(range(4)) + list(range(8, 12)):
        centre = 0.2 if epoch < 4 else 0.8
        xs = rng.random(6)
        X.extend(xs)
        y.extend(-((xs - centre) ** 2))
        t.extend([epoch] * 6)
    gp = fit_gp(np.array(X)[:, None], np.array(y), np.array(t, dtype=float))
    late, _ = maximize_log_ei(gp, t=12.0, seed=0)
    assert abs(late[0] - 0.8) < 0.2


def test_seeded_search_is_deterministic() -> None:
    rng = np.random.default_rng(2)
    X = rng.random((10, 3))
    gp = fit_gp(X, X.sum(axis=1), np.arange(10.0))
    a = maximize_log_ei(gp, t=10.0, seed=5)
    b = maximize_log_ei(gp, t=10.0, seed=5)
    np.testing.assert_array_equal(a[0], b[0])
    assert np.all((a[0] >= 0.0) & (a[0] <= 1.0))


def test_time_gp_needs_the_query_epoch() -> None:
    gp = fit_gp(np.array([[0.1], [0.9]]), np.array([0.0, 1.0]), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="epoch"):
        maximize_log_ei(gp, t=None, seed=0)
    with pytest.raises(ValueError, match="n_candidates"):
        maximize_log_ei(gp, t=2.0, seed=0, n_candidates=0)
