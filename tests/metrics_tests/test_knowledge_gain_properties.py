"""Property-based tests of EVBMF and the knowledge gain on random matrices (hypothesis).

``test_evbmf.py`` holds the rank bounds and the scale equivariance of :func:`evbmf`; these add
the transpose policy, the batched call, and the knowledge gain of random convolution weights
(with planted low-rank structure): gains in [0, 1], ranks equal to EVBMF of the unfoldings,
``Z`` the exact fraction of zero ranks, and all of it invariant to the weights' scale.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import pytest
import torch
from torch import nn

from optuna_ext.metrics import evbmf
from optuna_ext.metrics import evbmf_batch
from optuna_ext.metrics import evbmf_rank
from optuna_ext.metrics import knowledge_gain_rank
from optuna_ext.metrics import unfold


def _random_matrix(
    seed: int, n_rows: int, n_cols: int, rank: int, strength: float
) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(n_rows, n_cols, generator=g, dtype=torch.float64)
    rank = min(rank, n_rows, n_cols)
    if rank:
        u = torch.randn(n_rows, rank, generator=g, dtype=torch.float64)
        v = torch.randn(rank, n_cols, generator=g, dtype=torch.float64)
        y += strength * u @ v
    return y


_matrices = st.builds(
    _random_matrix,
    seed=st.integers(0, 2**31 - 1),
    n_rows=st.integers(1, 30),
    n_cols=st.integers(1, 30),
    rank=st.integers(0, 5),
    strength=st.sampled_from([0.0, 0.3, 1.0, 3.0]),
)


@settings(max_examples=60, deadline=None)
@given(y=_matrices)
def test_transpose_policy_is_orientation_free(y: torch.Tensor) -> None:
    """With ``tall_policy="transpose"`` a matrix and its transpose get the same result; on a
    wide (or square) matrix the policy changes nothing."""
    a, b = evbmf(y), evbmf(y.T)
    assert a.rank == b.rank
    assert 0 <= a.rank <= min(y.shape)
    # Equal up to the search's relative tolerance on sigma2 (about 1.5e-8).
    torch.testing.assert_close(a.singular_values, b.singular_values, rtol=1e-6, atol=0.0)
    assert a.sigma2 == pytest.approx(b.sigma2, rel=1e-6, nan_ok=True)
    wide = y if y.shape[0] <= y.shape[1] else y.T
    reference = evbmf(wide, tall_policy="reference")
    assert reference.rank == evbmf(wide).rank
    assert reference.sigma2 == pytest.approx(evbmf(wide).sigma2, rel=1e-12, nan_ok=True)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(1, 5),
    shape=st.tuples(st.integers(1, 16), st.integers(1, 16)),
    rank=st.integers(0, 4),
)
def test_batched_call_equals_one_call_per_matrix(
    seed: int, batch: int, shape: tuple[int, int], rank: int
) -> None:
    stack = torch.stack([_random_matrix(seed + i, *shape, rank, 2.0) for i in range(batch)])
    for result, y in zip(evbmf_batch(stack), stack, strict=True):
        single = evbmf(y)
        assert result.rank == single.rank == evbmf_rank(y)
        torch.testing.assert_close(result.singular_values, single.singular_values)


def _conv(seed: int, c_out: int, c_in: int, k: int, rank: int, strength: float) -> nn.Conv2d:
    g = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(c_in, c_out, k, bias=False)
    with torch.no_grad():
        w = 0.1 * torch.randn(c_out, c_in, k, k, generator=g)
        if rank:
            u = torch.randn(c_out, rank, generator=g)
            v = torch.randn(rank, c_in * k * k, generator=g)
            w += strength * 0.1 * (u @ v).reshape(c_out, c_in, k, k)
        conv.weight.copy_(w)
    return conv


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    layers=st.lists(
        st.tuples(
            st.integers(1, 12), st.integers(1, 12), st.sampled_from([1, 3]), st.integers(0, 4)
        ),
        min_size=1,
        max_size=3,
    ),
    strength=st.sampled_from([0.0, 1.0, 4.0]),
    scale=st.sampled_from([1e-3, 0.5, 8.0]),
    p=st.sampled_from([1, 2]),
)
def test_knowledge_gain_of_random_conv_weights(
    seed: int,
    layers: list[tuple[int, int, int, int]],
    strength: float,
    scale: float,
    p: int,
) -> None:
    convs = [_conv(seed + i, *layer, strength) for i, layer in enumerate(layers)]
    model = nn.Sequential(*convs)
    snapshot = knowledge_gain_rank(model, p=p)
    ranks: list[int] = []
    for layer, module in zip(snapshot.layers, convs, strict=True):
        w = module.weight.detach()
        for mode, gain, rank in ((3, layer.gain3, layer.rank3), (4, layer.gain4, layer.rank4)):
            matrix = unfold(w, mode)
            assert rank == evbmf_rank(matrix)
            assert 0 <= rank <= min(matrix.shape)
            assert 0.0 <= gain <= 1.0 + 1e-12
            assert (gain == 0.0) == (rank == 0)
            ranks.append(rank)
    assert snapshot.z == sum(r == 0 for r in ranks) / len(ranks)
    with torch.no_grad():
        for module in convs:
            module.weight.mul_(scale)
    scaled = knowledge_gain_rank(model, p=p)
    assert [(x.rank3, x.rank4) for x in scaled.layers] == [
        (x.rank3, x.rank4) for x in snapshot.layers
    ]
    assert [x.gain3 for x in scaled.layers] == pytest.approx(
        [x.gain3 for x in snapshot.layers], rel=1e-4, abs=1e-6
    )
    assert scaled.z == snapshot.z
