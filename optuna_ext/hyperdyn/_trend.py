"""Hyperdyn's wait-and-watch test (paper 002, Algorithm 5, Check-Accuracy-Trend), pure maths."""

from __future__ import annotations

from collections.abc import Sequence
import math


def check_trend_args(window: int, temperature: float, offset: float, metric_scale: float) -> None:
    """Raise :class:`ValueError` naming the first argument of the test that is out of range."""
    if isinstance(window, bool) or not isinstance(window, int):
        raise ValueError(f"The value of `window` is {window!r}, but must be an int `>= 1`.")
    if window < 1:
        raise ValueError(f"The value of `window` is {window}, but must be `window >= 1`.")
    if not (math.isfinite(temperature) and temperature > 0.0):
        raise ValueError(
            f"The value of `temperature` is {temperature}, but must be finite and "
            "`temperature > 0`."
        )
    if math.isnan(offset) or offset < 0.0:
        raise ValueError(
            f"The value of `offset` is {offset}, but must be `offset >= 0` (`math.inf` always "
            "switches)."
        )
    if not (math.isfinite(metric_scale) and metric_scale > 0.0):
        raise ValueError(
            f"The value of `metric_scale` is {metric_scale}, but must be finite and "
            "`metric_scale > 0`."
        )


def trend_delta(history: Sequence[float], window: int) -> float:
    """Return ``y_tau - y_{tau - window}`` over the metric history ``y_0, ..., y_tau``.

    While the history holds ``window`` entries or fewer, the oldest entry stands in for
    ``y_{tau - window}`` (the paper does not say what happens before ``window`` epochs).
    """
    if len(history) == 0:
        raise ValueError("The metric history is empty: the test needs at least one epoch.")
    reference = history[max(0, len(history) - 1 - window)]
    for name, value in (("latest", history[-1]), ("reference", reference)):
        if not math.isfinite(float(value)):
            raise ValueError(
                f"The {name} entry of the metric history is {value}, but must be finite "
                "(a diverged run has no trend to test)."
            )
    return float(history[-1]) - float(reference)


def keep_probability(
    history: Sequence[float],
    *,
    window: int = 4,
    temperature: float = 1.0,
    offset: float = 0.01,
    metric_scale: float = 1.0,
) -> float:
    """Return the probability that :func:`check_accuracy_trend` keeps the current rate.

    It is ``min(1, exp(metric_scale * (y_tau - y_{tau - window}) / temperature - offset))``,
    and 0 for ``offset = inf``.

    Args:
        history: The metric after each epoch so far, in the units of the ``evaluate`` function.
        window: The window ``Delta >= 1`` in epochs (paper: 4).
        temperature: The temperature ``T > 0`` (paper: 1).
        offset: The offset ``b >= 0`` (paper: 0.01).
        metric_scale: The factor that turns the metric into the units the constants assume.
    """
    check_trend_args(window, temperature, offset, metric_scale)
    if math.isinf(offset):
        return 0.0
    exponent = metric_scale * trend_delta(history, window) / temperature - offset
    return 1.0 if exponent >= 0.0 else math.exp(exponent)


def check_accuracy_trend(
    history: Sequence[float],
    *,
    window: int = 4,
    temperature: float = 1.0,
    offset: float = 0.01,
    metric_scale: float = 1.0,
    u: float,
) -> bool:
    """Return whether to keep the current hyper-parameters (Check-Accuracy-Trend).

    Paper 002, Algorithm 5: with ``y_l`` the validation accuracy of the kept weights after
    epoch ``l`` and ``u ~ U[0, 1]``, keep when ``exp((y_tau - y_{tau - Delta}) / T - b) > u``.
    So the rate is kept with probability 1 while the accuracy rose by at least ``b * T`` over
    the window, and with probability ``exp(rise / T - b)`` otherwise; ``b = inf`` (the
    paper's greedy epoch-based BO) always switches. The paper's constants ``T = 1``,
    ``b = 0.01`` assume the accuracy in percentage points: with an ``evaluate`` that returns
    fractions, pass ``metric_scale=100``.

    Example:

        .. testcode::

            from optuna_ext.hyperdyn import check_accuracy_trend

            rising = [0.50, 0.60, 0.70, 0.75, 0.80]
            assert check_accuracy_trend(rising, metric_scale=100.0, u=0.999)
            falling = [0.80, 0.79, 0.78, 0.77, 0.70]
            assert not check_accuracy_trend(falling, metric_scale=100.0, u=0.5)

    Args:
        history: The metric after each epoch ``y_0, ..., y_tau`` (at least one entry).
        window: The window ``Delta >= 1`` in epochs.
        temperature: The temperature ``T > 0``.
        offset: The offset ``b >= 0``, or ``math.inf``.
        metric_scale: The factor that turns the metric into the units of ``T`` and ``b``.
        u: The uniform draw, in ``[0, 1)``.
    """
    if not 0.0 <= u <= 1.0:
        raise ValueError(f"The value of `u` is {u}, but must be `0 <= u <= 1`.")
    check_trend_args(window, temperature, offset, metric_scale)
    if math.isinf(offset):
        return False
    exponent = metric_scale * trend_delta(history, window) / temperature - offset
    if exponent > 700.0:
        return True
    return math.exp(exponent) > u
