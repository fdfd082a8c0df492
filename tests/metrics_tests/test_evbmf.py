from __future__ import annotations

import math
from typing import Any

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import numpy as np
import pytest
import torch

from optuna_ext.metrics import evbmf
from optuna_ext.metrics import evbmf_batch
from optuna_ext.metrics import evbmf_rank
from tests.metrics_tests._scipy_evbmf import scipy_evbmf


def _low_rank_plus_noise(
    n_rows: int,
    n_cols: int,
    rank: int,
    sigma: float,
    seed: int,
    strength: tuple[float, float] = (3.0, 6.0),
) -> torch.Tensor:
    """Orthonormal rank-``rank`` signal plus i.i.d. N(0, sigma^2) noise.

    The signal's singular values are ``strength`` times the largest singular value of the noise
    (about ``sigma * (sqrt(L) + sqrt(M))``), so they stand well clear of the EVB threshold.
    """
    g = torch.Generator().manual_seed(seed)
    noise = sigma * torch.randn(n_rows, n_cols, generator=g, dtype=torch.float64)
    if rank == 0:
        return noise
    u = torch.linalg.qr(torch.randn(n_rows, rank, generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(n_cols, rank, generator=g, dtype=torch.float64))[0]
    edge = sigma * (math.sqrt(n_rows) + math.sqrt(n_cols))
    values = edge * torch.linspace(strength[0], strength[1], rank, dtype=torch.float64)
    return u @ torch.diag(values) @ v.T + noise


@pytest.mark.parametrize(
    "n_rows,n_cols,rank", [(60, 240, 5), (64, 576, 8), (100, 100, 10), (240, 60, 5)]
)
@pytest.mark.parametrize("seed", [0, 1])
def test_low_rank_plus_noise_recovers_rank_and_noise_variance(
    n_rows: int, n_cols: int, rank: int, seed: int
) -> None:
    sigma = 0.05
    result = evbmf(_low_rank_plus_noise(n_rows, n_cols, rank, sigma, seed))
    assert result.rank == rank
    # The noise variance is estimated from about (L - r)(M - r) residual entries, so its
    # relative standard error is about sqrt(2 / ((L - r)(M - r))): allow five of them.
    tolerance = 5.0 * math.sqrt(2.0 / ((n_rows - rank) * (n_cols - rank)))
    assert abs(result.sigma2 / sigma**2 - 1.0) < tolerance
    assert result.threshold == pytest.approx(
        math.sqrt(result.sigma2 * max(n_rows, n_cols) * _x_bar(n_rows, n_cols))
    )
    assert result.singular_values.shape == (rank,)


def _x_bar(n_rows: int, n_cols: int) -> float:
    alpha = min(n_rows, n_cols) / max(n_rows, n_cols)
    tau_bar = 2.5129 * math.sqrt(alpha)
    return (1 + tau_bar) * (1 + alpha / tau_bar)


def test_shrunk_singular_values_are_below_observed_and_ordered() -> None:
    y = _low_rank_plus_noise(50, 150, 6, 0.1, seed=3)
    result = evbmf(y)
    observed = torch.linalg.svdvals(y)[: result.rank]
    shrunk = result.singular_values
    assert torch.all(shrunk > 0)
    assert torch.all(shrunk < observed)
    assert torch.all(shrunk[:-1] >= shrunk[1:])
    # Strong components lose about (L + M) sigma^2 / gamma (Nakajima et al. 2012, eq. 15).
    assert torch.allclose(observed - shrunk, (50 + 150) * 0.01 / observed, rtol=0.3)


@pytest.mark.parametrize("shape", [(64, 576), (576, 64), (32, 32), (1, 144), (9, 16), (16, 9)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pure_noise_has_rank_zero(shape: tuple[int, int], seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    assert evbmf_rank(0.02 * torch.randn(*shape, generator=g)) == 0


def test_zero_matrix() -> None:
    result = evbmf(torch.zeros(8, 20))
    assert result.rank == 0
    assert result.sigma2 == 0.0
    assert result.singular_values.numel() == 0


@pytest.mark.parametrize("scale", [1e-8, 1e-3, 7.0, 1e6])
def test_scale_equivariance(scale: float) -> None:
    y = _low_rank_plus_noise(40, 160, 4, 1.0, seed=5, strength=(0.9, 3.0))
    base = evbmf(y)
    scaled = evbmf(scale * y)
    assert scaled.rank == base.rank
    assert scaled.sigma2 == pytest.approx(base.sigma2 * scale**2, rel=1e-6)
    assert scaled.threshold == pytest.approx(base.threshold * scale, rel=1e-6)
    torch.testing.assert_close(
        scaled.singular_values, base.singular_values * scale, rtol=1e-6, atol=0.0
    )


@pytest.mark.parametrize("n_rows,n_cols", [(200, 50), (128, 64), (64, 27)])
def test_transpose_policy_treats_tall_as_its_transpose(n_rows: int, n_cols: int) -> None:
    y = _low_rank_plus_noise(n_rows, n_cols, 4, 0.1, seed=7)
    tall = evbmf(y, tall_policy="transpose")
    wide = evbmf(y.T, tall_policy="transpose")
    assert tall.rank == wide.rank == 4
    assert tall.sigma2 == pytest.approx(wide.sigma2, rel=1e-12)
    torch.testing.assert_close(tall.singular_values, wide.singular_values)


def test_reference_policy_fails_to_zero_on_tall_matrices() -> None:
    # Mode 4 of a 1x1 convolution with four times more output than input channels: the
    # reference's bounds are reversed, and the rank is 0 even when a low-rank signal is there
    # that EVBMF of the transpose detects.
    y = _low_rank_plus_noise(256, 64, 4, 0.1, seed=11, strength=(1.0, 2.0))
    with pytest.raises(ValueError, match="lower bound exceeds"):
        scipy_evbmf(y.numpy())
    result = evbmf(y, tall_policy="reference")
    assert result.rank == 0
    assert math.isnan(result.sigma2)
    assert math.isnan(result.threshold)
    assert evbmf(y).rank == 4
    g = torch.Generator().manual_seed(0)
    for n_rows in (192, 256, 512):  # L / M = 3, 4 and 8, pure noise
        noise = torch.randn(n_rows, 64, generator=g, dtype=torch.float64)
        with pytest.raises(ValueError, match="lower bound exceeds"):
            scipy_evbmf(noise.numpy())
        assert math.isnan(evbmf(noise, tall_policy="reference").sigma2)


@pytest.mark.parametrize("n_rows,n_cols", [(60, 200), (50, 50), (128, 64), (64, 27)])
def test_reference_policy_equals_transpose_on_wide_and_runs_on_mild_tall(
    n_rows: int, n_cols: int
) -> None:
    y = _low_rank_plus_noise(n_rows, n_cols, 3, 0.1, seed=13)
    reference = evbmf(y, tall_policy="reference")
    assert reference.rank == 3
    if n_rows <= n_cols:
        transpose = evbmf(y, tall_policy="transpose")
        assert (reference.rank, reference.sigma2, reference.threshold) == (
            transpose.rank,
            transpose.sigma2,
            transpose.threshold,
        )
        torch.testing.assert_close(reference.singular_values, transpose.singular_values)


def _random_test_matrices(count: int, seed: int, scale: float = 1.0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    matrices = []
    for _ in range(count):
        n_rows = int(rng.integers(2, 80))
        n_cols = int(rng.integers(2, 160))
        y = rng.standard_normal((n_rows, n_cols))
        rank = int(rng.integers(0, min(n_rows, n_cols) + 1))
        if rank:
            signal = rng.standard_normal((n_rows, rank)) @ rng.standard_normal((rank, n_cols))
            signal *= 10 ** rng.uniform(-1, 1.5) * math.sqrt(n_rows * n_cols)
            y += signal / np.linalg.norm(signal)
        matrices.append(scale * y)
    return matrices


def test_reproduces_the_reference_search() -> None:
    # With the reference's options (absolute tolerance 1e-5, no rescaling, no transposition)
    # the vectorized Brent search lands where scipy's does, including scipy's failures.
    for y in _random_test_matrices(60, seed=0):
        try:
            rank, sigma2, shrunk = scipy_evbmf(y)
        except ValueError:
            rank, sigma2, shrunk = 0, math.nan, np.zeros(0)
        result = evbmf(torch.from_numpy(y), tall_policy="reference", rescale=False, atol=1e-5)
        assert result.rank == rank
        if math.isnan(sigma2):
            assert math.isnan(result.sigma2)
        else:
            assert result.sigma2 == pytest.approx(sigma2, rel=1e-6)
            np.testing.assert_allclose(result.singular_values.numpy(), shrunk, rtol=1e-6)


def test_default_matches_scipy_with_rescaling_and_tight_tolerance() -> None:
    for y in _random_test_matrices(60, seed=1, scale=1e-3):
        wide = y if y.shape[0] <= y.shape[1] else y.T
        rank, sigma2, _ = scipy_evbmf(wide, xatol=0.0, rescale=True)
        result = evbmf(torch.from_numpy(y))
        assert result.rank == rank
        assert result.sigma2 == pytest.approx(sigma2, rel=1e-5)


def test_absolute_tolerance_bug_of_the_reference() -> None:
    # Entries of standard deviation 1e-3 have sigma^2 = 1e-6, below the reference's absolute
    # tolerance of 1e-5 on sigma^2: its search stops at the first probe and pure noise gets a
    # nonzero rank. The relative tolerance (default) does not have this problem.
    g = torch.Generator().manual_seed(0)
    y = 1e-3 * torch.randn(64, 576, generator=g, dtype=torch.float64)
    assert evbmf(y).rank == 0
    assert evbmf(y, rescale=False, atol=1e-5).rank > 0
    assert scipy_evbmf(y.numpy())[0] > 0
    # Rescaling makes the absolute tolerance relative to the RMS, which is harmless.
    assert evbmf(y, rescale=True, atol=1e-5).rank == 0


def test_batched_equals_unbatched() -> None:
    g = torch.Generator().manual_seed(0)
    stack = torch.stack(
        [_low_rank_plus_noise(30, 90, r, 0.1, seed=r) for r in range(6)]
        + [0.1 * torch.randn(30, 90, generator=g, dtype=torch.float64)]
    )
    batched = evbmf_batch(stack)
    assert [r.rank for r in batched] == [0, 1, 2, 3, 4, 5, 0]
    for matrix, result in zip(stack, batched, strict=True):
        single = evbmf(matrix)
        assert single.rank == result.rank
        assert single.sigma2 == pytest.approx(result.sigma2, rel=1e-10)
        torch.testing.assert_close(single.singular_values, result.singular_values)


def test_empty_batch() -> None:
    assert evbmf_batch(torch.zeros(0, 3, 4)) == []


def test_float32_input() -> None:
    y = _low_rank_plus_noise(48, 144, 5, 0.1, seed=17)
    result32 = evbmf(y.float())
    result64 = evbmf(y)
    assert result32.rank == result64.rank == 5
    assert result32.sigma2 == pytest.approx(result64.sigma2, rel=1e-5)
    assert result32.singular_values.dtype == torch.float64


@pytest.mark.parametrize("n_rows,n_cols", [(64, 576), (576, 64), (300, 700)])
def test_svd_methods_agree(n_rows: int, n_cols: int) -> None:
    # (300, 700) goes through the panelled lower-triangle Gram product.
    y = _low_rank_plus_noise(n_rows, n_cols, 8, 0.05, seed=19)
    gram = evbmf(y, svd_method="gram")
    svdvals = evbmf(y, svd_method="svdvals")
    assert gram.rank == svdvals.rank == 8
    # Equal up to the search's relative tolerance (1.5e-8) on sigma^2.
    assert gram.sigma2 == pytest.approx(svdvals.sigma2, rel=1e-6)
    torch.testing.assert_close(gram.singular_values, svdvals.singular_values)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_the_device_of_the_input() -> None:
    y = _low_rank_plus_noise(64, 576, 8, 0.05, seed=23)
    on_gpu = evbmf(y.cuda())
    assert on_gpu.singular_values.device.type == "cuda"
    assert on_gpu.rank == evbmf(y).rank
    assert on_gpu.sigma2 == pytest.approx(evbmf(y).sigma2, rel=1e-8)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"tall_policy": "wide"}, "'wide'"),
        ({"rtol": -1.0}, "-1.0"),
        ({"rtol": 0.0, "atol": 0.0}, "rtol"),
        ({"svd_method": "qr"}, "'qr'"),
        ({"rtol": math.inf}, "are inf and 0.0, but must be finite"),
        ({"atol": math.nan}, "and nan, but must be finite"),
    ],
)
def test_invalid_options(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        evbmf(torch.ones(3, 4), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_entries_are_refused(bad: float) -> None:
    # Without the check, torch's eigh fails with an "ill-conditioned" LinAlgError.
    matrix = torch.randn(5, 7, dtype=torch.float64)
    matrix[2, 3] = bad
    with pytest.raises(ValueError, match="NaN or infinite entries"):
        evbmf(matrix)
    with pytest.raises(ValueError, match="NaN or infinite entries"):
        evbmf_batch(torch.stack([torch.ones(5, 7, dtype=torch.float64), matrix]))


def test_invalid_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3, 4\)"):
        evbmf(torch.ones(2, 3, 4))
    with pytest.raises(ValueError, match=r"\(3, 4\)"):
        evbmf_batch(torch.ones(3, 4))


@settings(max_examples=60, deadline=None)
@given(
    n_rows=st.integers(1, 24),
    n_cols=st.integers(1, 24),
    data=st.data(),
    tall_policy=st.sampled_from(["transpose", "reference"]),
)
def test_rank_is_within_bounds(
    n_rows: int, n_cols: int, data: st.DataObject, tall_policy: str
) -> None:
    elements = st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=False)
    values = data.draw(st.lists(elements, min_size=n_rows * n_cols, max_size=n_rows * n_cols))
    y = torch.tensor(values, dtype=torch.float64).reshape(n_rows, n_cols)
    result = evbmf(y, tall_policy=tall_policy)
    assert 0 <= result.rank <= min(n_rows, n_cols)
    assert result.singular_values.shape == (result.rank,)
    assert bool(torch.all(result.singular_values > 0))


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n_rows=st.integers(2, 40),
    n_cols=st.integers(2, 40),
    rank=st.integers(0, 6),
    exponent=st.integers(-30, 30),
)
def test_scale_equivariance_on_random_matrices(
    seed: int, n_rows: int, n_cols: int, rank: int, exponent: int
) -> None:
    rank = min(rank, n_rows, n_cols)
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(n_rows, n_cols, generator=g, dtype=torch.float64)
    if rank:
        factor = torch.randn(n_rows, rank, generator=g, dtype=torch.float64)
        y += 3.0 * factor @ torch.randn(rank, n_cols, generator=g, dtype=torch.float64)
    scale = 2.0**exponent
    base = evbmf(y)
    scaled = evbmf(scale * y)
    assert scaled.rank == base.rank
    assert scaled.sigma2 == pytest.approx(base.sigma2 * scale**2, rel=1e-6)


@pytest.mark.parametrize("seed", range(12))
def test_a_matrix_solved_with_wider_ones_gets_the_same_answer(seed: int) -> None:
    # Matrices of different shapes are solved in one batch, their singular values padded to
    # the widest; a matrix's noise variance and rank must not depend on that padding, i.e. on
    # the other matrices (a plain sum over the padded width changed the last bits, the
    # search's path and, near the threshold, the rank).
    from optuna_ext.metrics._evbmf import _DEFAULT_RTOL
    from optuna_ext.metrics._evbmf import _solve_padded

    g = torch.Generator().manual_seed(seed)
    n_rows, n_cols = 12 + seed % 7, 40 + seed
    signal = torch.randn(n_rows, 3, generator=g, dtype=torch.float64) @ torch.randn(
        3, n_cols, generator=g, dtype=torch.float64
    )
    values = torch.linalg.svdvals(
        0.3 * signal + torch.randn(n_rows, n_cols, generator=g, dtype=torch.float64)
    )

    def solve(values: torch.Tensor, shapes: list[tuple[int, int]]) -> Any:
        return _solve_padded(
            values, shapes, tall_policy="transpose", rescale=True, rtol=_DEFAULT_RTOL, atol=0.0
        )

    alone = solve(values.unsqueeze(0), [(n_rows, n_cols)])
    width = 64 + 5 * seed
    padded = torch.zeros(2, width, dtype=torch.float64)
    padded[0, :n_rows] = values
    padded[1] = torch.linalg.svdvals(
        torch.randn(width, 2 * width, generator=g, dtype=torch.float64)
    )
    together = solve(padded, [(n_rows, n_cols), (width, 2 * width)])
    assert together.sigma2[0].item() == alone.sigma2[0].item()
    assert together.rank[0].item() == alone.rank[0].item()
    assert torch.equal(together.shrunk[0, :n_rows], alone.shrunk[0])
