"""The autoHyper search as a pure state machine: each rule on scripted Z sequences."""

from __future__ import annotations

from collections.abc import Callable
import math

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import numpy as np
import pytest

from optuna_ext.samplers._autohyper import _search
from optuna_ext.samplers._autohyper._search import AutoHyperSearch
from optuna_ext.samplers._autohyper._search import GridPoint
from optuna_ext.samplers._autohyper._search import point_outcome
from optuna_ext.samplers._autohyper._search import replay
from optuna_ext.samplers._autohyper._search import SearchState
from optuna_ext.samplers._autohyper._search import simulate
from optuna_ext.samplers._autohyper._search import upcoming
from tests.samplers_tests.autohyper_tests._synthetic import knee_z
from tests.samplers_tests.autohyper_tests._synthetic import plateau_start


def scripted(zs: list[float]) -> Callable[[GridPoint], list[float | None]]:
    """A lookup that answers the n-th evaluation with ``zs[n]`` (pending after the script)."""
    answered: dict[tuple[int, int], float] = {}

    def lookup(point: GridPoint) -> list[float | None]:
        key = (point.pass_id, point.index)
        if key not in answered:
            if len(answered) == len(zs):
                return []
            answered[key] = zs[len(answered)]
        return [answered[key]]

    return lookup


def kinds(state: SearchState) -> list[str]:
    return [e.kind for e in state.events]


def grid(lo: float, hi: float, n: int = 20) -> tuple[float, ...]:
    return tuple(float(v) for v in np.geomspace(lo, hi, n))


def test_first_grid_is_the_reference_grid() -> None:
    state = replay(AutoHyperSearch(), {})
    assert state.grid == grid(1e-4, 0.1)
    assert state.next_point == GridPoint(0, 0, 1e-4)
    assert not state.finished and state.reason == "running" and state.lr is None


def test_all_zero_moves_min_lr_up_by_5() -> None:
    state = replay(AutoHyperSearch(), scripted([1.0]))
    assert kinds(state) == ["all-zero"]
    assert state.pass_id == 1 and state.index == 0
    assert state.grid == grid(5e-4, 0.1)


def test_all_zero_past_max_lr_sets_max_to_one_and_a_half_min() -> None:
    state = replay(AutoHyperSearch(min_lr=0.05, max_lr=0.1), scripted([1.0]))
    assert state.grid[0] == pytest.approx(0.25) and state.grid[-1] == pytest.approx(0.375)


def test_all_zero_fires_at_any_index() -> None:
    state = replay(AutoHyperSearch(), scripted([0.9, 0.9, 1.0]))
    assert kinds(state) == ["all-zero"]
    assert state.grid == grid(5e-4, 0.1)


def test_z_is_compared_in_float64_not_float16() -> None:
    # float16(0.99995) == 1.0, so the reference would fire 'all-zero' here.
    assert np.float16(0.99995) == 1.0
    state = replay(AutoHyperSearch(), scripted([0.99995]))
    assert kinds(state) == [] and state.index == 1


def test_early_cross_divides_min_lr_by_10_on_the_first_run_only() -> None:
    state = replay(AutoHyperSearch(), scripted([0.3]))
    assert kinds(state) == ["early-cross"]
    assert state.grid == grid(1e-5, 0.1) and state.index == 0
    # Repeats while the first point stays below 0.5.
    state = replay(AutoHyperSearch(), scripted([0.3, 0.3]))
    assert kinds(state) == ["early-cross", "early-cross"]
    assert state.grid[0] == pytest.approx(1e-6)
    # After a point with i > 0 the first run is over: a low Z at i = 0 no longer moves down.
    state = replay(AutoHyperSearch(), scripted([0.9, 0.8, 0.0, 0.3]))
    assert kinds(state) == ["reach-100"]
    assert state.index == 1


def test_reach_100_zooms_below_the_point() -> None:
    g = grid(1e-4, 0.1)
    state = replay(AutoHyperSearch(), scripted([0.9, 0.8, 0.7, 0.0]))
    assert kinds(state) == ["reach-100"]
    assert state.grid == grid(g[1], g[2])
    # At i = 1 the upper end is the arithmetic midpoint of the first two points.
    state = replay(AutoHyperSearch(), scripted([0.9, 0.0]))
    assert state.grid == grid(g[0], (g[0] + g[1]) / 2)


def test_plateau_zooms_onto_the_last_two_intervals() -> None:
    g = grid(1e-4, 0.1)
    # prod = 0.9 * 0.1 * 0.1 = 9e-3 -> 0.023 >= 5e-3; then * 0.1 -> 0.0037 < 5e-3.
    state = replay(AutoHyperSearch(), scripted([0.9, 0.1, 0.1]))
    assert kinds(state) == []
    state = replay(AutoHyperSearch(), scripted([0.9, 0.1, 0.1, 0.1]))
    assert kinds(state) == ["plateau"]
    assert state.grid == grid(g[1], g[3])
    assert state.events[0].index == 3 and state.events[0].n_trials == 4


def test_plateau_exit_counter_returns_the_rate_of_the_last_plateau() -> None:
    search = AutoHyperSearch(lr_delta=None, exit_counter_threshold=6)

    def z(lr: float) -> float:
        return 0.9 if lr < 1e-4 * (1 + 1e-9) else 0.05

    state = simulate(search, z)
    plateaus = [e for e in state.events if e.kind == "plateau"]
    assert len(plateaus) == 7
    assert state.finished and state.converged and state.reason == "plateau"
    assert state.lr == plateaus[-1].lr


def test_end_reached_moves_the_grid_up_and_keeps_the_product() -> None:
    g = grid(1e-4, 0.1)
    state = replay(AutoHyperSearch(), scripted([0.9] * 20))
    assert kinds(state) == ["end-reached"]
    assert state.grid == grid(g[-2], 1.5 * g[-1]) and state.pass_id == 1
    # 0.9 ** k ** 0.8 < 5e-3 first at k = 63: with the product kept across the three
    # 'end-reached' moves it fires at the 63rd evaluation (pass 3, index 2); with a reset it
    # would need 63 points in one pass.
    state = simulate(AutoHyperSearch(), lambda lr: 0.9)
    first = next(e for e in state.events if e.kind == "plateau")
    assert first.n_trials == 63 and first.pass_id == 3 and first.index == 2


def test_exit_delta_is_an_absolute_width() -> None:
    state = replay(AutoHyperSearch(min_lr=1e-4, max_lr=1.2e-4), {})
    assert state.finished and state.reason == "exit-delta" and state.lr == 1.2e-4
    assert state.n_trials == 0
    # The same relative width at a larger scale does not stop.
    state = replay(AutoHyperSearch(min_lr=1e-1, max_lr=1.2e-1), {})
    assert not state.finished


def test_relative_width() -> None:
    search = AutoHyperSearch(min_lr=1e-1, max_lr=1.04e-1, relative_width=0.05)
    state = replay(search, {})
    assert state.finished and state.reason == "relative-width" and state.lr == 1.04e-1
    assert not replay(AutoHyperSearch(min_lr=1e-1, max_lr=1.04e-1), {}).finished


def test_max_trials_stops_without_an_answer() -> None:
    state = simulate(AutoHyperSearch(max_trials=10), lambda lr: 0.9)
    assert state.finished and not state.converged
    assert state.reason == "max-trials" and state.lr is None and state.n_trials == 10
    assert state.next_point is None


def test_failures_are_retried_then_skipped() -> None:
    search = AutoHyperSearch(max_retries=2)
    assert point_outcome([None, None], 2) == ("pending", None, 2)
    assert point_outcome([None, 0.7, 0.1], 2) == ("observed", 0.7, 2)
    assert point_outcome([None, None, None, 0.5], 2) == ("skipped", None, 3)
    lr0 = grid(1e-4, 0.1)[0]
    state = replay(search, {(0, 0): [(lr0, None), (lr0, None)]})
    assert state.index == 0 and state.head_failures == 2 and state.n_trials == 0
    state = replay(search, {(0, 0): [(lr0, None), (lr0, None), (lr0, None)]})
    assert kinds(state) == ["skipped"] and state.index == 1 and state.n_trials == 3
    assert state.evaluations == ()
    state = replay(search, {(0, 0): [(lr0, None), (lr0, 0.8)]})
    assert state.index == 1 and state.n_trials == 2 and state.evaluations[0].z == 0.8


def test_attempts_at_another_rate_are_ignored() -> None:
    # A speculative measurement for (pass 0, index 0) at a rate the search does not have there.
    state = replay(AutoHyperSearch(), {(0, 0): [(2e-4, 0.9)]})
    assert state.index == 0 and state.n_trials == 0


def test_upper_bound_all_zero_stops_at_the_bound() -> None:
    search = AutoHyperSearch(upper_bound=0.05)
    state = simulate(search, lambda lr: 1.0)
    assert state.finished and state.converged and state.reason == "upper-bound"
    assert state.lr == 0.05
    assert "upper" in state.bounds_reached
    assert all(e.lr <= 0.05 for e in state.evaluations)


def test_upper_bound_end_reached_stops_at_the_bound() -> None:
    search = AutoHyperSearch(upper_bound=0.1)
    state = simulate(search, lambda lr: 0.9)
    assert state.reason == "upper-bound" and state.lr == 0.1 and state.n_trials == 20


def test_end_reached_is_clamped_to_the_upper_bound() -> None:
    search = AutoHyperSearch(upper_bound=0.12)
    state = replay(search, scripted([0.9] * 20))
    assert kinds(state) == ["end-reached", "bound-reached"]
    assert state.grid[-1] == 0.12


def test_first_grid_is_clipped_to_the_bounds() -> None:
    state = replay(AutoHyperSearch(lower_bound=1e-3, upper_bound=0.05), {})
    assert state.grid == grid(1e-3, 0.05)
    assert state.bounds_reached == ("lower", "upper")


def test_early_cross_at_the_lower_bound_continues_on_the_grid() -> None:
    state = replay(AutoHyperSearch(lower_bound=1e-4), scripted([0.3]))
    assert kinds(state) == ["bound-reached"] and state.events[0].detail == "lower"
    assert state.pass_id == 0 and state.index == 1
    # Partly room below: clamped to the bound, then continues there.
    state = replay(AutoHyperSearch(lower_bound=5e-5), scripted([0.3, 0.3]))
    assert kinds(state) == ["early-cross", "bound-reached", "bound-reached"]
    assert state.grid[0] == 5e-5 and state.index == 1


def test_oscillation_guard() -> None:
    # Z jumps from 1 to 0.3 between 1e-4 and 5e-4: the reference alternates x5 and /10.
    def z(lr: float) -> float:
        return 1.0 if lr < 3e-4 else 0.3 * math.exp(-(lr - 3e-4) * 100)

    state = simulate(AutoHyperSearch(), z)
    assert "early-cross-blocked" in kinds(state)
    assert state.converged and state.reason != "max-trials"
    assert state.n_trials < 60


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(min_lr=0.0), "min_lr > 0"),
        (dict(min_lr=-1.0), "min_lr > 0"),
        (dict(min_lr=float("nan")), "`min_lr`.*NaN"),
        (dict(max_lr=1e-4), "max_lr > min_lr"),
        (dict(max_lr=float("inf")), "`max_lr` is inf, but must be finite"),
        (dict(min_lr=float("inf")), "`min_lr` is inf, but must be finite"),
        (dict(num_split=1), "num_split >= 2"),
        (dict(num_split=2.5), "num_split >= 2"),
        (dict(min_delta=0.0), "0 < min_delta < 1"),
        (dict(min_delta=1.0), "0 < min_delta < 1"),
        (dict(power=0.0), "power > 0"),
        (dict(lr_delta=0.0), "lr_delta > 0"),
        (dict(exit_counter_threshold=-1), "exit_counter_threshold >= 0"),
        (dict(relative_width=0.0), "relative_width > 0"),
        (dict(max_trials=0), "max_trials >= 1"),
        (dict(max_retries=-1), "max_retries >= 0"),
        (dict(lower_bound=-1.0), "lower_bound >= 0"),
        (dict(lower_bound=1.0, upper_bound=1.0), "upper_bound > lower_bound"),
        (dict(lower_bound=1.0, upper_bound=2.0), "does not overlap"),
    ],
)
def test_invalid_settings(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AutoHyperSearch(**kwargs)


def test_settings_round_trip_through_json() -> None:
    import json

    for search in [AutoHyperSearch(), AutoHyperSearch(relative_width=0.1, upper_bound=2.0)]:
        d = json.loads(json.dumps(search.to_dict()))
        assert AutoHyperSearch.from_dict(d) == search
    with pytest.raises(ValueError, match="Unknown"):
        AutoHyperSearch.from_dict({"nope": 1})


def test_upcoming_walks_the_grid_and_past_its_end() -> None:
    search = AutoHyperSearch()
    state = replay(search, scripted([0.9] * 17))
    points = list(upcoming(search, state))
    g = grid(1e-4, 0.1)
    assert points[0] == state.next_point == GridPoint(0, 17, g[17])
    assert [p.index for p in points[:3]] == [17, 18, 19]
    g1 = grid(g[-2], 1.5 * g[-1])
    assert points[3] == GridPoint(1, 0, g1[0])
    assert len(points) == search.max_trials - state.n_trials
    assert list(upcoming(search, simulate(AutoHyperSearch(max_trials=3), lambda lr: 0.9))) == []


@settings(max_examples=25, deadline=None)
@given(
    knee=st.floats(1e-5, 1.0),
    floor=st.floats(0.0, 0.3),
    steepness=st.floats(1.5, 8.0),
    noise_seed=st.integers(0, 2**16),
)
def test_replay_of_any_prefix_continues_the_sequential_search(
    knee: float, floor: float, steepness: float, noise_seed: int
) -> None:
    rng = np.random.default_rng(noise_seed)
    cache: dict[float, float] = {}

    def z(lr: float) -> float:
        if lr not in cache:
            noisy = knee_z(lr, knee, floor, steepness) + rng.normal(0, 0.02)
            cache[lr] = float(np.clip(noisy, 0.0, 1.0))
        return cache[lr]

    search = AutoHyperSearch(relative_width=0.05)
    final = simulate(search, z)
    assert final.finished
    evals = final.evaluations
    # Replaying the first k measurements points at the (k+1)-th one.
    for k in range(len(evals) + 1):
        outcomes = {(e.pass_id, e.index): [(e.lr, e.z)] for e in evals[:k]}
        state = replay(search, outcomes)
        if k < len(evals):
            assert state.next_point == GridPoint(evals[k].pass_id, evals[k].index, evals[k].lr)
        else:
            assert state == final


@settings(max_examples=40, deadline=None)
@given(knee=st.floats(3e-4, 3e-2))
def test_converges_near_the_knee(knee: float) -> None:
    # With the reference defaults, on Adam-scale knees (3e-4 .. 3e-2), the chosen rate lies
    # within a factor 2 of where Z reaches its plateau, after at most 60 evaluations (one walk
    # of the 20-point grid plus up to 7 zooms of a few points each).
    state = simulate(AutoHyperSearch(), lambda lr: knee_z(lr, knee))
    assert state.converged and state.lr is not None
    ratio = state.lr / plateau_start(knee)
    assert 0.5 <= ratio <= 2.0
    assert state.n_trials <= 60


def test_module_has_no_optuna_import() -> None:
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(_search))
    names = [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    ] + [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert not any(n.startswith("optuna") for n in names)
