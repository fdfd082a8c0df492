"""Expected improvement and its maximization over the unit box at a fixed epoch.

Paper 002, section 2.2, equation (1): for a maximized target with posterior mean ``mu`` and
standard deviation ``sigma`` at ``x``, and a threshold ``tau``,

    EI(x) = (mu - tau) * Phi(z) + sigma * phi(z),    z = (mu - tau) / sigma.

It is computed in log space (``log EI``, stable far below the threshold, as in Ament et al.
2023) so that the search still has a gradient where EI underflows. One-Step-BO (Algorithm 1,
with the search space ``S x [t, t]`` of Algorithm 4, line 6) maximizes it over the box of the
tuned parameters with the epoch fixed: scrambled Sobol candidates, then L-BFGS-B from the best
few. This module does not import Optuna.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.optimize
import scipy.stats.qmc
import torch

from optuna_ext._gp.gp import GPRegressor
from optuna_ext._gp.gp import single_thread


_SQRT_HALF = math.sqrt(0.5)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_SQRT_HALF_PI = math.sqrt(0.5 * math.pi)
# Below this z the direct formula loses all precision; an erfcx form is used instead.
_Z_SWITCH = -5.0
_MIN_VAR = 1e-30


def _log_h(z: torch.Tensor) -> torch.Tensor:
    """``log(z * Phi(z) + phi(z))``, the log EI of a standard normal at offset ``z``."""
    z_hi = z.clamp_min(_Z_SWITCH)
    direct = torch.log(
        z_hi * 0.5 * torch.special.erfc(-_SQRT_HALF * z_hi)
        + torch.exp(-0.5 * z_hi.square() - _LOG_SQRT_2PI)
    )
    # z Phi(z) + phi(z) = phi(z) * (1 + z * sqrt(pi / 2) * erfcx(-z / sqrt(2))).
    z_lo = z.clamp_max(_Z_SWITCH)
    tail = torch.log1p(z_lo * _SQRT_HALF_PI * torch.special.erfcx(-_SQRT_HALF * z_lo))
    asymptotic = -0.5 * z_lo.square() - _LOG_SQRT_2PI + tail
    return torch.where(z > _Z_SWITCH, direct, asymptotic)


def log_expected_improvement(
    mean: torch.Tensor, var: torch.Tensor, threshold: float
) -> torch.Tensor:
    """Return ``log E[max(f - threshold, 0)]`` for ``f ~ N(mean, var)`` (maximization).

    Example:

        .. testcode::

            import math

            import torch
            from optuna_ext._gp.acqf import log_expected_improvement

            zero = torch.tensor([0.0], dtype=torch.float64)
            value = log_expected_improvement(zero, zero + 1.0, 0.0)
            # E[max(Z, 0)] = 1 / sqrt(2 pi) for a standard normal Z.
            assert math.isclose(value.item(), -0.5 * math.log(2 * math.pi))

    Args:
        mean: Posterior means.
        var: Posterior variances (clamped at ``1e-30``).
        threshold: The improvement threshold ``tau``.
    """
    sigma = var.clamp_min(_MIN_VAR).sqrt()
    return _log_h((mean - threshold) / sigma) + sigma.log()


def incumbent_threshold(gp: GPRegressor, t: float | None) -> float:
    """Return the EI threshold: the best posterior mean over the observed points at epoch ``t``.

    Paper 002 (section 2.2) names the best noisy observation as the usual threshold. With the
    time kernel, observations from early epochs (large accuracy jumps) would dominate that
    maximum and make every later proposal pure exploration, so the observed parameter values
    are re-evaluated at the query epoch and the best posterior mean there is used (without time
    this is the noise-filtered best observation).
    """
    with torch.no_grad(), single_thread():
        mean, _ = gp.posterior(gp.X, None if t is None else float(t))
    return float(mean.max().item())


def maximize_log_ei(
    gp: GPRegressor,
    *,
    t: float | None,
    seed: int,
    threshold: float | None = None,
    n_candidates: int = 1024,
    n_local_search: int = 4,
    maxiter: int = 50,
) -> tuple[np.ndarray, float]:
    """Return the point of the unit box that maximizes log EI at epoch ``t``, and that value.

    ``n_candidates`` scrambled Sobol points (rounded up to a power of two, seeded by ``seed``)
    plus the observed points are scored; L-BFGS-B then polishes the best ``n_local_search`` of
    them within the box (all in one batched run), and the best point seen wins.

    Args:
        gp: The fitted GP.
        t: The fixed epoch of the query, or :obj:`None` for a GP without time.
        seed: The seed of the Sobol sequence.
        threshold: The improvement threshold (standardized units); :obj:`None` uses
            :func:`incumbent_threshold`.
        n_candidates: The number of Sobol candidates, ``>= 1``.
        n_local_search: The number of L-BFGS-B polishes, ``>= 0``.
        maxiter: L-BFGS-B's iteration limit per polish.
    """
    if n_candidates < 1:
        raise ValueError(f"The value of `n_candidates` is {n_candidates}, but must be `>= 1`.")
    if n_local_search < 0:
        raise ValueError(f"The value of `n_local_search` is {n_local_search}, but must be `>= 0`.")
    if gp.t is not None and t is None:
        raise ValueError("This GP models time: pass the epoch `t` of the query.")
    dim = gp.X.shape[1]
    if threshold is None:
        threshold = incumbent_threshold(gp, t if gp.t is not None else None)
    tau = threshold
    query_t = float(t) if (gp.t is not None and t is not None) else None

    def score(x: torch.Tensor) -> torch.Tensor:
        mean, var = gp.posterior(x, query_t)
        return log_expected_improvement(mean, var, tau)

    with single_thread():
        m = max(0, math.ceil(math.log2(n_candidates)))
        sobol = scipy.stats.qmc.Sobol(d=dim, scramble=True, seed=np.random.default_rng(seed))
        candidates = np.concatenate([sobol.random_base2(m), gp.X.numpy()])
        with torch.no_grad():
            values = score(torch.from_numpy(candidates)).numpy()
        values = np.where(np.isfinite(values), values, -np.inf)
        order = np.argsort(-values, kind="stable")
        best_x = candidates[order[0]].copy()
        best_value = float(values[order[0]])
        starts = candidates[order[:n_local_search]]
        k = len(starts)

        def negative_sum(flat: np.ndarray) -> tuple[float, np.ndarray]:
            # The polishes are independent: one L-BFGS-B over all of them at once, whose
            # objective is the sum, evaluates the GP once per step for the whole batch.
            x = torch.from_numpy(flat.reshape(k, dim)).requires_grad_(True)
            with torch.enable_grad():
                total = score(x).sum()
                (grad,) = torch.autograd.grad(total, x)
            v = total.item()
            if not math.isfinite(v) or not torch.isfinite(grad).all():
                return math.inf, np.zeros_like(flat)
            return -v, -grad.numpy().reshape(-1).copy()

        if k > 0:
            result = scipy.optimize.minimize(
                negative_sum,
                starts.reshape(-1),
                jac=True,
                method="L-BFGS-B",
                bounds=[(0.0, 1.0)] * (k * dim),
                options={"maxiter": maxiter},
            )
            polished = np.clip(np.asarray(result.x, dtype=np.float64).reshape(k, dim), 0.0, 1.0)
            with torch.no_grad():
                polished_values = score(torch.from_numpy(polished)).numpy()
            i = int(np.argmax(np.where(np.isfinite(polished_values), polished_values, -np.inf)))
            if np.isfinite(polished_values[i]) and polished_values[i] > best_value:
                best_value = float(polished_values[i])
                best_x = polished[i]
    return best_x, best_value
