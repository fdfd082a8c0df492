"""Property-based tests of RecurringLR on random boundaries, kinds and rates (hypothesis).

``test_recurring.py`` holds the bounds, the stepping and the state-dict properties; these are
the restarts and the repetition: the schedule restarts at every boundary, each segment is the
same shape condensed to its length, and it holds still after the last boundary. The MORL
pruners' rung ends are a valid boundary list whatever their arguments.
"""

from __future__ import annotations

import math

from hypothesis import assume
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import pytest
import torch

from optuna_ext.pruners import MORLPruner
from optuna_ext.schedules import RecurringLR
from optuna_ext.schedules._recurring import PAPER_STEP_FRACTIONS


KINDS = ("cosine", "step", "linear", "cyclic")

_segments = st.lists(st.floats(min_value=0.25, max_value=50.0), min_size=1, max_size=6)


def _scheduler(
    boundaries: list[float], kind: str, base: float, min_lr: float, gamma: float = 0.1
) -> RecurringLR:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    return RecurringLR(
        optimizer,
        boundaries=boundaries,
        steps_per_epoch=1,
        kind=kind,  # type: ignore[arg-type]
        min_lr=min_lr,
        step_gamma=gamma,
    )


def _ends(lengths: list[float]) -> list[float]:
    ends, total = [], 0.0
    for length in lengths:
        total += length
        ends.append(total)
    return ends


@settings(max_examples=100, deadline=None)
@given(
    lengths=_segments,
    kind=st.sampled_from(KINDS),
    base=st.floats(min_value=1e-4, max_value=10.0),
    min_fraction=st.floats(min_value=0.0, max_value=0.9),
    gamma=st.floats(min_value=0.01, max_value=1.0),
)
def test_restarts_at_every_boundary(
    lengths: list[float], kind: str, base: float, min_fraction: float, gamma: float
) -> None:
    ends = _ends(lengths)
    min_lr = base * min_fraction
    scheduler = _scheduler(ends, kind, base, min_lr, gamma)
    start = min_lr if kind == "cyclic" else base  # f(0): cyclic starts at the bottom
    end = min_lr + (base - min_lr) * gamma**2 if kind == "step" else min_lr  # f(1)
    for b in [0.0, *ends[:-1]]:
        (at,) = scheduler.lr_at(b)
        assert at == pytest.approx(start, rel=1e-9, abs=1e-12)
    for b, length in zip(ends, lengths, strict=True):
        (before,) = scheduler.lr_at(b - 1e-9 * length)  # the limit from the left: annealed
        assert before == pytest.approx(end, rel=1e-6, abs=1e-6 * base)


@settings(max_examples=100, deadline=None)
@given(
    lengths=_segments,
    kind=st.sampled_from(KINDS),
    base=st.floats(min_value=1e-4, max_value=10.0),
    u=st.floats(min_value=0.0, max_value=0.999),
)
def test_every_segment_is_the_same_shape_condensed(
    lengths: list[float], kind: str, base: float, u: float
) -> None:
    """The rate at the same fraction ``u`` of every segment is the same (equal segments: the
    schedule is periodic)."""
    if kind == "step":  # rounding must not carry u across a decay point
        assume(all(abs(u - f) > 1e-6 for f in PAPER_STEP_FRACTIONS))
    ends = _ends(lengths)
    scheduler = _scheduler(ends, kind, base, 0.1 * base)
    starts = [0.0, *ends[:-1]]
    rates = [scheduler.lr_at(s + u * n)[0] for s, n in zip(starts, lengths, strict=True)]
    assert rates == pytest.approx([rates[0]] * len(rates), rel=1e-9)


@settings(max_examples=60, deadline=None)
@given(
    period=st.integers(min_value=1, max_value=9),
    n=st.integers(min_value=2, max_value=6),
    kind=st.sampled_from(KINDS),
    steps_per_epoch=st.integers(min_value=1, max_value=5),
)
def test_equal_segments_repeat_step_by_step(
    period: int, n: int, kind: str, steps_per_epoch: int
) -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.4)
    scheduler = RecurringLR(
        optimizer,
        boundaries=[period * (k + 1) for k in range(n)],
        steps_per_epoch=steps_per_epoch,
        kind=kind,  # type: ignore[arg-type]
    )
    used = []
    for _ in range(period * n * steps_per_epoch):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    cycle = period * steps_per_epoch
    for i in range(cycle, len(used)):
        assert used[i] == pytest.approx(used[i - cycle], rel=1e-12, abs=1e-15)


@settings(max_examples=60, deadline=None)
@given(
    lengths=_segments,
    kind=st.sampled_from(KINDS),
    after=st.lists(st.floats(min_value=0.0, max_value=1e4), min_size=1, max_size=5),
)
def test_holds_still_after_the_last_boundary(
    lengths: list[float], kind: str, after: list[float]
) -> None:
    ends = _ends(lengths)
    scheduler = _scheduler(ends, kind, 0.5, 0.01)
    rates = [scheduler.lr_at(ends[-1] + a)[0] for a in after]
    assert rates == [rates[0]] * len(rates)
    assert math.isfinite(rates[0])


@settings(max_examples=100, deadline=None)
@given(
    max_resource=st.integers(min_value=1, max_value=500),
    reduction_factor=st.integers(min_value=2, max_value=6),
    min_resource=st.integers(min_value=1, max_value=50),
    last_rung=st.sampled_from(["separate", "stretched"]),
)
def test_morl_rung_ends_are_the_schedule_restarts(
    max_resource: int, reduction_factor: int, min_resource: int, last_rung: str
) -> None:
    if min_resource > max_resource:
        with pytest.raises(ValueError, match="max_resource"):
            MORLPruner(max_resource=max_resource, min_resource=min_resource)
        return
    pruner = MORLPruner(
        max_resource=max_resource,
        min_resource=min_resource,
        reduction_factor=reduction_factor,
        last_rung=last_rung,  # type: ignore[arg-type]
    )
    ends = list(pruner.boundaries)
    assert ends[-1] == max_resource and all(b >= min_resource for b in ends)
    if len(ends) > 1:
        assert ends[0] == min_resource
    assert all(a < b for a, b in zip(ends, ends[1:], strict=False))
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.3)
    scheduler = pruner.schedule(optimizer, steps_per_epoch=1)
    assert list(scheduler.boundaries) == ends
    for b in ends[:-1]:
        assert scheduler.lr_at(b) == [pytest.approx(0.3)]  # restarted at every rung end
