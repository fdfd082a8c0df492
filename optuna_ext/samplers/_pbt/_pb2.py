"""PB2's explore step: GP-UCB over (time, score before, hyper-parameters); no Optuna import.

Parker-Holder et al., "Provably Efficient Online Hyperparameter Optimization with
Population-Based Bandits" (NeurIPS 2020), as implemented in Ray Tune's ``pb2.py`` and
``pb2_utils.py``:

* one data row per finished segment: ``x = [t, R_before, h]`` (the segment's start time, the
  score it started from, its hyper-parameters in ``[0, 1]``) and ``y = R_after - R_before``
  (the score gained; Ray divides by the elapsed time, which is one segment here);
* ``t`` and ``R_before`` are min-max normalized over the rows and the query, ``y`` is
  standardized and clipped to ``[-2, 2]``;
* the kernel is Ray's time-varying squared exponential
  ``k = v * exp(-|x - x'|^2 / l) * (1 - eps)^(|t - t'| / 2)`` over ``x = [R_before, h]``;
* the acquisition is ``UCB = mu(x) + kappa * var'(x)`` with
  ``kappa = sqrt(0.2 + max(0, ln(0.4 N)))``, where ``var'`` is the posterior variance after
  adding the points already chosen for this time step (Ray's second GP ``m1``, whose fake
  ``y = 0`` does not affect a variance), maximized by L-BFGS-B.

Differences (kept small on purpose): ``v = 1`` (``y`` is standardized), and ``l``, ``eps`` and
a noise variance are chosen by maximizing the marginal likelihood over a small grid (Ray fits
``v``, ``l``, ``eps`` by L-BFGS-B and adds only a ``1e-10`` jitter, which cannot fit the
repeated inputs that exploitation creates); only the latest :data:`MAX_ROWS` rows are used
(Ray keeps 1000 and picks a window length by likelihood); L-BFGS-B starts from the best 3 of
1000 random points (Ray: from 10 random points); the query is ``x = [t, R]`` of the new
segment, i.e. its generation and the score of the checkpoint it clones (Ray uses the time and
``R_before`` of the clone's last recorded segment).

With few rows and gains within their noise (a saturated validation accuracy late in
training), the GP's mean is nearly flat (within about 0.5 standard deviations of ``y``) while
``kappa * var'`` is 0.8 to 1.5 away from the data, so the proposals go to corners of
``[0, 1]^d`` (every parameter at a bound). That is GP-UCB exploring, not a wrong sign or
scale: with a clear signal the proposals find an optimum in the middle (see
``benchmarks/results/pb2_lower_bound.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
import itertools
import math

import numpy as np
import scipy.linalg
import scipy.optimize


MAX_ROWS = 250
"""The number of latest data rows the GP is fitted on."""

_LENGTHSCALES = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_EPSILONS = (0.01, 0.05, 0.1, 0.3, 0.5)
_NOISES = (1e-3, 1e-2, 1e-1)
_N_CANDIDATES = 1000
_N_STARTS = 3


def _kernel(a: np.ndarray, b: np.ndarray, lengthscale: float, epsilon: float) -> np.ndarray:
    dt = np.abs(a[:, :1] - b[:, :1].T)
    diff = a[:, None, 1:] - b[None, :, 1:]
    sq = np.einsum("ijk,ijk->ij", diff, diff)
    return np.exp(-sq / lengthscale) * (1.0 - epsilon) ** (0.5 * dt)


class _GP:
    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x = x
        self.y = y
        best: tuple[float, float, float, float] | None = None
        for lengthscale, epsilon, noise in itertools.product(_LENGTHSCALES, _EPSILONS, _NOISES):
            k = _kernel(x, x, lengthscale, epsilon) + noise * np.eye(len(x))
            try:
                chol = scipy.linalg.cho_factor(k, lower=True)
            except np.linalg.LinAlgError:
                continue
            alpha = scipy.linalg.cho_solve(chol, y)
            # Log marginal likelihood (unit signal variance: y is standardized).
            lml = -0.5 * float(y @ alpha) - float(np.sum(np.log(np.diag(chol[0]))))
            if best is None or lml > best[0]:
                best = (lml, lengthscale, epsilon, noise)
        if best is None:  # pragma: no cover (a noise of 1e-1 keeps K well conditioned)
            raise np.linalg.LinAlgError("No kernel setting gave a positive definite matrix.")
        _, self.lengthscale, self.epsilon, self.noise = best
        self.chol = scipy.linalg.cho_factor(
            self._k(x, x) + self.noise * np.eye(len(x)), lower=True
        )
        self.alpha = scipy.linalg.cho_solve(self.chol, y)

    def _k(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return _kernel(a, b, self.lengthscale, self.epsilon)

    def mean(self, q: np.ndarray) -> np.ndarray:
        return self._k(q, self.x) @ self.alpha

    def variance_function(
        self, pending: np.ndarray | None = None
    ) -> Callable[[np.ndarray], np.ndarray]:
        """The posterior variance after also observing ``pending`` (whose values do not matter)."""
        x = self.x if pending is None or len(pending) == 0 else np.vstack([self.x, pending])
        chol = (
            self.chol
            if x is self.x
            else scipy.linalg.cho_factor(self._k(x, x) + self.noise * np.eye(len(x)), lower=True)
        )

        def variance(q: np.ndarray) -> np.ndarray:
            kq = self._k(q, x)
            v = scipy.linalg.cho_solve(chol, kq.T)
            return np.maximum(1.0 - np.einsum("ij,ji->i", kq, v), 1e-12)

        return variance


def _normalize(column: np.ndarray) -> tuple[float, float]:
    lo, hi = float(np.min(column)), float(np.max(column))
    return lo, (hi - lo) if hi > lo else 1.0


def propose(
    rows_x: Sequence[Sequence[float]],
    rows_y: Sequence[float],
    fixed: Sequence[float],
    rng: np.random.RandomState,
    *,
    pending: Sequence[Sequence[float]] = (),
) -> np.ndarray:
    """Propose hyper-parameters in ``[0, 1]^d`` by GP-UCB, as PB2 does.

    Example:

        .. testcode::

            import numpy as np
            from optuna_ext.samplers._pbt._pb2 import propose

            rng = np.random.RandomState(0)
            # Segments gained most with h near 0.8.
            xs = [[t, 0.0, h] for t in range(3) for h in (0.1, 0.5, 0.8)]
            ys = [-((h - 0.8) ** 2) for _, _, h in xs]
            h = propose(xs, ys, fixed=[3, 0.0], rng=rng)
            assert h.shape == (1,) and 0.0 <= h[0] <= 1.0

    Args:
        rows_x:
            The data rows ``[t, R_before, h_1, ..., h_d]``, with ``h`` in ``[0, 1]``.
        rows_y:
            The score gained in each row's segment (higher is better).
        fixed:
            ``[t, R_before]`` of the segment to propose for.
        rng:
            The random state of the starting points.
        pending:
            Rows ``[t, R_before, h...]`` already chosen for this time step (they shrink the
            variance there, so that one batch spreads out).

    Returns:
        The proposed ``h`` (length ``d``).
    """
    x = np.asarray(rows_x, dtype=float)[-MAX_ROWS:]
    y = np.asarray(rows_y, dtype=float)[-MAX_ROWS:]
    if x.ndim != 2 or x.shape[1] < 3 or len(x) != len(y) or len(x) < 1:
        raise ValueError(
            f"The data rows have shape {x.shape} for {len(y)} targets, but must be `(n, 2 + d)` "
            "with `n >= 1` and `d >= 1`."
        )
    d = x.shape[1] - 2
    pend = np.asarray(pending, dtype=float).reshape(-1, d + 2) if len(pending) else None
    query_fixed = np.asarray(fixed, dtype=float).reshape(1, 2)
    both = np.vstack([x[:, :2], query_fixed] + ([pend[:, :2]] if pend is not None else []))
    scales = [_normalize(both[:, j]) for j in range(2)]

    def norm(rows: np.ndarray) -> np.ndarray:
        out = rows.copy()
        for j, (lo, width) in enumerate(scales):
            out[:, j] = (rows[:, j] - lo) / width
        return out

    xn = norm(x)
    sd = float(np.std(y))
    yn = np.clip((y - float(np.mean(y))) / (sd if sd > 0 else 1.0), -2.0, 2.0)
    gp = _GP(xn, yn)
    fixed_n = norm(np.hstack([query_fixed, np.zeros((1, d))]))[0, :2]
    variance = gp.variance_function(norm(pend) if pend is not None else None)
    kappa = math.sqrt(0.2 + max(0.0, math.log(0.4 * len(x))))

    def ucb(h: np.ndarray) -> np.ndarray:
        q = np.hstack([np.broadcast_to(fixed_n, (len(h), 2)), h])
        return gp.mean(q) + kappa * variance(q)

    def negative_ucb(h: np.ndarray) -> float:
        return -float(ucb(h.reshape(1, -1))[0])

    candidates = rng.uniform(0.0, 1.0, size=(_N_CANDIDATES, d))
    starts = candidates[np.argsort(-ucb(candidates))[:_N_STARTS]]
    best_h: np.ndarray | None = None
    best_value = math.inf
    for start in starts:
        result = scipy.optimize.minimize(
            negative_ucb,
            start,
            method="L-BFGS-B",
            bounds=[(0.0, 1.0)] * d,
            options={"maxiter": 200},
        )
        h = np.clip(np.asarray(result.x, dtype=float), 0.0, 1.0)
        value = negative_ucb(h)
        if value < best_value:
            best_value, best_h = value, h
    assert best_h is not None
    return best_h
