"""A float64 torch Gaussian process over (tuned parameters, epoch) for Hyperdyn.

Paper 002 (Hyperdyn), section 2.1 and Algorithm 2: the posterior mean and variance of a GP with
the product kernel of :mod:`optuna_ext._gp.kernels`,

    mean(x) = k(x)^T (K + s2 I)^-1 y,     var(x) = k(x, x) - k(x)^T (K + s2 I)^-1 k(x).

(The paper's Algorithm 2 prints ``+`` and ``y`` in the variance: typos; this is the standard
posterior it cites, Shahriari et al. 2016.) Targets are standardized to mean 0 and standard
deviation 1 before fitting. The kernel hyper-parameters (one length scale per tuned parameter,
the output scale) and the noise variance are fitted by maximizing the log marginal likelihood
with L-BFGS-B on torch gradients, from a few fixed starting points; by default weak priors on
them are added (a MAP fit, as Optuna's GP does) so that 5 observations cannot collapse a length
scale to zero. The time kernel's ``alpha`` and ``beta`` are constants (the paper's 1 and 1/2).

All computation is in float64 on the CPU; the Cholesky factor of ``K + s2 I`` is computed once
per fit and reused by every posterior query. This module does not import Optuna.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import dataclasses
import logging
import math
from typing import Any

import numpy as np
import scipy.optimize
import torch

from optuna_ext._gp.kernels import check_time_kernel_params
from optuna_ext._gp.kernels import stationary_kernel
from optuna_ext._gp.kernels import time_kernel


_logger = logging.getLogger(__name__)

DEFAULT_MINIMUM_NOISE_VAR = 1e-6
"""The smallest noise variance (on the standardized targets) a fit may reach."""

# Starting points (length scale in the unit box, output scale, noise variance) of the fit; the
# first ``n_starts`` are used and the best optimum kept.
_STARTS = ((0.5, 1.0, 0.1), (0.15, 1.0, 0.01), (1.5, 1.0, 0.5))
# Box constraints of the fit in raw (log) space: length scales in [0.01, 20], output scale in
# [1e-3, 1e2], noise variance (above the minimum) in [1e-9, 10].
_LOG_LENGTHSCALE_BOUNDS = (math.log(0.01), math.log(20.0))
_LOG_SCALE_BOUNDS = (math.log(1e-3), math.log(1e2))
_LOG_NOISE_BOUNDS = (math.log(1e-9), math.log(10.0))
_FAILED_LOSS = 1e10
_CONTROLLER: Any = None
# Every tensor is made on the CPU explicitly, whatever torch's default device is.
_CPU = torch.device("cpu")
_LOG_2PI = math.log(2.0 * math.pi)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch and the BLAS libraries on one thread inside the block, then restore them.

    The GP issues many small matrix operations where threads cost more than they save, and on
    Linux the OpenBLAS threads of SciPy's L-BFGS-B and the OpenMP threads of torch compete for
    the same cores (Optuna's ``limit_threads_in_optimization`` describes the same problem;
    setting ``OPENBLAS_NUM_THREADS`` after import does not reach an already loaded OpenBLAS,
    so ``threadpoolctl``, a scikit-learn dependency, is used). Measured here: a 10-point fit
    runs 7 times faster. One thread also makes the floating-point results independent of the
    machine's core count.
    """
    global _CONTROLLER
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.ExitStack() as stack:
            if _CONTROLLER is None:
                try:
                    import threadpoolctl
                except ImportError:  # pragma: no cover - scikit-learn always brings it
                    _CONTROLLER = False
                else:
                    # Finding the loaded libraries takes milliseconds: do it once.
                    _CONTROLLER = threadpoolctl.ThreadpoolController()
            if _CONTROLLER:
                stack.enter_context(_CONTROLLER.limit(limits=1))
            yield
    finally:
        torch.set_num_threads(n_threads)


def _as_tensor(values: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float64), dtype=torch.float64, device=_CPU)


class GPRegressor:
    """A GP with kernel ``scale * K1(x1, x2) * K2(t1, t2)`` conditioned on standardized targets.

    Build it with :func:`fit_gp`; the constructor takes fixed hyper-parameters.

    Args:
        X: Training inputs in the unit box, shape ``(n, d)``.
        y: Standardized training targets, shape ``(n,)``.
        t: Training epochs, shape ``(n,)``, or :obj:`None` for a GP without time (``K2 = 1``).
        inverse_squared_lengthscales: ``1 / lengthscale**2`` per input dimension, ``(d,)``.
        kernel_scale: The output scale (prior variance of ``f``).
        noise_var: The observation noise variance.
        kernel: ``"matern52"`` or ``"rbf"`` for ``K1``.
        alpha: The time kernel's ``alpha``.
        beta: The time kernel's ``beta``.
        y_mean: The mean removed from the raw targets (used by :meth:`predict`).
        y_std: The scale the raw targets were divided by (used by :meth:`predict`).
    """

    def __init__(
        self,
        *,
        X: torch.Tensor,
        y: torch.Tensor,
        t: torch.Tensor | None,
        inverse_squared_lengthscales: torch.Tensor,
        kernel_scale: torch.Tensor,
        noise_var: torch.Tensor,
        kernel: str = "matern52",
        alpha: float = 1.0,
        beta: float = 0.5,
        y_mean: float = 0.0,
        y_std: float = 1.0,
    ) -> None:
        if X.ndim != 2 or y.ndim != 1 or len(X) != len(y):
            raise ValueError(
                f"The shapes of `X` and `y` are {tuple(X.shape)} and {tuple(y.shape)}, but must "
                "be (n, d) and (n,)."
            )
        if t is not None and (t.ndim != 1 or len(t) != len(y)):
            raise ValueError(f"The shape of `t` is {tuple(t.shape)}, but must be ({len(y)},).")
        check_time_kernel_params(alpha, beta)
        self._k1 = stationary_kernel(kernel)
        self.kernel_name = kernel
        self.alpha = alpha
        self.beta = beta
        self.X = X
        self.y = y
        self.t = t
        self.y_mean = y_mean
        self.y_std = y_std
        self.inverse_squared_lengthscales = inverse_squared_lengthscales
        self.kernel_scale = kernel_scale
        self.noise_var = noise_var
        self._squared_diff = (X.unsqueeze(-2) - X.unsqueeze(-3)).square()
        self._train_time_kernel = (
            time_kernel(t, t, alpha=alpha, beta=beta) if t is not None else None
        )
        self._chol: torch.Tensor | None = None
        self._weights: torch.Tensor | None = None

    @property
    def n_observations(self) -> int:
        """The number of training points."""
        return len(self.y)

    @property
    def lengthscales(self) -> np.ndarray:
        """The fitted length scales in the unit box, one per input dimension."""
        return 1.0 / np.sqrt(self.inverse_squared_lengthscales.detach().numpy())

    def _train_kernel(self) -> torch.Tensor:
        sqdist = self._squared_diff.matmul(self.inverse_squared_lengthscales)
        cov = self._k1(sqdist) * self.kernel_scale
        if self._train_time_kernel is not None:
            cov = cov * self._train_time_kernel
        return cov

    def kernel(self, x: torch.Tensor, t: torch.Tensor | float | None = None) -> torch.Tensor:
        """Return the prior covariance between points ``x`` (at epochs ``t``) and the data.

        Args:
            x: Points in the unit box, shape ``(m, d)``.
            t: Their epochs, shape ``(m,)``, or one epoch for all of them (required when the
                GP has time).

        Returns:
            The matrix of shape ``(m, n)``.
        """
        sqdist = (
            (x.unsqueeze(-2) - self.X.unsqueeze(-3))
            .square()
            .matmul(self.inverse_squared_lengthscales)
        )
        cov = self._k1(sqdist) * self.kernel_scale
        if self.t is not None:
            if t is None:
                raise ValueError("This GP models time: pass the epochs `t` of the query points.")
            if not isinstance(t, torch.Tensor):
                # One epoch for every point: one row of the time kernel, broadcast.
                t = torch.tensor([float(t)], dtype=torch.float64, device=_CPU)
            cov = cov * time_kernel(t, self.t, alpha=self.alpha, beta=self.beta)
        return cov

    def _cache(self) -> None:
        self.inverse_squared_lengthscales = self.inverse_squared_lengthscales.detach()
        self.kernel_scale = self.kernel_scale.detach()
        self.noise_var = self.noise_var.detach()
        with torch.no_grad():
            cov = self._train_kernel()
            cov.diagonal().add_(self.noise_var)
            self._chol = torch.linalg.cholesky(cov)
            self._weights = torch.cholesky_solve(self.y.unsqueeze(-1), self._chol).squeeze(-1)

    def posterior(
        self, x: torch.Tensor, t: torch.Tensor | float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the posterior mean and variance of ``f`` (standardized units) at ``x``.

        Differentiable with respect to ``x``. The variance is clamped at 0 against rounding.

        Args:
            x: Points in the unit box, shape ``(m, d)``.
            t: Their epochs, shape ``(m,)``, or one epoch for all of them (required when the
                GP has time).
        """
        if self._chol is None or self._weights is None:
            self._cache()
        assert self._chol is not None and self._weights is not None
        cross = self.kernel(x, t)
        mean = cross.matmul(self._weights)
        v = torch.linalg.solve_triangular(self._chol, cross.transpose(-1, -2), upper=False)
        var = (self.kernel_scale - v.square().sum(dim=-2)).clamp_min(0.0)
        return mean, var

    def predict(self, x: np.ndarray, t: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Return the posterior mean and variance of ``f`` in the units of the raw targets.

        Args:
            x: Points in the unit box, shape ``(m, d)``.
            t: Their epochs, shape ``(m,)`` (required when the GP has time).
        """
        with torch.no_grad():
            mean, var = self.posterior(_as_tensor(x), None if t is None else _as_tensor(t))
        return (
            mean.numpy() * self.y_std + self.y_mean,
            var.numpy() * self.y_std**2,
        )

    def marginal_log_likelihood(self) -> torch.Tensor:
        """Return ``log p(y | X, t, hyper-parameters)`` of the standardized targets.

        Differentiable with respect to the hyper-parameter tensors (through the Cholesky
        factor; the fit uses the cheaper gradient of :meth:`_mll_with_gradient`).
        """
        cov = self._train_kernel()
        cov = cov + torch.diag_embed(self.noise_var.expand(len(self.y)))
        chol = torch.linalg.cholesky(cov)
        z = torch.linalg.solve_triangular(chol, self.y.unsqueeze(-1), upper=False).squeeze(-1)
        n = len(self.y)
        return -0.5 * z.dot(z) - chol.diagonal().log().sum() - 0.5 * n * _LOG_2PI

    def _mll_with_gradient(self) -> tuple[float, torch.Tensor]:
        """Return the log marginal likelihood and a surrogate carrying its gradient.

        With ``C = K + s2 I`` and ``a = C^-1 y``, ``d mll / dC = (a a^T - C^-1) / 2``; the
        surrogate ``sum(C * that)`` (the matrix held constant) has the same gradient with
        respect to the hyper-parameters as the likelihood, at about a third of the cost of
        differentiating through the Cholesky factorization.
        """
        cov = self._train_kernel()
        cov = cov + torch.diag_embed(self.noise_var.expand(len(self.y)))
        with torch.no_grad():
            chol = torch.linalg.cholesky(cov)
            weights = torch.cholesky_solve(self.y.unsqueeze(-1), chol).squeeze(-1)
            n = len(self.y)
            mll = -0.5 * self.y.dot(weights) - chol.diagonal().log().sum() - 0.5 * n * _LOG_2PI
            d_cov = 0.5 * (torch.outer(weights, weights) - torch.cholesky_inverse(chol))
        return float(mll.item()), (cov * d_cov).sum()


def log_prior(
    inverse_squared_lengthscales: torch.Tensor, kernel_scale: torch.Tensor, noise_var: torch.Tensor
) -> torch.Tensor:
    """Return the (unnormalized) log density of the weak priors of a MAP fit.

    ``log lengthscale ~ Normal(log 0.5, 1)`` per dimension (the unit box is the natural scale),
    ``kernel_scale ~ Gamma(2, 1)`` (mode 1 for standardized targets) and
    ``noise_var ~ Gamma(1.1, 10)`` (mostly below about 0.3 of the target variance).
    """
    log_lengthscale = -0.5 * inverse_squared_lengthscales.log()
    lengthscale_part = -0.5 * (log_lengthscale - math.log(0.5)).square().sum()
    scale_part = kernel_scale.log() - kernel_scale
    noise_part = 0.1 * noise_var.log() - 10.0 * noise_var
    return lengthscale_part + scale_part + noise_part


@dataclasses.dataclass(frozen=True)
class KernelParams:
    """Fitted hyper-parameters of a :class:`GPRegressor`, as plain numbers (e.g. to store).

    Attributes:
        inverse_squared_lengthscales: ``1 / lengthscale**2`` per input dimension.
        kernel_scale: The output scale.
        noise_var: The noise variance.
    """

    inverse_squared_lengthscales: tuple[float, ...]
    kernel_scale: float
    noise_var: float

    @classmethod
    def of(cls, gp: GPRegressor) -> KernelParams:
        """Return the hyper-parameters of a fitted GP."""
        return cls(
            inverse_squared_lengthscales=tuple(
                float(v) for v in gp.inverse_squared_lengthscales.detach().numpy()
            ),
            kernel_scale=float(gp.kernel_scale.item()),
            noise_var=float(gp.noise_var.item()),
        )


def _initial_raw(initial: KernelParams, d: int, minimum_noise: float) -> np.ndarray | None:
    values = np.asarray(initial.inverse_squared_lengthscales, dtype=np.float64)
    scalars = np.array([initial.kernel_scale, initial.noise_var], dtype=np.float64)
    if values.shape != (d,) or not (np.all(values > 0) and np.all(scalars > 0)):
        return None
    if not (np.all(np.isfinite(values)) and np.all(np.isfinite(scalars))):
        return None
    raw = np.concatenate(
        [
            np.log(values),
            [
                math.log(initial.kernel_scale),
                math.log(max(initial.noise_var - minimum_noise, 1e-9)),
            ],
        ]
    )
    lows = [-2.0 * _LOG_LENGTHSCALE_BOUNDS[1]] * d + [_LOG_SCALE_BOUNDS[0], _LOG_NOISE_BOUNDS[0]]
    highs = [-2.0 * _LOG_LENGTHSCALE_BOUNDS[0]] * d + [_LOG_SCALE_BOUNDS[1], _LOG_NOISE_BOUNDS[1]]
    return np.clip(raw, lows, highs)


def _standardize(y: np.ndarray) -> tuple[np.ndarray, float, float]:
    mean = float(np.mean(y))
    std = float(np.std(y))
    if not std > 1e-12:
        std = 1.0
    return (y - mean) / std, mean, std


def fit_gp(
    X: np.ndarray,
    y: np.ndarray,
    t: np.ndarray | None = None,
    *,
    kernel: str = "matern52",
    alpha: float = 1.0,
    beta: float = 0.5,
    deterministic: bool = False,
    minimum_noise: float = DEFAULT_MINIMUM_NOISE_VAR,
    prior: bool = True,
    n_starts: int = 1,
    gtol: float = 1e-2,
    maxiter: int = 200,
    initial: KernelParams | None = None,
) -> GPRegressor:
    """Standardize ``y`` and fit a :class:`GPRegressor` by maximizing its marginal likelihood.

    The raw parameters ``log(1 / lengthscale**2)``, ``log kernel_scale`` and
    ``log(noise_var - minimum_noise)`` are optimized with L-BFGS-B on autograd gradients from
    the first ``n_starts`` of three fixed starting points; the best optimum is kept (the fit is
    deterministic). One start is the default: on 48 test sets (Hyperdyn-like and random
    targets, 6 to 100 points) the other two never reached a better optimum. A start that fails
    (e.g. a Cholesky failure) is skipped; when all fail, the first starting point is used
    unfitted and a warning is logged.

    Example:

        .. testcode::

            import numpy as np
            from optuna_ext._gp.gp import fit_gp

            X = np.linspace(0, 1, 8)[:, None]
            gp = fit_gp(X, np.sin(6 * X[:, 0]), t=np.zeros(8))
            mean, var = gp.predict(X[:2], np.zeros(2))

    Args:
        X: Inputs in the unit box, shape ``(n, d)`` with ``n >= 1``.
        y: Finite targets, shape ``(n,)``.
        t: Epochs, shape ``(n,)``, or :obj:`None` for a GP without the time kernel.
        kernel: ``"matern52"`` or ``"rbf"`` for the kernel on the parameters.
        alpha: The time kernel's ``alpha > 0``.
        beta: The time kernel's ``beta > 0``.
        deterministic: Fix the noise variance at ``minimum_noise`` (noiseless targets).
        minimum_noise: The smallest noise variance on the standardized targets, ``> 0``.
        prior: Add the weak priors of :func:`log_prior` (MAP); :obj:`False` maximizes the
            marginal likelihood alone.
        n_starts: The number of starting points, 1 to 3.
        initial: Hyper-parameters to start from (e.g. the previous fit's), replacing the
            first fixed starting point; ignored when their dimension differs from ``X``'s.
        gtol: L-BFGS-B's projected-gradient tolerance (Optuna's GP uses ``1e-2`` too).
        maxiter: L-BFGS-B's iteration limit per start.
    """
    X_np = np.asarray(X, dtype=np.float64)
    y_np = np.asarray(y, dtype=np.float64)
    if X_np.ndim != 2 or y_np.ndim != 1 or len(X_np) != len(y_np) or len(y_np) == 0:
        raise ValueError(
            f"The shapes of `X` and `y` are {X_np.shape} and {y_np.shape}, but must be (n, d) "
            "and (n,) with n >= 1."
        )
    if not np.all(np.isfinite(y_np)):
        raise ValueError("The values of `y` must all be finite.")
    if not (math.isfinite(minimum_noise) and minimum_noise > 0.0):
        raise ValueError(
            f"The value of `minimum_noise` is {minimum_noise}, but must be finite and `> 0`."
        )
    if not 1 <= n_starts <= len(_STARTS):
        raise ValueError(
            f"The value of `n_starts` is {n_starts}, but must be `1 <= n_starts <= "
            f"{len(_STARTS)}`."
        )
    check_time_kernel_params(alpha, beta)
    stationary_kernel(kernel)
    y_std_np, y_mean, y_std = _standardize(y_np)
    X_t = _as_tensor(X_np)
    y_t = _as_tensor(y_std_np)
    t_t = None if t is None else _as_tensor(t)
    d = X_np.shape[1]
    floor = torch.tensor(minimum_noise, dtype=torch.float64, device=_CPU)

    gp = GPRegressor(
        X=X_t,
        y=y_t,
        t=t_t,
        inverse_squared_lengthscales=torch.ones(d, dtype=torch.float64, device=_CPU),
        kernel_scale=torch.tensor(1.0, dtype=torch.float64, device=_CPU),
        noise_var=torch.tensor(1.0, dtype=torch.float64, device=_CPU),
        kernel=kernel,
        alpha=alpha,
        beta=beta,
        y_mean=y_mean,
        y_std=y_std,
    )

    def assign(raw: torch.Tensor) -> None:
        gp.inverse_squared_lengthscales = raw[:d].exp()
        gp.kernel_scale = raw[d].exp()
        gp.noise_var = floor if deterministic else floor + raw[d + 1].exp()

    def loss_and_grad(raw_np: np.ndarray) -> tuple[float, np.ndarray]:
        raw = torch.from_numpy(raw_np).requires_grad_(True)
        with torch.enable_grad():
            assign(raw)
            try:
                mll, surrogate = gp._mll_with_gradient()
            except RuntimeError:  # torch.linalg.LinAlgError subclasses it
                return _FAILED_LOSS, np.zeros_like(raw_np)
            loss = -mll
            objective = -surrogate
            if prior:
                penalty = log_prior(gp.inverse_squared_lengthscales, gp.kernel_scale, gp.noise_var)
                loss -= penalty.item()
                objective = objective - penalty
            (grad,) = torch.autograd.grad(objective, raw)
        if not math.isfinite(loss) or not torch.isfinite(grad).all():
            return _FAILED_LOSS, np.zeros_like(raw_np)
        return loss, grad.numpy().copy()

    bounds = [(-2.0 * hi, -2.0 * lo) for lo, hi in [_LOG_LENGTHSCALE_BOUNDS] * d]
    bounds += [_LOG_SCALE_BOUNDS, _LOG_NOISE_BOUNDS]
    best: tuple[float, np.ndarray] | None = None
    with single_thread():
        starts = [
            np.concatenate(
                [
                    np.full(d, -2.0 * math.log(lengthscale)),
                    [math.log(scale), math.log(max(noise - minimum_noise, 1e-9))],
                ]
            )
            for lengthscale, scale, noise in _STARTS[:n_starts]
        ]
        if initial is not None:
            warm = _initial_raw(initial, d, minimum_noise)
            if warm is not None:
                starts = [warm, *starts[: n_starts - 1]]
        for start in starts:
            result = scipy.optimize.minimize(
                loss_and_grad,
                start,
                jac=True,
                method="L-BFGS-B",
                bounds=bounds,
                options={"gtol": gtol, "maxiter": maxiter},
            )
            if result.fun >= _FAILED_LOSS or not np.all(np.isfinite(result.x)):
                continue
            if best is None or result.fun < best[0]:
                best = (float(result.fun), np.asarray(result.x))
        if best is None:
            _logger.warning(
                "The GP fit failed from every starting point; using unfitted default "
                "hyper-parameters."
            )
            lengthscale, scale, noise = _STARTS[0]
            raw_best = np.concatenate(
                [np.full(d, -2.0 * math.log(lengthscale)), [math.log(scale), math.log(noise)]]
            )
        else:
            raw_best = best[1]
        assign(torch.from_numpy(raw_best))
        gp._cache()
    return gp
