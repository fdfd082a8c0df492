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


def _rise(history: Sequence[float], window: int, lead: float | None) -> float:
    rise = trend_delta(history, window)
    if lead is None:
        return rise
    if math.isnan(lead):
        raise ValueError(f"The value of `lead` is {lead}, but must be a number or None.")
    return min(rise, float(lead))


def keep_probability(
    history: Sequence[float],
    *,
    window: int = 4,
    temperature: float = 1.0,
    offset: float = 0.01,
    metric_scale: float = 1.0,
    lead: float | None = None,
) -> float:
    """Return the probability that :func:`check_accuracy_trend` keeps the current rate.

    It is ``min(1, exp(metric_scale * (y_tau - y_{tau - window}) / temperature - offset))``,
    and 0 for ``offset = inf``. With ``lead`` (the ``"compare"`` variant, see
    :func:`check_accuracy_trend`), the rise ``y_tau - y_{tau - window}`` is replaced by
    ``min(rise, lead)``.

    Args:
        history: The metric after each epoch so far, in the units of the ``evaluate`` function.
        window: The window ``Delta >= 1`` in epochs (paper: 4).
        temperature: The temperature ``T > 0`` (paper: 1).
        offset: The offset ``b >= 0`` (paper: 0.01).
        metric_scale: The factor that turns the metric into the units the constants assume.
        lead: The incumbent's metric minus the proposal's after the current epoch, in the
            units of ``history``; :obj:`None` (the paper's test) ignores the candidates.
    """
    check_trend_args(window, temperature, offset, metric_scale)
    if math.isinf(offset):
        return 0.0
    exponent = metric_scale * _rise(history, window, lead) / temperature - offset
    return 1.0 if exponent >= 0.0 else math.exp(exponent)


def check_accuracy_trend(
    history: Sequence[float],
    *,
    window: int = 4,
    temperature: float = 1.0,
    offset: float = 0.01,
    metric_scale: float = 1.0,
    lead: float | None = None,
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

    **The "compare" variant (not in the paper).** The paper's test looks only at the kept
    weights' history (Algorithm 4, line 9 passes ``w_1, ..., w_{t-1}``): the two candidates
    of the current epoch feed the GP but not the decision. Given ``lead``, the incumbent's
    metric minus the proposal's after the current epoch (both trained from the same weights),
    the rise is replaced by ``min(rise, lead)``: the rate is kept with probability
    ``min(1, exp(metric_scale * min(rise, lead) / T - b))``, so as in the paper while the
    incumbent also beats the proposal, and with at most ``exp(-metric_scale * d / T - b)``
    when the proposal beat it by ``d``. The variant only adds switches: it never keeps a rate
    that the paper's test, with the same ``u``, would drop. It addresses a failure of the
    paper's test on short epochs: a rate that is too small still gains a little every epoch,
    so its trend stays positive and it is never dropped, however much faster the proposals
    learn (see ``benchmarks/results/hyperdyn_notes.md``).

    Example:

        .. testcode::

            from optuna_ext.hyperdyn import check_accuracy_trend

            rising = [0.50, 0.60, 0.70, 0.75, 0.80]
            assert check_accuracy_trend(rising, metric_scale=100.0, u=0.999)
            falling = [0.80, 0.79, 0.78, 0.77, 0.70]
            assert not check_accuracy_trend(falling, metric_scale=100.0, u=0.5)
            # "compare": the proposal reached 3 points more than the incumbent this epoch.
            assert not check_accuracy_trend(rising, metric_scale=100.0, lead=-0.03, u=0.5)

    Args:
        history: The metric after each epoch ``y_0, ..., y_tau`` (at least one entry).
        window: The window ``Delta >= 1`` in epochs.
        temperature: The temperature ``T > 0``.
        offset: The offset ``b >= 0``, or ``math.inf``.
        metric_scale: The factor that turns the metric into the units of ``T`` and ``b``.
        lead: The incumbent's metric minus the proposal's after the current epoch (the
            ``"compare"`` variant above); :obj:`None` is the paper's test.
        u: The uniform draw, in ``[0, 1)``.
    """
    if not 0.0 <= u <= 1.0:
        raise ValueError(f"The value of `u` is {u}, but must be `0 <= u <= 1`.")
    check_trend_args(window, temperature, offset, metric_scale)
    if math.isinf(offset):
        return False
    exponent = metric_scale * _rise(history, window, lead) / temperature - offset
    if exponent > 700.0:
        return True
    return math.exp(exponent) > u
