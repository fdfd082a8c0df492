"""Population-based training's exploit and explore steps as pure functions (no Optuna import).

The quantile arithmetic and the explore rules follow Ray Tune's ``PopulationBasedTraining``
(``_quantiles`` and ``_explore`` in ``ray/tune/schedulers/pbt.py``), which implements Jaderberg
et al., "Population Based Training of Neural Networks" (arXiv 1711.09846), with these
documented differences:

* ``quantile_fraction = 0``: Ray's ``trials[-0:]`` makes *every* trial the upper quantile. Here
  both quantiles are empty, so no member is exploited (each member keeps its own weights and
  hyper-parameters: parallel random search with training).
* ``ceil(n * q)`` is taken after rounding ``n * q`` to 9 decimals, so that ``10 * 0.3`` gives 3,
  not the 4 of ``ceil(3.0000000000000004)``.
* Explored values never leave their distribution: products are clipped to ``[low, high]`` and
  rounded to the step grid (Ray lets them drift out of range, ray#11936).
* An integer (or stepped float) perturbation that rounds back to the old value moves one step in
  the direction of the factor instead (Ray's ``int(1 * 1.2)`` keeps 1 forever).
* A categorical shift at either end of the choices moves inward (Ray clamps the index, so a
  shift there keeps the value).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
import math
from typing import Any
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    import numpy as np


KEPT = "kept"
RESAMPLED = "resampled"
PROPOSED = "proposed by GP-UCB"
CLIPPED_SUFFIX = " (clipped)"


@dataclass(frozen=True)
class NumericSpec:
    """A numeric parameter's range: Optuna's ``FloatDistribution`` or ``IntDistribution``.

    Args:
        low:
            The lower bound (included).
        high:
            The upper bound (included; on the step grid).
        log:
            Whether the parameter is sampled on a log scale (then ``low > 0``).
        step:
            The grid step, or :obj:`None` for a continuous float.
        is_int:
            Whether the values are integers.
    """

    low: float
    high: float
    log: bool = False
    step: float | None = None
    is_int: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low <= self.high):
            raise ValueError(
                f"The values of `low` and `high` are {self.low} and {self.high}, but must be "
                "finite with `low <= high`."
            )
        if self.log and self.low <= 0:
            raise ValueError(f"The value of `low` is {self.low}, but must be `low > 0` for log.")
        if self.step is not None and not self.step > 0:
            raise ValueError(f"The value of `step` is {self.step}, but must be `step > 0`.")


@dataclass(frozen=True)
class CategoricalSpec:
    """A categorical parameter's choices, in order (a shift moves to a neighbour).

    Args:
        choices:
            The choices.
    """

    choices: tuple[Any, ...]

    def __post_init__(self) -> None:
        if len(self.choices) == 0:
            raise ValueError("The value of `choices` is empty, but must hold at least one choice.")


ParamSpec = NumericSpec | CategoricalSpec
"""A parameter's distribution, as the pure functions of this module take it."""


def quantile_count(n: int, fraction: float) -> int:
    """The number of members in each quantile of ``n`` ranked members (Ray's ``q_n``).

    ``ceil(n * fraction)``, capped at ``n // 2`` so that the quantiles never overlap; 0 when
    ``n <= 1`` or ``fraction == 0``.

    Example:

        .. testcode::

            from optuna_ext.samplers._pbt._explore import quantile_count

            assert quantile_count(8, 0.25) == 2
            assert quantile_count(5, 0.25) == 2  # ceil(1.25)
            assert quantile_count(3, 0.5) == 1  # capped at 3 // 2

    Args:
        n:
            The number of ranked members, ``>= 0``.
        fraction:
            The quantile fraction, in ``[0, 0.5]``.
    """
    if n < 0:
        raise ValueError(f"The value of `n` is {n}, but must be `n >= 0`.")
    if not 0.0 <= fraction <= 0.5:
        raise ValueError(
            f"The value of `quantile_fraction` is {fraction}, but must be "
            "`0 <= quantile_fraction <= 0.5`."
        )
    if n <= 1 or fraction == 0.0:
        return 0
    return min(math.ceil(round(n * fraction, 9)), n // 2)


def quantiles(scores: Sequence[float], fraction: float) -> tuple[list[int], list[int]]:
    """Split ranked members into the lower and upper quantiles (Ray's ``_quantiles``).

    Members are sorted by score ascending (higher is better; ties keep their index order),
    then the lower quantile is the first ``q_n`` and the upper the last ``q_n`` members, with
    ``q_n = quantile_count(len(scores), fraction)``. A NaN score ranks below every number.

    Example:

        .. testcode::

            from optuna_ext.samplers._pbt._explore import quantiles

            lower, upper = quantiles([0.5, 0.9, 0.1, 0.7], 0.25)
            assert lower == [2] and upper == [1]

    Args:
        scores:
            One score per member, higher is better.
        fraction:
            The quantile fraction, in ``[0, 0.5]``.

    Returns:
        The indices into ``scores`` of the lower quantile (worst first) and of the upper
        quantile (best last).
    """
    q_n = quantile_count(len(scores), fraction)

    def key(i: int) -> tuple[int, float, int]:
        s = scores[i]
        return (0, 0.0, i) if math.isnan(s) else (1, s, i)

    order = sorted(range(len(scores)), key=key)
    if q_n == 0:
        return [], []
    return order[:q_n], order[-q_n:]


def _grid(value: float, spec: NumericSpec) -> float:
    """Round ``value`` to the spec's step grid (from ``low``) and clip it into ``[low, high]``."""
    value = min(max(value, spec.low), spec.high)
    step = spec.step if spec.step is not None else (1.0 if spec.is_int else None)
    if step is not None:
        k = round((value - spec.low) / step)
        value = spec.low + k * step
        if value > spec.high + 1e-12 * max(1.0, abs(spec.high)):
            value -= step
        value = min(max(value, spec.low), spec.high)
    if spec.is_int:
        return int(round(value))
    return float(value)


def clip(value: float, spec: NumericSpec) -> float:
    """Return ``value`` clipped into the spec's range and rounded to its grid.

    Example:

        .. testcode::

            from optuna_ext.samplers._pbt._explore import NumericSpec
            from optuna_ext.samplers._pbt._explore import clip

            assert clip(1.7, NumericSpec(0, 1)) == 1.0
            assert clip(4.4, NumericSpec(0, 10, is_int=True, step=2)) == 4

    Args:
        value:
            Any finite number.
        spec:
            The range.
    """
    if not math.isfinite(value):
        raise ValueError(f"The value of `value` is {value}, but must be finite.")
    return _grid(float(value), spec)


def contains(value: Any, spec: ParamSpec) -> bool:
    """Whether ``value`` lies in the spec (in range and on the grid, or one of the choices)."""
    if isinstance(spec, CategoricalSpec):
        return any(_same_choice(value, c) for c in spec.choices)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if not (math.isfinite(value) and spec.low <= value <= spec.high):
        return False
    step = spec.step if spec.step is not None else (1.0 if spec.is_int else None)
    if step is None:
        return True
    k = (value - spec.low) / step
    return abs(k - round(k)) < 1e-8


def _same_choice(a: Any, b: Any) -> bool:
    # ``True == 1`` in Python; a choice matches only a value of the same type.
    return type(a) is type(b) and a == b


def sample(spec: ParamSpec, rng: np.random.RandomState) -> Any:
    """Draw a value from the spec's distribution (uniform, log-uniform, or a uniform choice).

    Args:
        spec:
            The parameter's range or choices.
        rng:
            The random state.
    """
    if isinstance(spec, CategoricalSpec):
        return spec.choices[int(rng.randint(len(spec.choices)))]
    if spec.is_int or spec.step is not None:
        step = spec.step if spec.step is not None else 1.0
        if spec.log:
            # Log-uniform over [low - step/2, high + step/2], then rounded, as Optuna's
            # RandomSampler does (a log int has step 1 and low >= 1, so the bounds are > 0).
            lo = math.log(max(spec.low - 0.5 * step, 0.5 * spec.low))
            hi = math.log(spec.high + 0.5 * step)
            return _grid(math.exp(rng.uniform(lo, hi)), spec)
        n = int(round((spec.high - spec.low) / step)) + 1
        return _grid(spec.low + int(rng.randint(n)) * step, spec)
    if spec.log:
        return clip(math.exp(rng.uniform(math.log(spec.low), math.log(spec.high))), spec)
    return clip(rng.uniform(spec.low, spec.high), spec)


def _perturb(
    value: float, spec: NumericSpec, factor: float
) -> tuple[float, bool]:  # (new value, clipped)
    raw = value * factor
    new = _grid(raw, spec)
    clipped = not (spec.low <= raw <= spec.high)
    discrete = spec.is_int or spec.step is not None
    if discrete and new == value and factor != 1.0 and raw != value:
        step = spec.step if spec.step is not None else 1.0
        direction = 1.0 if raw > value else -1.0
        moved = _grid(value + direction * step, spec)
        if moved != value:
            new = moved
        else:
            clipped = True
    return new, clipped


def explore(
    value: Any,
    spec: ParamSpec,
    rng: np.random.RandomState,
    *,
    resample_probability: float = 0.25,
    perturbation_factors: Sequence[float] = (1.2, 0.8),
) -> tuple[Any, str]:
    """Perturb one hyper-parameter value (PBT's explore step); the result stays in ``spec``.

    Numeric values are resampled from the distribution with probability
    ``resample_probability`` (and always when the old value lies outside the range), else
    multiplied by a uniform choice of ``perturbation_factors``, clipped into ``[low, high]``
    and rounded to the grid; integers stay integers. A discrete product that rounds back to
    the old value moves one step in the factor's direction. Categorical values are resampled
    with that probability (or when the old value is not a choice), else shifted to a
    neighbouring choice (inward at either end).

    Example:

        .. testcode::

            import numpy as np
            from optuna_ext.samplers._pbt._explore import NumericSpec
            from optuna_ext.samplers._pbt._explore import explore

            rng = np.random.RandomState(0)
            value, op = explore(0.9, NumericSpec(0.0, 1.0), rng, resample_probability=0.0)
            assert 0.0 <= value <= 1.0 and op.startswith("multiplied by")

    Args:
        value:
            The old value.
        spec:
            The parameter's range or choices.
        rng:
            The random state.
        resample_probability:
            The probability of resampling instead of perturbing, in ``[0, 1]``.
        perturbation_factors:
            The factors to choose from, each ``> 0``.

    Returns:
        The new value and what was done to it: ``"resampled"``, ``"multiplied by F"`` (with
        ``" (clipped)"`` when the product left the range), ``"shifted +1"``/``"shifted -1"`` or
        ``"kept"`` (a categorical with a single choice).
    """
    if isinstance(spec, CategoricalSpec):
        n = len(spec.choices)
        index = next((i for i, c in enumerate(spec.choices) if _same_choice(value, c)), None)
        if index is None or rng.uniform() < resample_probability:
            return sample(spec, rng), RESAMPLED
        if n == 1:
            return spec.choices[0], KEPT
        shift = 1 if rng.uniform() < 0.5 else -1
        if not 0 <= index + shift < n:
            shift = -shift
        return spec.choices[index + shift], f"shifted {shift:+d}"
    if not contains(value, spec) or rng.uniform() < resample_probability:
        return sample(spec, rng), RESAMPLED
    factor = float(perturbation_factors[int(rng.randint(len(perturbation_factors)))])
    new, clipped = _perturb(float(value), spec, factor)
    return new, f"multiplied by {factor:g}" + (CLIPPED_SUFFIX if clipped else "")


def to_unit(value: float, spec: NumericSpec) -> float:
    """Map a value of the spec to ``[0, 1]`` (on the log scale for a log spec)."""
    if spec.high == spec.low:
        return 0.5
    if spec.log:
        return (math.log(value) - math.log(spec.low)) / (math.log(spec.high) - math.log(spec.low))
    return (value - spec.low) / (spec.high - spec.low)


def from_unit(u: float, spec: NumericSpec) -> float:
    """Map ``u`` in ``[0, 1]`` back to the spec (the inverse of :func:`to_unit`), on the grid."""
    u = min(max(float(u), 0.0), 1.0)
    if spec.log:
        raw = math.exp(math.log(spec.low) + u * (math.log(spec.high) - math.log(spec.low)))
    else:
        raw = spec.low + u * (spec.high - spec.low)
    return clip(raw, spec)
