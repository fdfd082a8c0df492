from __future__ import annotations

import copy
import io
import math

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR
from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts

from optuna_ext.schedules import RecurringLR


KINDS = ("cosine", "step", "linear", "cyclic")


def _optimizer(*lrs: float) -> torch.optim.Optimizer:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0])


def _run(scheduler: RecurringLR, n_steps: int) -> list[list[float]]:
    """Step the optimizer and scheduler ``n_steps`` times; return the rate used at each step."""
    used = []
    for _ in range(n_steps):
        used.append([float(g["lr"]) for g in scheduler.optimizer.param_groups])
        scheduler.optimizer.step()
        scheduler.step()
    return used


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "boundaries",
    [[], [0], [-1, 5], [5, 5], [9, 3], [1, math.inf], [1, math.nan], ["9"], [True]],
)
def test_invalid_boundaries(boundaries: list) -> None:
    with pytest.raises(ValueError, match="`boundaries`"):
        RecurringLR(_optimizer(0.1), boundaries=boundaries, steps_per_epoch=1)


@pytest.mark.parametrize("steps_per_epoch", [0, -3, 1.5, True])
def test_invalid_steps_per_epoch(steps_per_epoch: object) -> None:
    with pytest.raises(ValueError, match="`steps_per_epoch`"):
        RecurringLR(_optimizer(0.1), boundaries=[3], steps_per_epoch=steps_per_epoch)  # type: ignore[arg-type]


@pytest.mark.parametrize("min_lr", [0.1, 0.2, -0.01, math.nan, [0.0, 0.05]])
def test_min_lr_must_be_below_each_base_rate(min_lr: float | list[float]) -> None:
    # Groups at 0.1 and 0.05: a list of [0.0, 0.05] fails for the second group.
    with pytest.raises(ValueError, match="`min_lr`"):
        RecurringLR(_optimizer(0.1, 0.05), boundaries=[3], steps_per_epoch=1, min_lr=min_lr)


def test_min_lr_list_needs_one_value_per_group() -> None:
    with pytest.raises(ValueError, match="one value per parameter group"):
        RecurringLR(_optimizer(0.1, 0.05), boundaries=[3], steps_per_epoch=1, min_lr=[0.0])


def test_validation_leaves_the_optimizer_untouched() -> None:
    optimizer = _optimizer(0.1)
    with pytest.raises(ValueError):
        RecurringLR(optimizer, boundaries=[3], steps_per_epoch=1, min_lr=0.5)
    assert "initial_lr" not in optimizer.param_groups[0]


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"kind": "exponential"}, "`kind`"),
        ({"step_fractions": (0.5, 0.5)}, "`step_fractions`"),
        ({"step_fractions": (0.0, 0.5)}, "`step_fractions`"),
        ({"step_fractions": (0.5, 1.0)}, "`step_fractions`"),
        ({"step_gamma": 0.0}, "`step_gamma`"),
        ({"step_gamma": 1.5}, "`step_gamma`"),
        ({"cyclic_peak": 0.0}, "`cyclic_peak`"),
        ({"cyclic_peak": 1.0}, "`cyclic_peak`"),
        ({"last_epoch": -2}, "`last_epoch >= -1`"),
        ({"last_epoch": 1.5}, "`last_epoch` is 1.5, but must be an integer"),
        ({"last_epoch": math.nan}, "`last_epoch` is nan, but must be an integer"),
    ],
)
def test_invalid_options(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        RecurringLR(_optimizer(0.1), boundaries=[3], steps_per_epoch=1, **kwargs)


def test_not_an_optimizer() -> None:
    with pytest.raises(TypeError):
        RecurringLR(object(), boundaries=[3], steps_per_epoch=1)  # type: ignore[arg-type]


def test_lr_at_rejects_negative_epochs() -> None:
    scheduler = RecurringLR(_optimizer(0.1), boundaries=[3], steps_per_epoch=1)
    for epoch in (-0.5, math.nan, math.inf):
        with pytest.raises(ValueError, match="`epoch`"):
            scheduler.lr_at(epoch)


# --- the rate at the rung starts and ends -----------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("min_lr", [0.0, 0.004])
def test_rate_restarts_at_each_boundary_and_anneals_at_each_end(kind: str, min_lr: float) -> None:
    base = 0.1
    boundaries = [9, 27, 81, 164]
    steps_per_epoch = 7
    scheduler = RecurringLR(
        _optimizer(base),
        boundaries=boundaries,
        steps_per_epoch=steps_per_epoch,
        kind=kind,  # type: ignore[arg-type]
        min_lr=min_lr,
    )
    # What each segment ends at: the base rate decayed twice by 0.1 for "step", min_lr otherwise.
    end = min_lr + (base - min_lr) * 0.01 if kind == "step" else min_lr
    start = min_lr if kind == "cyclic" else base
    for b_start, b_end in zip([0, *boundaries[:-1]], boundaries, strict=True):
        assert scheduler.lr_at(b_start) == pytest.approx([start], rel=1e-12)
        assert scheduler.lr_at(b_end - 1e-9) == pytest.approx([end], rel=1e-6, abs=1e-9)
        # Inside the segment the rate stays within [min_lr, base].
        for u in (0.1, 0.37, 0.5, 0.81, 0.99):
            (lr,) = scheduler.lr_at(b_start + u * (b_end - b_start))
            assert min_lr <= lr <= base
    # From the last boundary on, the end value holds.
    assert scheduler.lr_at(164) == pytest.approx([end])
    assert scheduler.lr_at(1000.5) == pytest.approx([end])

    # The per-iteration schedule: first iteration of each segment at `start`, last iteration
    # close to `end`, and after the whole run the optimizer holds `end`.
    used = _run(scheduler, boundaries[-1] * steps_per_epoch)
    for b_start, b_end in zip([0, *boundaries[:-1]], boundaries, strict=True):
        assert used[b_start * steps_per_epoch] == pytest.approx([start])
        last = used[b_end * steps_per_epoch - 1][0]
        assert abs(last - end) < 0.05 * (base - min_lr)
    assert scheduler.get_last_lr() == pytest.approx([end])


def test_cosine_shape_and_midpoint() -> None:
    scheduler = RecurringLR(_optimizer(1.0), boundaries=[10, 30], steps_per_epoch=1, min_lr=0.2)
    # Half-way through a segment the cosine is at the mean of the two ends.
    assert scheduler.lr_at(5)[0] == pytest.approx(0.6)
    assert scheduler.lr_at(20)[0] == pytest.approx(0.6)
    # A quarter of the way: 0.2 + 0.8 * (1 + cos(pi/4)) / 2.
    assert scheduler.lr_at(15)[0] == pytest.approx(0.2 + 0.4 * (1 + math.sqrt(0.5)))


def test_linear_and_step_and_cyclic_shapes() -> None:
    linear = RecurringLR(_optimizer(1.0), boundaries=[8], steps_per_epoch=1, kind="linear")
    assert linear.lr_at(2)[0] == pytest.approx(0.75)
    assert linear.lr_at(6)[0] == pytest.approx(0.25)

    # The paper's step schedule over 164 epochs decays at epochs 81 and 122.
    step = RecurringLR(_optimizer(0.1), boundaries=[164], steps_per_epoch=1, kind="step")
    assert step.lr_at(80.99)[0] == pytest.approx(0.1)
    assert step.lr_at(81)[0] == pytest.approx(0.01)
    assert step.lr_at(121.99)[0] == pytest.approx(0.01)
    assert step.lr_at(122)[0] == pytest.approx(0.001)
    # Condensed into 9 epochs, the decays come at the same fractions.
    condensed = RecurringLR(_optimizer(0.1), boundaries=[9], steps_per_epoch=1, kind="step")
    assert condensed.lr_at(9 * 81 / 164 - 1e-9)[0] == pytest.approx(0.1)
    assert condensed.lr_at(9 * 81 / 164 + 1e-9)[0] == pytest.approx(0.01)

    cyclic = RecurringLR(
        _optimizer(1.0), boundaries=[10, 20], steps_per_epoch=1, kind="cyclic", cyclic_peak=0.3
    )
    assert cyclic.lr_at(13)[0] == pytest.approx(1.0)  # the peak, 30% into the second segment
    assert cyclic.lr_at(11.5)[0] == pytest.approx(0.5)
    assert cyclic.lr_at(16.5)[0] == pytest.approx(0.5)


def test_single_boundary_is_torch_cosine_annealing() -> None:
    """``boundaries=[r]``, the non-recurring baseline, is CosineAnnealingLR over the whole run."""
    steps_per_epoch, r = 5, 12
    ours = RecurringLR(
        _optimizer(0.1), boundaries=[r], steps_per_epoch=steps_per_epoch, min_lr=1e-3
    )
    theirs_optimizer = _optimizer(0.1)
    theirs = CosineAnnealingLR(theirs_optimizer, T_max=r * steps_per_epoch, eta_min=1e-3)
    for _ in range(r * steps_per_epoch):
        assert ours.get_last_lr() == pytest.approx(theirs.get_last_lr(), rel=1e-9)
        ours.optimizer.step()
        ours.step()
        theirs_optimizer.step()
        theirs.step()


def test_geometric_boundaries_are_torch_warm_restarts() -> None:
    """Segments of 2, 6 and 18 epochs match CosineAnnealingWarmRestarts(T_0=2, T_mult=3)."""
    steps_per_epoch = 4
    ours = RecurringLR(_optimizer(0.5), boundaries=[2, 8, 26], steps_per_epoch=steps_per_epoch)
    theirs_optimizer = _optimizer(0.5)
    theirs = CosineAnnealingWarmRestarts(theirs_optimizer, T_0=2 * steps_per_epoch, T_mult=3)
    for _ in range(26 * steps_per_epoch):
        assert ours.get_last_lr() == pytest.approx(theirs.get_last_lr(), rel=1e-9, abs=1e-15)
        ours.optimizer.step()
        ours.step()
        theirs_optimizer.step()
        theirs.step()


def test_each_group_keeps_its_base_rate_and_min_lr() -> None:
    scheduler = RecurringLR(
        _optimizer(0.1, 0.02), boundaries=[4, 8], steps_per_epoch=2, min_lr=[0.01, 0.0]
    )
    assert scheduler.lr_at(0) == pytest.approx([0.1, 0.02])
    assert scheduler.lr_at(2) == pytest.approx([0.055, 0.01])
    assert scheduler.lr_at(4) == pytest.approx([0.1, 0.02])
    assert scheduler.lr_at(8) == pytest.approx([0.01, 0.0])


def test_fractional_boundaries() -> None:
    scheduler = RecurringLR(_optimizer(1.0), boundaries=[0.5, 1.25], steps_per_epoch=4)
    used = [lrs[0] for lrs in _run(scheduler, 6)]
    # Iterations at epochs 0, .25 | .5, .75, 1.0 | 1.25 (held end value, 0).
    assert used == pytest.approx([1.0, 0.5, 1.0, 0.75, 0.25, 0.0])


def test_tensor_learning_rate() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=torch.tensor(0.1))
    scheduler = RecurringLR(optimizer, boundaries=[2], steps_per_epoch=2)
    _run(scheduler, 1)
    assert isinstance(optimizer.param_groups[0]["lr"], torch.Tensor)
    assert float(optimizer.param_groups[0]["lr"]) == pytest.approx(0.1 * (1 + math.sqrt(0.5)) / 2)


# --- state dict -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_round_trip_mid_segment(kind: str) -> None:
    boundaries, steps_per_epoch = [3, 9, 14], 5
    reference = RecurringLR(
        _optimizer(0.1),
        boundaries=boundaries,
        steps_per_epoch=steps_per_epoch,
        kind=kind,  # type: ignore[arg-type]
    )
    expected = _run(reference, 14 * steps_per_epoch)

    first = RecurringLR(
        _optimizer(0.1),
        boundaries=boundaries,
        steps_per_epoch=steps_per_epoch,
        kind=kind,  # type: ignore[arg-type]
    )
    cut = 6 * steps_per_epoch + 3  # mid-way through the second segment
    before = _run(first, cut)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)

    # A fresh process: new optimizer (at its initial rate) and a new scheduler.
    resumed = RecurringLR(
        _optimizer(0.1),
        boundaries=boundaries,
        steps_per_epoch=steps_per_epoch,
        kind=kind,  # type: ignore[arg-type]
    )
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    assert resumed.last_epoch == cut
    after = _run(resumed, 14 * steps_per_epoch - cut)
    assert before + after == expected


def test_loaded_state_replaces_the_configuration() -> None:
    saved = RecurringLR(_optimizer(0.1), boundaries=[2, 6], steps_per_epoch=1, kind="linear")
    _run(saved, 3)
    other = RecurringLR(_optimizer(0.1), boundaries=[50], steps_per_epoch=10)
    other.load_state_dict(copy.deepcopy(saved.state_dict()))
    assert other.boundaries == (2, 6)
    assert other.kind == "linear"
    assert other.get_last_lr() == pytest.approx(saved.get_last_lr())
    assert other.optimizer.param_groups[0]["lr"] == pytest.approx(0.075)


# --- properties -------------------------------------------------------------------------------


_boundaries = st.lists(
    st.floats(min_value=0.05, max_value=200.0, allow_nan=False), min_size=1, max_size=6
).map(lambda xs: sorted(set(xs)))


@settings(max_examples=150, deadline=None)
@given(
    boundaries=_boundaries,
    kind=st.sampled_from(KINDS),
    base=st.floats(min_value=1e-5, max_value=10.0),
    min_fraction=st.floats(min_value=0.0, max_value=0.99),
    epoch=st.floats(min_value=0.0, max_value=500.0),
)
def test_lr_at_stays_within_min_lr_and_base(
    boundaries: list[float], kind: str, base: float, min_fraction: float, epoch: float
) -> None:
    min_lr = base * min_fraction
    scheduler = RecurringLR(
        _optimizer(base),
        boundaries=boundaries,
        steps_per_epoch=1,
        kind=kind,  # type: ignore[arg-type]
        min_lr=min_lr,
    )
    (lr,) = scheduler.lr_at(epoch)
    assert min_lr * (1 - 1e-12) <= lr <= base * (1 + 1e-12)


@settings(max_examples=40, deadline=None)
@given(
    ends=st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=4),
    steps_per_epoch=st.integers(min_value=1, max_value=7),
    kind=st.sampled_from(KINDS),
    extra=st.integers(min_value=0, max_value=10),
)
def test_stepping_follows_lr_at(
    ends: list[int], steps_per_epoch: int, kind: str, extra: int
) -> None:
    boundaries = [sum(ends[: i + 1]) for i in range(len(ends))]
    scheduler = RecurringLR(
        _optimizer(0.3, 0.1),
        boundaries=boundaries,
        steps_per_epoch=steps_per_epoch,
        kind=kind,  # type: ignore[arg-type]
        min_lr=0.01,
    )
    n = boundaries[-1] * steps_per_epoch + extra
    for i, used in enumerate(_run(scheduler, n)):
        assert used == pytest.approx(scheduler.lr_at(i / steps_per_epoch), rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    ends=st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=4),
    steps_per_epoch=st.integers(min_value=1, max_value=5),
    kind=st.sampled_from(KINDS),
    data=st.data(),
)
def test_state_dict_round_trip_at_any_point(
    ends: list[int], steps_per_epoch: int, kind: str, data: st.DataObject
) -> None:
    boundaries = [sum(ends[: i + 1]) for i in range(len(ends))]
    total = boundaries[-1] * steps_per_epoch + 2
    cut = data.draw(st.integers(min_value=0, max_value=total))

    def make() -> RecurringLR:
        return RecurringLR(
            _optimizer(0.2),
            boundaries=boundaries,
            steps_per_epoch=steps_per_epoch,
            kind=kind,  # type: ignore[arg-type]
        )

    expected = _run(make(), total)
    first = make()
    before = _run(first, cut)
    resumed = make()
    resumed.load_state_dict(copy.deepcopy(first.state_dict()))
    after = _run(resumed, total - cut)
    assert before + after == expected
