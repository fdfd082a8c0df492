"""The autoHyper learning-rate search as a pure, replayable state machine.

This module has no Optuna dependency. :func:`replay` takes the outcomes observed so far for
each grid point and re-runs the whole search from the start, deterministically, stopping at
the first point whose outcome is still unknown. The sampler adapter
(:mod:`optuna_ext.samplers._autohyper.sampler`) rebuilds those outcomes from the study's
trials, so no search state ever lives only in memory.

The loop follows the reference code of autoHyper (``auto_lr`` in ``MathieuTuli/autoHyper``,
ICLR 2021 submission), rule by rule; the differences from the paper's Algorithm 1 and from the
reference are listed in the docstring of :class:`AutoHyperSearch`.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
import dataclasses
import math
from typing import Any
from typing import Literal

import numpy as np


# Rule and event names (the values of ``SearchEvent.kind``).
ALL_ZERO = "all-zero"
EARLY_CROSS = "early-cross"
EARLY_CROSS_BLOCKED = "early-cross-blocked"
REACH_100 = "reach-100"
PLATEAU = "plateau"
END_REACHED = "end-reached"
EXIT_DELTA = "exit-delta"
RELATIVE_WIDTH = "relative-width"
MAX_TRIALS = "max-trials"
BOUND_REACHED = "bound-reached"
UPPER_BOUND = "upper-bound"
SKIPPED = "skipped"
STOP = "stop"

# Stop reasons (the values of ``SearchState.reason``).
RUNNING = "running"

# Two learning rates denote the same grid point when they agree to this relative tolerance
# (grids computed by different NumPy builds may differ in the last bits).
_LR_RTOL = 1e-9

Attempt = tuple[float, float | None]
"""One finished evaluation of a grid point: ``(lr, z)``, with ``z=None`` for a failure."""


def _check_positive_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(
            f"The value of `{name}` is {value!r}, but must be an integer `{name} >= {minimum}`."
        )


def _check_finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise ValueError(f"The value of `{name}` is {value!r}, but must be a real number.")
    v = float(value)
    if math.isnan(v):
        raise ValueError(f"The value of `{name}` is {value!r}, but must not be NaN.")
    return v


@dataclasses.dataclass(frozen=True)
class AutoHyperSearch:
    """Settings of the autoHyper search (Algorithm 1 of the autoHyper paper).

    The search walks a logarithmic grid of ``num_split`` learning rates from ``min_lr`` to
    ``max_lr`` and measures the response ``Z(lr)`` at each point, in order. After each
    measurement it applies the first rule that fires (the names are those of
    :class:`SearchEvent`):

    - ``"all-zero"``: ``Z`` is 1 (no layer learned anything): the rate is far too small.
      ``min_lr`` is multiplied by 5 (``max_lr`` becomes ``1.5 * min_lr`` if it is passed) and the
      walk restarts on a new grid.
    - ``"early-cross"``: the first point of the first pass already has ``Z < 0.5``: ``min_lr``
      is divided by 10 and the walk restarts.
    - ``"reach-100"``: ``Z`` is 0 (every layer has non-zero knowledge gain): zoom onto
      ``[grid[i-2], grid[i-1]]`` (or ``[grid[0], (grid[0] + grid[1]) / 2]`` at ``i = 1``).
    - ``"plateau"``: ``prod(Z since the last re-grid) ** power < min_delta``: zoom onto
      ``[grid[i-2], grid[i]]`` and count a plateau. When more than ``exit_counter_threshold``
      plateaus have been counted, the search stops and returns ``grid[i]``.
    - ``"end-reached"``: the grid was walked to its end: move it up to
      ``[grid[-2], 1.5 * grid[-1]]``.

    Before each measurement the search stops when the grid is narrower than ``lr_delta``
    (``"exit-delta"``, absolute width, as in the reference) or, if ``relative_width`` is set,
    when ``max_lr / min_lr < 1 + relative_width`` (``"relative-width"``), and returns the upper
    end of the grid. ``max_trials`` bounds the number of measurements (``"max-trials"``: the
    search stops without an answer).

    Defaults follow the reference code where it differs from the paper:

    - ``lr_delta=3e-5`` (reference); the paper's Algorithm 1 states ``5e-5``.
    - "Increase/reduce ``min_lr``" is ×5 and ÷10 (reference); the paper gives no factor.
    - ``"end-reached"`` keeps the last interval, ``[grid[-2], 1.5 * grid[-1]]`` (reference);
      the paper sets ``min_lr = max_lr`` and increases ``max_lr``.
    - ``"reach-100"`` zooms onto ``[grid[i-2], grid[i-1]]`` (reference); the paper says
      ``[grid[i-2], grid[i]]``.
    - ``"plateau"`` zooms onto ``[grid[i-2], grid[i]]`` (reference); the paper says
      ``[grid[i-1], grid[i]]``. The rate-of-change test ``cumprod(Z) ** 0.8 < 5e-3`` and the
      exit counter (stop at the 7th plateau) are only in the reference code.
    - The product of ``Z`` is *not* reset by ``"end-reached"`` (reference behaviour).
    - Zoomed grids re-evaluate their end points (no caching, as in the reference).

    Deliberate differences from the reference code:

    - ``Z`` is compared in float64 (``np.isclose`` with NumPy's default tolerances). The
      reference casts ``Z`` to float16, which rounds it to about three significant digits
      before the comparisons and the cumulative product; that is a bug, not a design choice.
    - The grid never leaves ``[lower_bound, upper_bound]`` (the bounds of the Optuna
      distribution). A rule that would move past a bound is clamped and a ``"bound-reached"``
      event is recorded. When the search can no longer move up (``"all-zero"`` with
      ``5 * min_lr >= upper_bound``, or ``"end-reached"`` with the grid already ending at
      ``upper_bound``), it stops with reason ``"upper-bound"`` and returns ``upper_bound``:
      the knee lies above the allowed range.
      When ``"early-cross"`` cannot move down (the grid already starts at ``lower_bound``),
      the walk simply continues on the current grid.
    - Oscillation guard: ``"early-cross"`` never restarts the grid at or below a rate that
      already gave ``Z = 1``; the reference can alternate ÷10 and ×5 forever when ``Z`` jumps
      from 1 to below 0.5 within a factor of 5. Such a move is recorded as
      ``"early-cross-blocked"`` and the walk continues on the current grid.
    - ``max_trials`` (not in the reference) bounds the whole search.
    - A grid point whose evaluation failed is retried up to ``max_retries`` times, then
      skipped (event ``"skipped"``: the walk moves to the next point without a measurement).

    Example:

        .. testcode::

            from optuna_ext.samplers import AutoHyperSearch
            from optuna_ext.samplers._autohyper._search import simulate

            # A synthetic response with its knee at 1e-2.
            state = simulate(AutoHyperSearch(), lambda lr: 0.05 + 0.95 / (1 + (lr / 1e-2) ** 3))
            print(state.reason, state.lr, state.n_trials)

    Args:
        min_lr:
            Lower end of the first grid.
        max_lr:
            Upper end of the first grid.
        num_split:
            Number of points of each grid.
        min_delta:
            Threshold of the plateau test on ``prod(Z) ** power``.
        power:
            Exponent of the plateau test.
        lr_delta:
            Absolute width below which the search stops, or :obj:`None` to disable that test.
        exit_counter_threshold:
            The search stops at plateau number ``exit_counter_threshold + 1``.
        relative_width:
            If set, the search also stops when ``max_lr / min_lr < 1 + relative_width``.
        max_trials:
            Maximum number of evaluations (including failed ones) of the search.
        max_retries:
            How many times a failed grid point is re-evaluated before it is skipped.
        lower_bound:
            Smallest rate the grid may contain.
        upper_bound:
            Largest rate the grid may contain.
    """

    min_lr: float = 1e-4
    max_lr: float = 0.1
    num_split: int = 20
    min_delta: float = 5e-3
    power: float = 0.8
    lr_delta: float | None = 3e-5
    exit_counter_threshold: int = 6
    relative_width: float | None = None
    max_trials: int = 100
    max_retries: int = 2
    lower_bound: float = 0.0
    upper_bound: float = math.inf

    def __post_init__(self) -> None:
        min_lr = _check_finite("min_lr", self.min_lr)
        max_lr = _check_finite("max_lr", self.max_lr)
        if not 0 < min_lr < math.inf:
            raise ValueError(
                f"The value of `min_lr` is {self.min_lr}, but must be finite and `min_lr > 0`."
            )
        if not math.isfinite(max_lr):
            raise ValueError(
                f"The value of `max_lr` is {self.max_lr}, but must be finite (the grid is "
                "clamped to the distribution's upper bound anyway)."
            )
        if not max_lr > min_lr:
            raise ValueError(
                f"The value of `max_lr` is {self.max_lr}, but must be `max_lr > min_lr` "
                f"(min_lr={self.min_lr})."
            )
        _check_positive_int("num_split", self.num_split, 2)
        min_delta = _check_finite("min_delta", self.min_delta)
        if not 0 < min_delta < 1:
            raise ValueError(
                f"The value of `min_delta` is {self.min_delta}, but must be `0 < min_delta < 1`."
            )
        power = _check_finite("power", self.power)
        if not 0 < power < math.inf:
            raise ValueError(f"The value of `power` is {self.power}, but must be `power > 0`.")
        if self.lr_delta is not None:
            lr_delta = _check_finite("lr_delta", self.lr_delta)
            if not 0 < lr_delta < math.inf:
                raise ValueError(
                    f"The value of `lr_delta` is {self.lr_delta}, but must be `lr_delta > 0` "
                    "or None."
                )
        _check_positive_int("exit_counter_threshold", self.exit_counter_threshold, 0)
        if self.relative_width is not None:
            relative_width = _check_finite("relative_width", self.relative_width)
            if not 0 < relative_width < math.inf:
                raise ValueError(
                    f"The value of `relative_width` is {self.relative_width}, but must be "
                    "`relative_width > 0` or None."
                )
        _check_positive_int("max_trials", self.max_trials, 1)
        _check_positive_int("max_retries", self.max_retries, 0)
        lower = _check_finite("lower_bound", self.lower_bound)
        upper = _check_finite("upper_bound", self.upper_bound)
        if not lower >= 0:
            raise ValueError(
                f"The value of `lower_bound` is {self.lower_bound}, but must be "
                "`lower_bound >= 0`."
            )
        if not upper > lower:
            raise ValueError(
                f"The value of `upper_bound` is {self.upper_bound}, but must be "
                f"`upper_bound > lower_bound` (lower_bound={self.lower_bound})."
            )
        if not (max(min_lr, lower) < min(max_lr, upper)):
            raise ValueError(
                f"The first grid [min_lr, max_lr] = [{self.min_lr}, {self.max_lr}] does not "
                f"overlap the allowed range [{self.lower_bound}, {self.upper_bound}] of the "
                "learning rate in more than one point; move `min_lr`/`max_lr` inside the "
                "distribution's bounds."
            )

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-serializable dict (``inf`` is written as :obj:`None`)."""
        d = dataclasses.asdict(self)
        if math.isinf(d["upper_bound"]):
            d["upper_bound"] = None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AutoHyperSearch:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(f"Unknown AutoHyperSearch settings: {sorted(unknown)}.")
        kwargs = dict(d)
        if kwargs.get("upper_bound", 0.0) is None:
            kwargs["upper_bound"] = math.inf
        return cls(**kwargs)

    def first_grid_bounds(self) -> tuple[float, float, bool]:
        """``(min_lr, max_lr)`` of the first grid clipped to the bounds, and whether it was."""
        lo = max(self.min_lr, self.lower_bound)
        hi = min(self.max_lr, self.upper_bound)
        return lo, hi, (lo != self.min_lr or hi != self.max_lr)


@dataclasses.dataclass(frozen=True)
class GridPoint:
    """A point of the search: the grid (``pass_id``), its ``index`` and the rate ``lr``."""

    pass_id: int
    index: int
    lr: float


@dataclasses.dataclass(frozen=True)
class AutoHyperEvaluation:
    """A measurement used by the search: ``Z`` at ``lr`` (point ``index`` of pass ``pass_id``).

    :attr:`AutoHyperResult.evaluations` lists them in order; plotted against ``lr`` (log axis)
    they are the response curve ``Z(lr)`` of the paper's Figure 1.

    Attributes:
        pass_id:
            The grid (pass) of the search, from 0; each grow, shrink or zoom starts a new one.
        index:
            The point's index in that grid.
        lr:
            The learning rate of the point.
        z:
            The knowledge-gain rank ``Z`` measured there (the mean over the trial's epochs).
    """

    pass_id: int
    index: int
    lr: float
    z: float


@dataclasses.dataclass(frozen=True)
class SearchEvent:
    """A rule that fired.

    Attributes:
        kind:
            The rule (see :class:`AutoHyperSearch`): ``"all-zero"``, ``"early-cross"``,
            ``"early-cross-blocked"``, ``"reach-100"``, ``"plateau"``, ``"end-reached"``,
            ``"skipped"``, ``"bound-reached"`` (``detail`` is ``"lower"`` or ``"upper"``), or
            ``"stop"`` (``detail`` is the stop reason, e.g. ``"exit-delta"``).
        n_trials:
            Number of evaluations consumed by the search when it fired.
        pass_id:
            The grid (pass) in which it fired.
        index:
            The grid index at which it fired, or :obj:`None` for grid-level events.
        lr:
            The rate at which it fired, if any.
        detail:
            A short free-form note (e.g. ``"upper"`` for a bound, the new grid for a zoom).
    """

    kind: str
    n_trials: int
    pass_id: int
    index: int | None
    lr: float | None
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class SearchState:
    """The state of the search after replaying the outcomes known so far.

    Attributes:
        grid:
            The current grid (pass ``pass_id``).
        pass_id:
            Number of re-grids so far (the id of the current grid).
        index:
            Index of the next point to evaluate in ``grid`` (meaningless once ``finished``).
        finished:
            Whether the search has stopped.
        converged:
            Whether it stopped with an answer (every stop reason except ``"max-trials"``).
        lr:
            The chosen learning rate (:obj:`None` unless ``converged``).
        reason:
            ``"running"`` or the stop reason: ``"plateau"``, ``"exit-delta"``,
            ``"relative-width"``, ``"upper-bound"`` or ``"max-trials"``.
        n_trials:
            Number of evaluations consumed (failed ones included).
        events:
            Every rule that fired, in order.
        evaluations:
            Every measurement used, in order.
        head_failures:
            Failed evaluations of the next point so far.
    """

    grid: tuple[float, ...]
    pass_id: int
    index: int
    finished: bool
    converged: bool
    lr: float | None
    reason: str
    n_trials: int
    events: tuple[SearchEvent, ...]
    evaluations: tuple[AutoHyperEvaluation, ...]
    head_failures: int
    # Internal loop variables, kept so that the search can be continued hypothetically.
    _min_lr: float = dataclasses.field(repr=False, default=0.0)
    _max_lr: float = dataclasses.field(repr=False, default=0.0)
    _hist: tuple[float, ...] = dataclasses.field(repr=False, default=())
    _exit_counter: int = dataclasses.field(repr=False, default=0)
    _first_run: bool = dataclasses.field(repr=False, default=True)
    _z_one_max: float = dataclasses.field(repr=False, default=0.0)

    @property
    def next_point(self) -> GridPoint | None:
        """The point the search evaluates next, or :obj:`None` once it has finished."""
        if self.finished:
            return None
        return GridPoint(self.pass_id, self.index, self.grid[self.index])

    @property
    def bounds_reached(self) -> tuple[str, ...]:
        """Which bounds (``"lower"``, ``"upper"``) the search has reached, in order."""
        out: list[str] = []
        for e in self.events:
            if e.kind == BOUND_REACHED and e.detail not in out:
                out.append(e.detail)
        return tuple(out)


PointOutcome = tuple[Literal["pending", "observed", "skipped"], float | None, int]


def point_outcome(attempts: Sequence[float | None], max_retries: int) -> PointOutcome:
    """Decide a grid point from its finished attempts, in trial order.

    Returns ``("observed", z, n_used)`` for the first measurement, ``("skipped", None, n_used)``
    once more than ``max_retries`` attempts failed before any measurement, and
    ``("pending", None, n_failed)`` otherwise. Attempts after the deciding one are ignored.
    """
    failures = 0
    for k, z in enumerate(attempts):
        if z is None:
            failures += 1
            if failures > max_retries:
                return "skipped", None, k + 1
        else:
            return "observed", z, k + 1
    return "pending", None, failures


def _geomspace(lo: float, hi: float, n: int) -> tuple[float, ...]:
    return tuple(float(v) for v in np.geomspace(lo, hi, n))


def _is_close(a: float, b: float) -> bool:
    return bool(np.isclose(np.float64(a), np.float64(b)))


class _Machine:
    """The mutable loop of the reference code, one decision at a time."""

    def __init__(self, search: AutoHyperSearch) -> None:
        self.s = search
        lo, hi, clipped = search.first_grid_bounds()
        self.min_lr = lo
        self.max_lr = hi
        self.grid = _geomspace(lo, hi, search.num_split)
        self.i = 0
        self.pass_id = 0
        self.hist: list[float] = []
        self.exit_counter = 0
        self.first_run = True
        self.z_one_max = 0.0
        self.n_trials = 0
        self.events: list[SearchEvent] = []
        self.evaluations: list[AutoHyperEvaluation] = []
        self.finished = False
        self.converged = False
        self.lr: float | None = None
        self.reason = RUNNING
        self.head_failures = 0
        if clipped:
            if lo != search.min_lr:
                self._event(BOUND_REACHED, None, None, "lower")
            if hi != search.max_lr:
                self._event(BOUND_REACHED, None, None, "upper")

    @classmethod
    def from_state(cls, search: AutoHyperSearch, state: SearchState) -> _Machine:
        m = cls.__new__(cls)
        m.s = search
        m.min_lr = state._min_lr
        m.max_lr = state._max_lr
        m.grid = state.grid
        m.i = state.index
        m.pass_id = state.pass_id
        m.hist = list(state._hist)
        m.exit_counter = state._exit_counter
        m.first_run = state._first_run
        m.z_one_max = state._z_one_max
        m.n_trials = state.n_trials
        m.events = list(state.events)
        m.evaluations = list(state.evaluations)
        m.finished = state.finished
        m.converged = state.converged
        m.lr = state.lr
        m.reason = state.reason
        m.head_failures = state.head_failures
        return m

    def snapshot(self) -> SearchState:
        return SearchState(
            grid=self.grid,
            pass_id=self.pass_id,
            index=self.i,
            finished=self.finished,
            converged=self.converged,
            lr=self.lr,
            reason=self.reason,
            n_trials=self.n_trials,
            events=tuple(self.events),
            evaluations=tuple(self.evaluations),
            head_failures=self.head_failures,
            _min_lr=self.min_lr,
            _max_lr=self.max_lr,
            _hist=tuple(self.hist),
            _exit_counter=self.exit_counter,
            _first_run=self.first_run,
            _z_one_max=self.z_one_max,
        )

    # -- helpers ---------------------------------------------------------------------------

    def _event(self, kind: str, index: int | None, lr: float | None, detail: str = "") -> None:
        self.events.append(SearchEvent(kind, self.n_trials, self.pass_id, index, lr, detail))

    def _regrid(self, lo: float, hi: float) -> None:
        self.min_lr, self.max_lr = lo, hi
        self.grid = _geomspace(lo, hi, self.s.num_split)
        self.pass_id += 1
        self.i = 0
        self.head_failures = 0

    def _finish(self, reason: str, lr: float | None) -> None:
        self.finished = True
        self.reason = reason
        self.converged = reason != MAX_TRIALS
        self.lr = lr if self.converged else None
        self._event(STOP, None, lr, reason)

    # -- the loop --------------------------------------------------------------------------

    def prepare(self) -> bool:
        """Run the checks at the top of the reference loop; False once the search stopped."""
        if self.finished:
            return False
        if self.i == len(self.grid):
            # 'end-reached': no plateau on this grid, move it up (hist is kept, as in the
            # reference).
            hi = 1.5 * self.grid[-1]
            if self.grid[-1] >= self.s.upper_bound:
                self._event(BOUND_REACHED, None, None, "upper")
                self._finish(UPPER_BOUND, self.s.upper_bound)
                return False
            lo = self.grid[-2]
            self._event(END_REACHED, None, None, f"[{lo:.6g}, {min(hi, self.s.upper_bound):.6g}]")
            if hi > self.s.upper_bound:
                hi = self.s.upper_bound
                self._event(BOUND_REACHED, None, None, "upper")
            self._regrid(lo, hi)
        if self.s.lr_delta is not None and abs(self.min_lr - self.max_lr) < self.s.lr_delta:
            self._finish(EXIT_DELTA, self.grid[-1])
            return False
        if (
            self.s.relative_width is not None
            and self.max_lr / self.min_lr < 1.0 + self.s.relative_width
        ):
            self._finish(RELATIVE_WIDTH, self.grid[-1])
            return False
        if self.n_trials >= self.s.max_trials:
            self._finish(MAX_TRIALS, None)
            return False
        return True

    def consume(self, attempts: Sequence[float | None]) -> bool:
        """Use the finished attempts at the current point; False if it is still pending."""
        kind, z, n_used = point_outcome(attempts, self.s.max_retries)
        if kind == "pending":
            self.head_failures = n_used
            return False
        for _ in range(n_used - 1):  # failures before the deciding attempt
            self.n_trials += 1
            if self.n_trials >= self.s.max_trials:
                self._finish(MAX_TRIALS, None)
                return True
        self.n_trials += 1
        self.head_failures = 0
        if kind == "skipped":
            self._event(SKIPPED, self.i, self.grid[self.i], f"{n_used} failures")
            self.i += 1
        else:
            assert z is not None
            self.observe(z)
        return True

    def observe(self, z: float) -> None:
        """Apply the reference rules to the measurement ``z`` at the current point."""
        s = self.s
        i = self.i
        lr = self.grid[i]
        self.evaluations.append(AutoHyperEvaluation(self.pass_id, i, lr, z))
        self.hist.append(z)
        zeta = float(np.prod(np.asarray(self.hist, dtype=np.float64))) ** s.power

        if _is_close(z, 1.0):
            # 'all-zero': the rate is far too small.
            self.z_one_max = max(self.z_one_max, lr)
            lo = self.min_lr * 5.0
            hi = self.max_lr if lo <= self.max_lr else 1.5 * lo
            if lo >= s.upper_bound:
                self._event(ALL_ZERO, i, lr)
                self._event(BOUND_REACHED, i, lr, "upper")
                self._finish(UPPER_BOUND, s.upper_bound)
                return
            if hi > s.upper_bound:
                hi = s.upper_bound
                self._event(ALL_ZERO, i, lr, f"[{lo:.6g}, {hi:.6g}]")
                self._event(BOUND_REACHED, i, lr, "upper")
            else:
                self._event(ALL_ZERO, i, lr, f"[{lo:.6g}, {hi:.6g}]")
            self.hist = []
            self._regrid(lo, hi)
            return

        if i == 0:
            if self.first_run and z < 0.5:
                # 'early-cross': the first grid starts above the knee.
                lo = self.min_lr / 10.0
                clamped = lo < s.lower_bound
                lo = max(lo, s.lower_bound)
                if lo <= self.z_one_max:
                    self._event(EARLY_CROSS_BLOCKED, i, lr, f"Z=1 at {self.z_one_max:.6g}")
                elif lo >= self.min_lr:
                    self._event(BOUND_REACHED, i, lr, "lower")
                else:
                    self._event(EARLY_CROSS, i, lr, f"[{lo:.6g}, {self.max_lr:.6g}]")
                    if clamped:
                        self._event(BOUND_REACHED, i, lr, "lower")
                    self.hist = []
                    self._regrid(lo, self.max_lr)
                    return
        else:
            self.first_run = False
            if _is_close(z, 0.0):
                # 'reach-100': every layer learns; zoom below this point.
                lo = self.grid[max(i - 2, 0)]
                hi = self.grid[i - 1] if self.grid[i - 1] != lo else (lo + self.grid[i]) / 2.0
                self._event(REACH_100, i, lr, f"[{lo:.6g}, {hi:.6g}]")
                self.hist = []
                self._regrid(lo, hi)
                return
            if zeta < s.min_delta:
                # 'plateau': zoom onto the last two intervals.
                self.exit_counter += 1
                lo, hi = self.grid[max(i - 2, 0)], self.grid[i]
                self._event(PLATEAU, i, lr, f"[{lo:.6g}, {hi:.6g}] #{self.exit_counter}")
                self.hist = []
                self._regrid(lo, hi)
                if self.exit_counter > s.exit_counter_threshold:
                    self._finish(PLATEAU, self.grid[-1])
                return
        self.i += 1


Lookup = Callable[[GridPoint], Sequence[float | None]]


def _as_lookup(
    outcomes: Mapping[tuple[int, int], Sequence[Attempt]] | Lookup,
) -> Lookup:
    if callable(outcomes):
        return outcomes
    table = outcomes

    def lookup(point: GridPoint) -> list[float | None]:
        return [
            z
            for lr, z in table.get((point.pass_id, point.index), ())
            if math.isclose(lr, point.lr, rel_tol=_LR_RTOL, abs_tol=0.0)
        ]

    return lookup


def replay(
    search: AutoHyperSearch,
    outcomes: Mapping[tuple[int, int], Sequence[Attempt]] | Lookup,
) -> SearchState:
    """Re-run the search from the start on the outcomes known so far.

    Args:
        search:
            The settings.
        outcomes:
            For each grid point ``(pass_id, index)``, its finished attempts in trial order, each
            ``(lr, z)`` with ``z=None`` for a failed attempt. Attempts whose ``lr`` differs from
            the rate the search has at that point (e.g. speculative evaluations of a grid that
            was abandoned) are ignored. Alternatively, a function of a :class:`GridPoint`
            returning the list of ``z`` (``None`` for failures).

    Returns:
        The state at the first point whose outcome is not known yet, or the final state.
    """
    lookup = _as_lookup(outcomes)
    m = _Machine(search)
    while m.prepare():
        point = GridPoint(m.pass_id, m.i, m.grid[m.i])
        if not m.consume(lookup(point)):
            break
    return m.snapshot()


def upcoming(search: AutoHyperSearch, state: SearchState) -> Iterator[GridPoint]:
    """The points the search would evaluate from ``state`` if no rule fired on them.

    The first point is ``state.next_point``. The sequence continues through the current grid
    and, past its end, through the grids of the ``"end-reached"`` moves, and stops where such a
    hypothetical walk would stop (a width test, the upper bound or ``max_trials``). The sampler
    hands these points to concurrent workers; the measurements are used only if the search
    actually gets there (the later points are speculative).
    """
    m = _Machine.from_state(search, state)
    while m.prepare():
        yield GridPoint(m.pass_id, m.i, m.grid[m.i])
        m.n_trials += 1
        m.i += 1


def simulate(
    search: AutoHyperSearch,
    z_of_lr: Callable[[float], float | None],
) -> SearchState:
    """Run the whole search sequentially with the response ``z_of_lr`` (``None``: failure)."""
    m = _Machine(search)
    while m.prepare():
        z = z_of_lr(m.grid[m.i])
        attempts: list[float | None] = [z]
        while z is None and point_outcome(attempts, search.max_retries)[0] == "pending":
            z = z_of_lr(m.grid[m.i])
            attempts.append(z)
        m.consume(attempts)
    return m.snapshot()
