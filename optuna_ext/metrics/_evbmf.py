"""Empirical variational Bayesian matrix factorization (EVBMF), singular values only.

This module follows the reference implementation that autoHyper and AdaS use
(``EVBMF(Y)`` in their ``VBMF.py``), which computes Nakajima et al.'s global analytic EVB
solution:

- S. Nakajima, M. Sugiyama, S. D. Babacan, R. Tomioka. "Global analytic solution of
  fully-observed variational Bayesian matrix factorization." JMLR 14 (2013).
- S. Nakajima, R. Tomioka, M. Sugiyama, S. D. Babacan. "Perfect dimensionality recovery by
  variational Bayesian PCA." NeurIPS 2012.

It differs from the reference where the reference is slow or wrong:

- Only singular values are computed (no singular vectors), in float64, by default as the
  square roots of the eigenvalues of the smaller Gram matrix, batched over matrices of equal
  shape.
- The noise variance search runs for a whole batch of matrices at once instead of calling
  ``scipy.optimize.minimize_scalar(method="bounded")`` per matrix: each step evaluates the
  free energy of every matrix in one torch call, and each matrix's bounded Brent search (the
  same steps as scipy's) is advanced by a few scalar operations. Its stopping tolerance is
  relative: the reference uses scipy's default ``xatol=1e-5``, an *absolute* tolerance on
  :math:`\\sigma^2`. That is coarse for convolution weights (a He-initialized 3x3 convolution
  with 512 input channels has an entry variance of 4e-4), and for entry variances near or below
  ``1e-5`` it stops the search at its first probe and gives pure noise a nonzero rank.
- By default, matrices are divided by the root mean square (RMS) of their entries before the
  search and tall matrices are transposed (see ``tall_policy``). ``tall_policy="reference"``,
  ``rescale=False`` and ``atol=1e-5`` reproduce the reference's search (in float64).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Generator
from collections.abc import Sequence
import math
from typing import NamedTuple

import torch


_TALL_POLICIES = ("transpose", "reference")
_SVD_METHODS = ("gram", "svdvals")

# tau_bar = 2.5129 * sqrt(alpha) is the reference's (and Nakajima et al.'s) numerical solution
# of the equation that defines the EVB detection threshold.
_TAU_BAR_SLOPE = 2.5129
_GOLDEN = 0.5 * (3.0 - math.sqrt(5.0))
# scipy's bounded Brent always adds sqrt(2.2e-16) * |x| to its tolerance; we use the same
# relative tolerance by default, and no absolute one.
_DEFAULT_RTOL = math.sqrt(2.2e-16)
_MAX_EVALUATIONS = 500
_GRAM_PANEL_MIN_ROWS = 192


class EVBMFResult(NamedTuple):
    """The EVBMF solution of one matrix.

    Attributes:
        rank:
            The number of singular values above the EVB threshold (the estimated rank).
        sigma2:
            The estimated noise variance :math:`\\hat\\sigma^2` of the entries, in the units of
            the input. ``nan`` where ``tall_policy="reference"`` reproduces the reference's
            failure on a tall matrix (its search interval is empty).
        threshold:
            The detection threshold :math:`\\underline{\\gamma} = \\sqrt{M \\hat\\sigma^2
            (1 + \\bar\\tau)(1 + \\alpha / \\bar\\tau)}`: singular values above it are kept.
            ``nan`` on the reference failure.
        singular_values:
            The ``rank`` shrunk (EVB posterior mean) singular values, in descending order, as a
            1-D float64 tensor on the device of the input.
    """

    rank: int
    sigma2: float
    threshold: float
    singular_values: torch.Tensor


class _BatchSolution(NamedTuple):
    rank: torch.Tensor  # (B,) int64
    sigma2: torch.Tensor  # (B,) float64
    threshold: torch.Tensor  # (B,) float64
    shrunk: torch.Tensor  # (B, H) float64, zero from column ``rank`` on


def _validate_options(tall_policy: str, rtol: float, atol: float, svd_method: str) -> None:
    if tall_policy not in _TALL_POLICIES:
        raise ValueError(
            f"The value of `tall_policy` is {tall_policy!r}, but must be one of "
            f"{', '.join(repr(p) for p in _TALL_POLICIES)}."
        )
    if not (0.0 <= rtol < math.inf and 0.0 <= atol < math.inf and rtol + atol > 0.0):
        raise ValueError(
            f"The values of `rtol` and `atol` are {rtol} and {atol}, but must be finite with "
            "`rtol >= 0`, `atol >= 0` and `rtol + atol > 0`."
        )
    if svd_method not in _SVD_METHODS:
        raise ValueError(
            f"The value of `svd_method` is {svd_method!r}, but must be one of "
            f"{', '.join(repr(m) for m in _SVD_METHODS)}."
        )


def _singular_values(stack: torch.Tensor, svd_method: str) -> torch.Tensor:
    """Singular values of a ``(B, L, M)`` stack, descending, float64, shape ``(B, min(L, M))``."""
    stack = stack.detach().to(torch.float64)
    if svd_method == "svdvals":
        return torch.linalg.svdvals(stack)
    # Eigenvalues of the smaller Gram matrix. In float64 this loses nothing that matters here:
    # a singular value s_h gets an absolute error of about eps * s_1^2 / s_h, i.e. a relative
    # error below 1e-8 for s_h / s_1 > 1e-4, and EVBMF only compares singular values with a
    # threshold at the noise level.
    if stack.shape[-2] > stack.shape[-1]:
        stack = stack.transpose(-2, -1)
    return _singular_values_from_gram(_lower_gram(stack))


def _singular_values_from_gram(gram: torch.Tensor) -> torch.Tensor:
    """Descending square roots of the eigenvalues of Gram matrices given by their lower half."""
    eigenvalues = torch.linalg.eigvalsh(gram, UPLO="L")
    return eigenvalues.clamp_min(0.0).sqrt().flip(-1)


def _lower_gram(stack: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """The lower triangle of ``stack @ stack.mT`` (the rest zero), for ``eigvalsh``.

    Large Gram matrices are formed by panels of rows, each multiplied only with the rows up to
    its own: about 60% of the multiplications of the full product. ``out``, if given, receives
    the result.
    """
    n_rows = stack.shape[-2]
    if out is None:
        out = stack.new_empty(*stack.shape[:-1], n_rows)
    if n_rows < _GRAM_PANEL_MIN_ROWS:
        return torch.matmul(stack, stack.mT, out=out)
    panel = max(64, n_rows // 8)
    out.zero_()
    for start in range(0, n_rows, panel):
        stop = min(start + panel, n_rows)
        out[..., start:stop, :stop] = stack[..., start:stop, :] @ stack[..., :stop, :].mT
    return out


def last_indices(counts: Sequence[int], device: torch.device | str) -> torch.Tensor:
    """The index of each row's last entry, ``counts[i] - 1``, as a ``(B, 1)`` index tensor."""
    return (torch.tensor(list(counts), device=device) - 1).unsqueeze(1)


def padded_row_sums(values: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """Row sums of a padded ``(B, width)`` batch, each up to its row's ``last`` index: ``(B, 1)``.

    Each is the prefix sum at the row's last entry: a running sum in index order, so that a
    row's result does not depend on how far the rows are padded (a plain ``sum`` over the
    padded width changes its summation order with the width, and with it the last bits, the
    search's path and, near the threshold, the rank), i.e. on the other matrices of the batch.
    ``last`` comes from :func:`last_indices`.
    """
    return values.cumsum(dim=1).gather(1, last.expand(values.shape[0], 1))


def _brent_bounded(
    lower: float, upper: float, rtol: float, atol: float
) -> Generator[float, float, float]:
    """Brent's bounded minimization of one scalar function, as a coroutine.

    It yields each abscissa to evaluate, receives the function's value there, and returns the
    minimizer. The steps are those of ``scipy.optimize.minimize_scalar(method="bounded")``
    (golden-section steps, replaced by parabolic steps where acceptable); it stops once the
    bracket is within ``2 * (rtol * |x| + atol / 3)`` of the best point ``x``, scipy's test with
    ``xatol=atol`` when ``rtol`` is ``sqrt(2.2e-16)``.
    """
    a, b = lower, upper
    x = w = v = a + _GOLDEN * (b - a)
    fx = yield x
    fw = fv = fx
    step = previous_step = 0.0
    for _ in range(_MAX_EVALUATIONS - 1):
        middle = 0.5 * (a + b)
        tol1 = rtol * abs(x) + atol / 3.0
        tol2 = 2.0 * tol1
        if abs(x - middle) <= tol2 - 0.5 * (b - a):
            break
        golden = True
        if abs(previous_step) > tol1:
            # The vertex of the parabola through (x, fx), (w, fw) and (v, fv).
            r = (x - w) * (fx - fv)
            q = (x - v) * (fx - fw)
            p = (x - v) * q - (x - w) * r
            q = 2.0 * (q - r)
            if q > 0.0:
                p = -p
            q = abs(q)
            older_step = previous_step
            previous_step = step
            if abs(p) < abs(0.5 * q * older_step) and q * (a - x) < p < q * (b - x):
                step = p / q
                if x + step - a < tol2 or b - (x + step) < tol2:
                    step = tol1 if middle >= x else -tol1
                golden = False
        if golden:
            previous_step = a - x if x >= middle else b - x
            step = _GOLDEN * previous_step
        u = x + (1.0 if step >= 0.0 else -1.0) * max(abs(step), tol1)
        fu = yield u
        if fu <= fx:
            if u >= x:
                a = x
            else:
                b = x
            v, fv = w, fw
            w, fw = x, fx
            x, fx = u, fu
        else:
            if u < x:
                a = u
            else:
                b = u
            if fu <= fw or w == x:
                v, fv = w, fw
                w, fw = u, fu
            elif fu <= fv or v == x or v == w:
                v, fv = u, fu
    return x


def _minimize_bounded(
    fun: Callable[[torch.Tensor], torch.Tensor],
    lower: torch.Tensor,
    upper: torch.Tensor,
    *,
    rtol: float,
    atol: float,
) -> torch.Tensor:
    """Minimize ``B`` scalar functions, each on its interval, with Brent's bounded method.

    ``fun`` maps a ``(B,)`` tensor of abscissae to the ``(B,)`` tensor of the ``B`` functions'
    values there. Each step evaluates all ``B`` functions in one call (the expensive part, a
    sum over singular values here) and advances the ``B`` searches of :func:`_brent_bounded`,
    whose bookkeeping is a few scalar operations each.
    """
    searches = [
        _brent_bounded(lo, up, rtol, atol)
        for lo, up in zip(lower.tolist(), upper.tolist(), strict=True)
    ]
    points = [next(search) for search in searches]
    running = list(range(len(searches)))
    while running:
        values = fun(torch.tensor(points, dtype=lower.dtype, device=lower.device)).tolist()
        still_running = []
        for i in running:
            try:
                points[i] = searches[i].send(values[i])
                still_running.append(i)
            except StopIteration as stop:
                points[i] = stop.value
        running = still_running
    return torch.tensor(points, dtype=lower.dtype, device=lower.device)


def _solve_padded(
    singular_values: torch.Tensor,
    shapes: Sequence[tuple[int, int]],
    *,
    tall_policy: str,
    rescale: bool,
    rtol: float,
    atol: float,
) -> _BatchSolution:
    """EVBMF of ``B`` matrices of any shapes, given their singular values.

    Args:
        singular_values:
            ``(B, H)`` float64, row ``i`` holding the ``min(shapes[i])`` singular values of
            matrix ``i`` in descending order, padded with anything after them.
        shapes:
            The ``(L, M)`` shape of each matrix.
    """
    device = singular_values.device
    width = singular_values.shape[1]

    def column(values: Sequence[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float64, device=device).unsqueeze(1)

    rows: list[float] = []  # L of the formulas
    cols: list[float] = []  # M of the formulas
    counts: list[int] = []  # number of singular values
    tail_starts: list[int] = []
    for n_rows, n_cols in shapes:
        if n_rows < 1 or n_cols < 1:
            raise ValueError(f"The shape of a matrix is {(n_rows, n_cols)}, but must be nonempty.")
        if tall_policy == "transpose" and n_rows > n_cols:
            n_rows, n_cols = n_cols, n_rows
        aspect = n_rows / n_cols
        # Index of the first singular value of the "tail" that bounds sigma^2 from below, as the
        # reference computes it (``eH_ub + 1``, in floating point, with H = L).
        tail_starts.append(min(math.ceil(n_rows / (1 + aspect)) - 1, n_rows))
        rows.append(float(n_rows))
        cols.append(float(n_cols))
        counts.append(min(n_rows, n_cols))

    L = column(rows)
    M = column(cols)
    alpha = L / M
    tau_bar = _TAU_BAR_SLOPE * alpha.sqrt()
    x_bar = (1.0 + tau_bar) * (1.0 + alpha / tau_bar)
    index = torch.arange(width, device=device).unsqueeze(0)
    valid = index < torch.tensor(counts, device=device).unsqueeze(1)
    in_tail = valid & (index >= torch.tensor(tail_starts, device=device).unsqueeze(1))

    last = last_indices(counts, device)

    def row_sum(values: torch.Tensor) -> torch.Tensor:
        return padded_row_sums(values, last)

    s = torch.where(valid, singular_values, torch.zeros_like(singular_values))
    energy = row_sum(s * s)
    degenerate = energy <= 0.0  # the zero matrix: rank 0, sigma^2 = 0
    mean_square = torch.where(degenerate, torch.ones_like(energy), energy / (L * M))
    scale = mean_square if rescale else torch.ones_like(mean_square)
    # Squared singular values over M, in the units of the search; exact zeros would make the
    # objective infinite (as in the reference), so they are floored at the smallest normal.
    tiny = torch.finfo(torch.float64).tiny
    s2_over_m = torch.where(valid, (s * s / scale / M).clamp_min(tiny), torch.ones_like(s))
    s2_over_m = torch.where(degenerate, torch.ones_like(s2_over_m), s2_over_m)

    upper = row_sum(torch.where(valid, s2_over_m, torch.zeros_like(s2_over_m))) / L
    first_tail = s2_over_m.gather(1, torch.tensor(tail_starts, device=device).unsqueeze(1))
    tail_mean = row_sum(torch.where(in_tail, s2_over_m, torch.zeros_like(s2_over_m))) / (
        in_tail.sum(1, keepdim=True).clamp_min(1)
    )
    lower = torch.maximum(first_tail / x_bar, tail_mean)
    # The reference (scipy) raises "lower bound exceeds upper bound" here; it only happens for
    # tall matrices (L/M >~ 3) under tall_policy="reference", and counts as rank 0.
    failed = (lower > upper) & ~degenerate
    lower = torch.where(failed, upper, lower)

    weight = valid.to(torch.float64)
    # (L - H) log sigma^2 in the reference objective, with H = min(L, M): nonzero only for a
    # tall matrix under tall_policy="reference" (the residual term is always zero, as H = L).
    log_coefficients = [n_rows - count for n_rows, count in zip(rows, counts, strict=True)]
    log_coefficient = torch.tensor(log_coefficients, dtype=torch.float64, device=device)
    has_log_term = any(c != 0 for c in log_coefficients)
    one_plus_alpha = 1.0 + alpha
    four_alpha = 4.0 * alpha

    def objective(sigma2: torch.Tensor) -> torch.Tensor:
        # The EVB free energy as a function of sigma^2 (``EVBsigma2`` in the reference): with
        # x_h = gamma_h^2 / (M sigma^2), sum_h x_h - log x_h, plus, where x_h > x_bar,
        # log(1 + tau_h) - tau_h + alpha log(1 + tau_h / alpha).
        x = s2_over_m / sigma2.unsqueeze(1)
        noise = x - torch.log(x)
        shifted = x - one_plus_alpha
        tau = 0.5 * (shifted + (shifted * shifted - four_alpha).clamp_min(0.0).sqrt())
        signal = noise + torch.log1p(tau) - tau + alpha * torch.log1p(tau / alpha)
        value = row_sum(torch.where(x > x_bar, signal, noise) * weight).squeeze(1)
        if has_log_term:
            value = value + log_coefficient * torch.log(sigma2)
        return value

    sigma2 = _minimize_bounded(
        objective, lower.squeeze(1), upper.squeeze(1), rtol=rtol, atol=atol
    ).unsqueeze(1)
    sigma2 = sigma2 * scale
    sigma2 = torch.where(degenerate, torch.zeros_like(sigma2), sigma2)
    threshold = (M * sigma2 * x_bar).sqrt()
    keep = valid & (s > threshold)
    rank = keep.sum(1)

    safe_s = torch.where(keep, s, torch.ones_like(s))
    ratio = (L + M) * sigma2 / (safe_s * safe_s)
    discriminant = (1.0 - ratio) ** 2 - 4.0 * L * M * sigma2 * sigma2 / safe_s**4
    shrunk = 0.5 * safe_s * (1.0 - ratio + discriminant.clamp_min(0.0).sqrt())
    shrunk = torch.where(keep, shrunk, torch.zeros_like(shrunk))

    nan = torch.full_like(sigma2, math.nan)
    return _BatchSolution(
        rank=torch.where(failed.squeeze(1), torch.zeros_like(rank), rank),
        sigma2=torch.where(failed, nan, sigma2).squeeze(1),
        threshold=torch.where(failed, nan, threshold).squeeze(1),
        shrunk=torch.where(failed, torch.zeros_like(shrunk), shrunk),
    )


def evbmf_batch(
    matrices: torch.Tensor,
    *,
    tall_policy: str = "transpose",
    rescale: bool = True,
    rtol: float = _DEFAULT_RTOL,
    atol: float = 0.0,
    svd_method: str = "gram",
) -> list[EVBMFResult]:
    """EVBMF of each matrix of a ``(B, L, M)`` stack, computed together.

    The singular values of the whole stack are computed in one batched call and the noise
    variances are searched for all matrices at once; the result equals calling :func:`evbmf` on
    each matrix (up to floating-point rounding).

    Example:

        .. testcode::

            import torch

            from optuna_ext.metrics import evbmf_batch

            g = torch.Generator().manual_seed(0)
            signal = torch.randn(3, 20, 4, generator=g) @ torch.randn(3, 4, 60, generator=g)
            results = evbmf_batch(signal + 0.1 * torch.randn(3, 20, 60, generator=g))
            assert [r.rank for r in results] == [4, 4, 4]

    Args:
        matrices:
            A ``(B, L, M)`` tensor, of any floating dtype and on any device.
        tall_policy:
            See :func:`evbmf`.
        rescale:
            See :func:`evbmf`.
        rtol:
            See :func:`evbmf`.
        atol:
            See :func:`evbmf`.
        svd_method:
            See :func:`evbmf`.

    Returns:
        One :class:`EVBMFResult` per matrix.
    """
    _validate_options(tall_policy, rtol, atol, svd_method)
    if matrices.ndim != 3:
        raise ValueError(
            f"The shape of `matrices` is {tuple(matrices.shape)}, but must be `(B, L, M)`."
        )
    n_matrices, n_rows, n_cols = matrices.shape
    if n_matrices == 0:
        return []
    if not bool(torch.isfinite(matrices).all()):
        raise ValueError(
            "The value of `matrices` holds NaN or infinite entries, but EVBMF needs finite ones."
        )
    solution = _solve_padded(
        _singular_values(matrices, svd_method),
        [(n_rows, n_cols)] * n_matrices,
        tall_policy=tall_policy,
        rescale=rescale,
        rtol=rtol,
        atol=atol,
    )
    ranks = solution.rank.tolist()
    sigma2 = solution.sigma2.tolist()
    thresholds = solution.threshold.tolist()
    return [
        EVBMFResult(
            rank=ranks[i],
            sigma2=sigma2[i],
            threshold=thresholds[i],
            singular_values=solution.shrunk[i, : ranks[i]],
        )
        for i in range(n_matrices)
    ]


def evbmf(
    matrix: torch.Tensor,
    *,
    tall_policy: str = "transpose",
    rescale: bool = True,
    rtol: float = _DEFAULT_RTOL,
    atol: float = 0.0,
    svd_method: str = "gram",
) -> EVBMFResult:
    """Empirical VBMF of a matrix: its rank, noise variance and shrunk singular values.

    For :math:`Y \\in \\mathbb{R}^{L \\times M}` (:math:`L \\le M`) with singular values
    :math:`\\gamma_1 \\ge \\dots \\ge \\gamma_L`, let :math:`\\alpha = L / M`,
    :math:`\\bar\\tau = 2.5129 \\sqrt\\alpha` and :math:`\\bar x = (1 + \\bar\\tau)(1 + \\alpha /
    \\bar\\tau)`. The noise variance :math:`\\hat\\sigma^2` minimizes the EVB free energy
    (Nakajima et al. 2013) between the reference's bounds

    .. math::

        \\max\\Bigl(\\frac{\\gamma_k^2}{M \\bar x}, \\frac{1}{M}\\,\\mathrm{mean}_{h \\ge k}
        \\gamma_h^2\\Bigr) \\le \\sigma^2 \\le \\frac{\\|Y\\|_F^2}{LM},
        \\qquad k = \\Bigl\\lceil \\frac{L}{1 + \\alpha} \\Bigr\\rceil.

    The rank counts the singular values above the threshold :math:`\\sqrt{M \\hat\\sigma^2
    \\bar x}`, and each kept one is shrunk to

    .. math::

        \\hat\\gamma_h = \\frac{\\gamma_h}{2} \\Bigl(1
        - \\frac{(L + M) \\hat\\sigma^2}{\\gamma_h^2}
        + \\sqrt{\\Bigl(1 - \\frac{(L + M) \\hat\\sigma^2}{\\gamma_h^2}\\Bigr)^2
        - \\frac{4 L M \\hat\\sigma^4}{\\gamma_h^4}}\\Bigr).

    The search for :math:`\\hat\\sigma^2` is scipy's bounded Brent method, vectorized in torch,
    with a relative stopping tolerance (the reference's absolute ``xatol=1e-5`` is a known bug:
    it decides the rank of small-scale weights by the tolerance rather than by the data).

    Example:

        .. testcode::

            import torch

            from optuna_ext.metrics import evbmf

            g = torch.Generator().manual_seed(0)
            signal = torch.randn(30, 3, generator=g) @ torch.randn(3, 90, generator=g)
            result = evbmf(signal + 0.1 * torch.randn(30, 90, generator=g))
            assert result.rank == 3
            assert abs(result.sigma2 / 0.01 - 1.0) < 0.2

    Args:
        matrix:
            A 2-D tensor, of any floating dtype and on any device. The computation runs in
            float64 on that device.
        tall_policy:
            What to do with a tall matrix (more rows than columns), for which the reference's
            bounds are not meant (its ``EVBMF`` documents ``L <= M``). ``"transpose"`` (the
            default) runs EVBMF on the transpose, which has the same singular values.
            ``"reference"`` runs the reference's formulas on the tall matrix as they are; when
            their search interval is empty (``L / M`` above about 3), the reference's scipy call
            raises and autoHyper/AdaS count the unfolding as rank 0, which this reproduces
            (rank 0, ``sigma2`` and ``threshold`` ``nan``).
        rescale:
            Divide the singular values by the RMS of the entries before the search (and
            multiply :math:`\\hat\\sigma^2` back afterwards). EVBMF is scale-equivariant, and
            with the default relative tolerance the search is too, so this only guards the
            floating-point range; it matters when an absolute ``atol`` is given, which then
            applies relative to the RMS (``True``) or in the units of ``matrix`` (``False``, as
            in the reference).
        rtol:
            Relative tolerance on :math:`\\hat\\sigma^2`. The default,
            :math:`\\sqrt{2.2 \\times 10^{-16}}`, is scipy's own relative part.
        atol:
            Absolute tolerance on :math:`\\hat\\sigma^2`, in the units of the search (see
            ``rescale``). ``atol=1e-5, rescale=False`` reproduces the reference's search.
        svd_method:
            How the singular values are computed: ``"gram"`` (the default) takes the square
            roots of the eigenvalues of the smaller Gram matrix, in float64 (several times
            faster than an SVD on CPU); ``"svdvals"`` uses :func:`torch.linalg.svdvals`.

    Returns:
        The :class:`EVBMFResult`.
    """
    if matrix.ndim != 2:
        raise ValueError(
            f"The shape of `matrix` is {tuple(matrix.shape)}, but must be 2-D `(L, M)`."
        )
    return evbmf_batch(
        matrix.unsqueeze(0),
        tall_policy=tall_policy,
        rescale=rescale,
        rtol=rtol,
        atol=atol,
        svd_method=svd_method,
    )[0]


def evbmf_rank(
    matrix: torch.Tensor,
    *,
    tall_policy: str = "transpose",
    rescale: bool = True,
) -> int:
    """The EVBMF rank of a matrix: the number of singular values above the EVB threshold.

    Example:

        .. testcode::

            import torch

            from optuna_ext.metrics import evbmf_rank

            g = torch.Generator().manual_seed(0)
            assert evbmf_rank(torch.randn(64, 576, generator=g)) == 0

    Args:
        matrix:
            A 2-D tensor.
        tall_policy:
            See :func:`evbmf`.
        rescale:
            See :func:`evbmf`.

    Returns:
        The rank, an integer in ``[0, min(L, M)]``.
    """
    return evbmf(matrix, tall_policy=tall_policy, rescale=rescale).rank
