from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st
import numpy as np
import pytest

from optuna_ext.hyperdyn import check_accuracy_trend
from optuna_ext.hyperdyn import keep_probability
from optuna_ext.hyperdyn._trend import trend_delta


def _formula(history: list[float], window: int, temperature: float, offset: float) -> float:
    """Algorithm 5 written out: P(keep) = min(1, exp((y_tau - y_{tau-window}) / T - b))."""
    reference = history[max(0, len(history) - 1 - window)]
    return min(1.0, math.exp((history[-1] - reference) / temperature - offset))


@pytest.mark.parametrize("window", [1, 2, 4])
def test_rising_metric_keeps_with_probability_one(window: int) -> None:
    history = [60.0, 70.0, 75.0, 78.0, 80.0, 81.0]  # percentage points, rising
    assert keep_probability(history, window=window) == 1.0
    for u in np.linspace(0.0, 1.0, 101, endpoint=False):
        assert check_accuracy_trend(history, window=window, u=float(u))


@pytest.mark.parametrize(
    "history, window, temperature, offset",
    [
        ([80.0, 80.0, 80.0, 80.0, 80.0], 4, 1.0, 0.01),  # flat: exp(-0.01)
        ([80.0, 80.5, 80.2, 79.8, 79.5], 4, 1.0, 0.01),  # -0.5 pp over the window
        ([80.0, 81.0, 80.0, 79.0, 78.0], 4, 1.0, 0.01),  # -2 pp
        ([80.0, 81.0, 80.0, 79.0, 78.0], 4, 2.0, 0.01),  # -2 pp at temperature 2
        ([90.0, 85.0, 84.0], 1, 1.0, 0.3),  # window 1: -1 pp, offset 0.3
    ],
)
def test_switching_frequency_matches_the_formula(
    history: list[float], window: int, temperature: float, offset: float
) -> None:
    p = _formula(history, window, temperature, offset)
    assert p < 1.0
    assert keep_probability(
        history, window=window, temperature=temperature, offset=offset
    ) == pytest.approx(p, rel=1e-12)
    rng = np.random.default_rng(0)
    n = 20_000
    keeps = sum(
        check_accuracy_trend(
            history, window=window, temperature=temperature, offset=offset, u=float(u)
        )
        for u in rng.random(n)
    )
    # Binomial(n, p): within 4 standard deviations.
    assert abs(keeps / n - p) < 4.0 * math.sqrt(p * (1 - p) / n)


def test_decision_is_the_comparison_with_u() -> None:
    history = [70.0, 71.0, 70.5, 70.2, 69.9]
    p = _formula(history, 4, 1.0, 0.01)
    for u in np.linspace(0.0, 1.0, 57):
        assert check_accuracy_trend(history, u=float(u)) == (p > u)


def test_metric_scale_turns_fractions_into_percentage_points() -> None:
    fractions = [0.800, 0.805, 0.802, 0.798, 0.795]
    percent = [100 * v for v in fractions]
    assert keep_probability(fractions, metric_scale=100.0) == pytest.approx(
        keep_probability(percent)
    )
    # Without the scale, a 0.5-point drop in fractions looks like a 0.005 drop: almost surely
    # kept, which is why the scale must be explicit.
    assert keep_probability(fractions) > 0.98
    assert keep_probability(fractions, metric_scale=100.0) < 0.61


def test_infinite_offset_always_switches() -> None:
    rising = [10.0, 50.0, 90.0]
    assert keep_probability(rising, offset=math.inf) == 0.0
    assert not check_accuracy_trend(rising, offset=math.inf, u=0.0)


def test_short_history_compares_with_the_oldest_entry() -> None:
    assert keep_probability([80.0, 79.0], window=4) == pytest.approx(math.exp(-1.01))
    assert keep_probability([80.0], window=4) == pytest.approx(math.exp(-0.01))


@given(
    history=st.lists(st.floats(0.0, 100.0), min_size=1, max_size=10),
    window=st.integers(1, 6),
    u=st.floats(0.0, 1.0, exclude_max=True),
)
def test_keep_iff_probability_exceeds_u(history: list[float], window: int, u: float) -> None:
    p = keep_probability(history, window=window)
    keep = check_accuracy_trend(history, window=window, u=u)
    if p == 1.0:
        assert keep
    else:
        assert keep == (p > u)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"window": 0}, "window"),
        ({"window": -1}, "window"),
        ({"window": 1.5}, "window"),
        ({"window": True}, "window"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"offset": -0.1}, "offset"),
        ({"offset": math.nan}, "offset"),
        ({"metric_scale": 0.0}, "metric_scale"),
        ({"u": 1.5}, "`u`"),
        ({"u": -0.1}, "`u`"),
    ],
)
def test_bad_arguments_raise(kwargs: dict[str, float], match: str) -> None:
    arguments: dict[str, float] = {"u": 0.5}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=match):
        check_accuracy_trend([1.0, 2.0], **arguments)  # type: ignore[arg-type]


def test_empty_history_raises() -> None:
    with pytest.raises(ValueError, match="empty"):
        check_accuracy_trend([], u=0.5)


@pytest.mark.parametrize(
    "history, name",
    [
        ([0.5, math.nan], "latest"),
        ([math.inf, 0.5], "reference"),
        ([0.1, 0.2, -math.inf], "latest"),
    ],
)
def test_non_finite_history_raises(history: list[float], name: str) -> None:
    # The latest entry and the one `window` epochs back decide the test: neither may be NaN/inf.
    with pytest.raises(ValueError, match=f"The {name} entry of the metric history is"):
        check_accuracy_trend(history, window=1, u=0.5)
    with pytest.raises(ValueError, match=f"The {name} entry of the metric history is"):
        keep_probability(history, window=1)


# -- the "compare" variant (an option, not the paper's test) --------------------------------


def _compare_formula(
    history: list[float], lead: float, window: int, temperature: float, offset: float
) -> float:
    """P(keep) = min(1, exp(min(y_tau - y_{tau-window}, lead) / T - b))."""
    reference = history[max(0, len(history) - 1 - window)]
    rise = min(history[-1] - reference, lead)
    return min(1.0, math.exp(rise / temperature - offset))


@pytest.mark.parametrize(
    "history, lead, temperature, offset",
    [
        ([60.0, 62.0, 64.0, 66.0, 68.0], -1.0, 1.0, 0.01),  # rising, proposal 1 pp better
        ([60.0, 62.0, 64.0, 66.0, 68.0], -0.3, 1.0, 0.01),  # rising, proposal 0.3 pp better
        ([60.0, 62.0, 64.0, 66.0, 68.0], -2.0, 2.0, 0.01),  # at temperature 2
        ([80.0, 80.0, 79.0, 79.0, 78.5], 0.5, 1.0, 0.01),  # falling: the trend decides
        ([80.0, 80.0, 79.0, 79.0, 78.5], -3.0, 1.0, 0.01),  # falling and beaten: the lead does
    ],
)
def test_compare_switching_frequency_matches_the_formula(
    history: list[float], lead: float, temperature: float, offset: float
) -> None:
    p = _compare_formula(history, lead, 4, temperature, offset)
    assert p < 1.0
    assert keep_probability(
        history, temperature=temperature, offset=offset, lead=lead
    ) == pytest.approx(p, rel=1e-12)
    rng = np.random.default_rng(1)
    n = 20_000
    keeps = sum(
        check_accuracy_trend(history, temperature=temperature, offset=offset, lead=lead, u=u)
        for u in rng.random(n).tolist()
    )
    assert abs(keeps / n - p) < 4.0 * math.sqrt(p * (1 - p) / n)


def test_compare_keeps_a_rising_incumbent_that_also_beats_the_proposal() -> None:
    rising = [60.0, 62.0, 64.0, 66.0, 68.0]
    assert keep_probability(rising, lead=0.5) == 1.0
    assert keep_probability(rising, lead=math.inf) == 1.0
    # The paper's test ignores the lead: the same rising history is kept whatever it is ...
    assert keep_probability(rising) == 1.0
    # ... while "compare" drops an incumbent the proposal beat by 2 pp with P = 1 - e^-2.01.
    assert keep_probability(rising, lead=-2.0) == pytest.approx(math.exp(-2.01))
    assert keep_probability(rising, lead=-math.inf) == 0.0


def test_compare_in_fractions_uses_the_metric_scale() -> None:
    rising = [0.60, 0.62, 0.64, 0.66, 0.68]
    assert keep_probability(rising, metric_scale=100.0, lead=-0.01) == pytest.approx(
        keep_probability([100 * v for v in rising], lead=-1.0)
    )


def test_compare_with_infinite_offset_always_switches() -> None:
    assert not check_accuracy_trend([10.0, 50.0], offset=math.inf, lead=5.0, u=0.0)


@given(
    history=st.lists(st.floats(0.0, 100.0), min_size=1, max_size=10),
    lead=st.floats(-100.0, 100.0),
    window=st.integers(1, 6),
    u=st.floats(0.0, 1.0, exclude_max=True),
)
def test_compare_only_adds_switches(
    history: list[float], lead: float, window: int, u: float
) -> None:
    keep_compare = check_accuracy_trend(history, window=window, lead=lead, u=u)
    keep_paper = check_accuracy_trend(history, window=window, u=u)
    if keep_compare:
        assert keep_paper
    if lead >= trend_delta(history, window):
        assert keep_compare == keep_paper
    p = keep_probability(history, window=window, lead=lead)
    assert p <= keep_probability(history, window=window)
    assert keep_compare == (p == 1.0 or p > u)


def test_nan_lead_raises() -> None:
    with pytest.raises(ValueError, match="`lead`"):
        check_accuracy_trend([1.0, 2.0], lead=math.nan, u=0.5)
    with pytest.raises(ValueError, match="`lead`"):
        keep_probability([1.0, 2.0], lead=math.nan)
