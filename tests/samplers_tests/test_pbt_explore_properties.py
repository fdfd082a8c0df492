"""Property-based tests of PBT's exploit and explore steps (hypothesis), on random
distributions of every kind.

``test_pbt.py`` checks fixed distributions and random float ranges; these draw the integer
and categorical distributions too (steps, log scales, mixed-type choices) and check what each
reported operation did: explored values stay in their distribution, integers stay ``int``,
categoricals stay one of the choices (of the same type), a shift moves one choice, a product
is the clipped product, and the quantiles are disjoint with every upper member scoring at
least every lower one.
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import numpy as np
from optuna.distributions import CategoricalDistribution
from optuna.distributions import FloatDistribution
from optuna.distributions import IntDistribution
import pytest

from optuna_ext.samplers._pbt import _explore
from optuna_ext.samplers._pbt.sampler import _spec


@st.composite
def int_distributions(draw: st.DrawFn) -> IntDistribution:
    if draw(st.booleans()):
        low = draw(st.integers(1, 1000))
        return IntDistribution(low, low + draw(st.integers(0, 5000)), log=True)
    low = draw(st.integers(-1000, 1000))
    step = draw(st.integers(1, 7))
    return IntDistribution(low, low + step * draw(st.integers(0, 60)), step=step)


_choice = st.one_of(
    st.integers(-5, 5), st.floats(-2, 2), st.text(max_size=3), st.booleans(), st.none()
)


@st.composite
def categorical_distributions(draw: st.DrawFn) -> CategoricalDistribution:
    choices = draw(st.lists(_choice, min_size=1, max_size=6))
    unique: list[Any] = []
    for c in choices:  # Optuna needs distinct choices; 1 and True are distinct here
        if not any(type(c) is type(u) and c == u for u in unique):
            unique.append(c)
    return CategoricalDistribution(unique)


_factors = st.lists(st.floats(0.05, 20.0), min_size=1, max_size=3).map(tuple)


@settings(max_examples=150, deadline=None)
@given(
    distribution=int_distributions(),
    resample_probability=st.floats(0.0, 1.0),
    factors=_factors,
    seed=st.integers(0, 2**31 - 1),
)
def test_explored_ints_stay_ints_on_the_grid(
    distribution: IntDistribution,
    resample_probability: float,
    factors: tuple[float, ...],
    seed: int,
) -> None:
    spec = _spec(distribution)
    assert spec is not None
    rng = np.random.RandomState(seed)
    value = _explore.sample(spec, rng)
    for _ in range(25):
        new, op = _explore.explore(
            value,
            spec,
            rng,
            resample_probability=resample_probability,
            perturbation_factors=factors,
        )
        assert type(new) is int, (new, op)
        assert distribution._contains(distribution.to_internal_repr(new)), (new, op)
        if op.startswith("multiplied by") and not op.endswith(_explore.CLIPPED_SUFFIX):
            shown = float(op.split()[2])  # formatted with :g
            factor = min(factors, key=lambda f: abs(f - shown))
            raw = value * factor
            # The nearest grid point, or one step in the factor's direction when the product
            # rounds back to the old value.
            nearest = abs(new - raw) <= distribution.step / 2 + 1e-9
            moved = new - value == distribution.step * (1 if raw > value else -1)
            assert nearest or moved, (value, factor, new)
        value = new


@settings(max_examples=150, deadline=None)
@given(
    distribution=categorical_distributions(),
    resample_probability=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_explored_categoricals_stay_in_the_choices(
    distribution: CategoricalDistribution, resample_probability: float, seed: int
) -> None:
    spec = _spec(distribution)
    assert isinstance(spec, _explore.CategoricalSpec)
    choices = list(distribution.choices)

    def index(v: Any) -> int:
        return next(i for i, c in enumerate(choices) if type(c) is type(v) and c == v)

    rng = np.random.RandomState(seed)
    value = _explore.sample(spec, rng)
    for _ in range(25):
        new, op = _explore.explore(value, spec, rng, resample_probability=resample_probability)
        assert _explore.contains(new, spec), (new, op)
        if op.startswith("shifted"):
            assert index(new) - index(value) == int(op.split()[1])
            assert abs(index(new) - index(value)) == 1
        elif op == _explore.KEPT:
            assert len(choices) == 1 and new is choices[0]
        else:
            assert op == _explore.RESAMPLED
        value = new


@settings(max_examples=150, deadline=None)
@given(
    low=st.floats(1e-6, 100.0),
    ratio=st.floats(1.001, 1e6),  # a one-point range maps to u = 0.5
    log=st.booleans(),
    factor=st.floats(0.05, 20.0),
    u=st.floats(0.0, 1.0),
)
def test_a_float_product_is_the_clipped_product(
    low: float, ratio: float, log: bool, factor: float, u: float
) -> None:
    distribution = FloatDistribution(low, low * ratio, log=log)
    spec = _spec(distribution)
    assert isinstance(spec, _explore.NumericSpec)
    value = _explore.from_unit(u, spec)
    new, op = _explore.explore(
        value,
        spec,
        np.random.RandomState(0),
        resample_probability=0.0,
        perturbation_factors=(factor,),
    )
    assert type(new) is float
    assert new == pytest.approx(min(max(value * factor, spec.low), spec.high), rel=1e-12)
    assert op.endswith(_explore.CLIPPED_SUFFIX) == (not spec.low <= value * factor <= spec.high)
    # to_unit inverts from_unit inside the range.
    assert _explore.to_unit(value, spec) == pytest.approx(u, abs=1e-9)


@settings(max_examples=150, deadline=None)
@given(
    scores=st.lists(st.one_of(st.floats(-1e6, 1e6), st.just(math.nan)), min_size=0, max_size=20),
    fraction=st.floats(0.0, 0.5),
)
def test_quantiles_are_disjoint_and_ordered(scores: list[float], fraction: float) -> None:
    lower, upper = _explore.quantiles(scores, fraction)
    q_n = _explore.quantile_count(len(scores), fraction)
    assert len(lower) == len(upper) == q_n <= len(scores) // 2
    assert not set(lower) & set(upper)

    def rank(i: int) -> float:
        return -math.inf if math.isnan(scores[i]) else scores[i]  # NaN ranks lowest

    if lower:
        assert max(rank(i) for i in lower) <= min(rank(i) for i in upper)
