"""Smith's learning-rate range test ("Cyclical Learning Rates for Training Neural Networks", 2017).

Train for a few hundred steps while the rate grows exponentially from ``min_lr`` to ``max_lr``,
record the loss after every step, smooth it, and read a good initial rate off the curve: where
the loss falls fastest (the fastai "LR finder" rule), or a tenth of the rate at its minimum.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Sequence
from dataclasses import dataclass
import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset


if TYPE_CHECKING:
    from optuna_ext.tasks._data import DatasetSplit


RULES = ("steepest", "min_div_10")
"""The rules of the suggested rate (see :meth:`LRRangeTestResult.suggest`)."""

_HYPERGRADIENT_NAMES = ("sgd_hd", "adam_hd")


_SKIP_START = 0.1
"""``"steepest"`` ignores this fraction of the first finite points of the sweep."""

_SKIP_END = 0.05
"""``"steepest"`` ignores this fraction of the last finite points of the sweep."""

_MIN_DROP = 0.05
"""A clear descent: the smoothed loss falls by this fraction of its value at the window's start."""

_STEEPEST = "steepest"
_MIN_DIV_10 = "min_div_10"
_FALLBACK_MIN_DIV_10 = "min_div_10 (fallback: no clear descent)"
_FALLBACK_SMALLEST = "smallest rate (fallback: no clear descent, min_div_10 below it)"
_NO_FINITE_LOSS = "smallest rate (no finite loss)"
SUGGESTED_BY = (_STEEPEST, _MIN_DIV_10, _FALLBACK_MIN_DIV_10, _FALLBACK_SMALLEST, _NO_FINITE_LOSS)
"""What can produce a suggestion (see :attr:`LRRangeTestResult.suggested_by`)."""


def _suggest(lrs: Sequence[float], smoothed: Sequence[float], rule: str) -> tuple[float, str]:
    """The suggested rate of ``rule`` and what produced it (one of :data:`SUGGESTED_BY`)."""
    if rule not in RULES:
        raise ValueError(f"The value of `rule` is {rule!r}, but must be one of {RULES}.")
    n = 0
    while n < len(smoothed) and math.isfinite(smoothed[n]):
        n += 1  # the finite prefix: a non-finite loss ends the test
    if n == 0:
        return float(lrs[0]), _NO_FINITE_LOSS
    values = np.asarray(smoothed[:n], dtype=np.float64)
    min_div_10 = float(lrs[int(np.argmin(values))]) / 10.0
    if rule == "min_div_10":
        return min_div_10, _MIN_DIV_10
    # The window: the first points are left out (the bias-corrected average of the first steps
    # is that of one or two batches, whose noise would read as the steepest slope), and so are
    # the last ones (the start of the divergence).
    start, stop = int(n * _SKIP_START), n - int(n * _SKIP_END)
    window = values[start:stop]
    best = int(np.argmin(window)) if len(window) else 0
    drop = window[0] - window[best] if len(window) else 0.0
    if len(window) < 3 or best == 0 or not drop > _MIN_DROP * abs(window[0]):
        # No clear descent: a tenth of the rate at the minimum, but no rate below those tested.
        if min_div_10 < lrs[0]:
            return float(lrs[0]), _FALLBACK_SMALLEST
        return min_div_10, _FALLBACK_MIN_DIV_10
    # The steepest descent of the smoothed loss against log(lr) (central differences inside
    # the window), looked for up to the window's minimum: past the minimum the loss rises, and
    # a dip there is noise, not a good rate.
    log_lrs = np.log(np.asarray(lrs[start:stop], dtype=np.float64))
    slopes = np.gradient(window, log_lrs)
    return float(lrs[start + int(np.argmin(slopes[: best + 1]))]), _STEEPEST


@dataclass(frozen=True)
class LRRangeTestResult:
    """What :func:`lr_range_test` measured.

    Example:

        .. testcode::

            from optuna_ext.optim import LRRangeTestResult

            result = LRRangeTestResult(
                lrs=(0.001, 0.01, 0.1, 1.0),
                losses=(1.0, 0.9, 0.3, 5.0),
                smoothed_losses=(1.0, 0.9, 0.3, 5.0),
                suggested_lr=0.01,
                rule="steepest",
                diverged=True,
                num_steps=10,
                suggested_by="steepest",
            )
            print(result.suggest("min_div_10"), result.stopped_early)

        .. testoutput::

            0.01 True

    Args:
        lrs:
            The rate of each step taken, increasing exponentially.
        losses:
            The training loss right after each step (measured on the next batch, before the
            next step), so ``losses[i]`` is the loss reached with ``lrs[i]``.
        smoothed_losses:
            The exponentially smoothed, bias-corrected ``losses``.
        suggested_lr:
            The rate the ``rule`` reads off the smoothed curve.
        rule:
            The rule of ``suggested_lr``, one of :data:`RULES`.
        diverged:
            Whether the test stopped because the loss diverged (a non-finite loss, or a
            smoothed loss above ``divergence_factor`` times the lowest so far).
        num_steps:
            The number of steps asked for; fewer were taken when the test stopped early.
        suggested_by:
            What produced ``suggested_lr``, one of :data:`SUGGESTED_BY`: the ``rule`` itself
            (``"steepest"`` or ``"min_div_10"``), or a fallback of ``"steepest"`` when the
            curve shows no clear descent (see :meth:`suggest`); empty when not recorded (a
            result built by hand).
    """

    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    smoothed_losses: tuple[float, ...]
    suggested_lr: float
    rule: str
    diverged: bool
    num_steps: int
    suggested_by: str = ""

    def __post_init__(self) -> None:
        n = len(self.lrs)
        if n == 0:
            raise ValueError("The value of `lrs` is empty, but must hold at least one rate.")
        if len(self.losses) != n or len(self.smoothed_losses) != n:
            raise ValueError(
                f"The lengths of `lrs`, `losses` and `smoothed_losses` are {n}, "
                f"{len(self.losses)} and {len(self.smoothed_losses)}, but must be equal (one "
                "entry per step)."
            )
        rates_ok = all(_is_real(lr) and math.isfinite(lr) and lr > 0.0 for lr in self.lrs)
        if not (rates_ok and _strictly_increasing(self.lrs)):
            raise ValueError(
                f"The value of `lrs` is {self.lrs}, but must be finite rates `> 0` that "
                "strictly increase."
            )
        if self.rule not in RULES:
            raise ValueError(f"The value of `rule` is {self.rule!r}, but must be one of {RULES}.")
        if not (_is_int(self.num_steps) and self.num_steps >= n):
            raise ValueError(
                f"The value of `num_steps` is {self.num_steps!r}, but must be an int `>= "
                f"len(lrs)` ({n})."
            )

    @property
    def stopped_early(self) -> bool:
        """Whether the test stopped before ``num_steps`` steps (the loss diverged)."""
        return len(self.lrs) < self.num_steps

    def suggest(self, rule: str = "steepest") -> float:
        """Read a rate off the smoothed loss curve by ``rule``.

        Non-finite losses at the end of a diverged test are left out first (the finite prefix
        of ``n`` points is used).

        ``"min_div_10"``: a tenth of the rate at the smoothed minimum (the rule of thumb of
        Smith and of fastai's first LR finder).

        ``"steepest"``: the rate where the smoothed loss falls fastest, the most negative
        (central-difference) derivative of the smoothed loss with respect to ``log(lr)``. It is
        looked for in a window that leaves out the first 10% and the last 5% of the ``n``
        points (rounded down, so nothing is left out of a curve of fewer than 10 points): the
        bias-corrected average of the first steps is the average of one or two batches, and
        the noise of one batch against the small step of ``log(lr)`` of a long sweep would
        read as the steepest slope, and the last points are the start of the divergence.
        Inside the window it is looked for from its start up to the window's minimum (past
        the minimum the loss rises, and a dip there is noise, not a good rate). When the
        window shows no clear descent (fewer than 3 points, its minimum at its first point,
        or a fall of the smoothed loss from the window's first point to its minimum of no
        more than 5% of the first value) it falls back to ``"min_div_10"``, but never to a
        rate below the smallest one tested (when the minimum is at the smallest rate, that
        rate). :meth:`explain` says which of these produced the rate.

        Example:

            .. testcode::

                from optuna_ext.optim import LRRangeTestResult

                result = LRRangeTestResult(
                    lrs=(0.001, 0.01, 0.1, 1.0),
                    losses=(1.0, 0.9, 0.3, 5.0),
                    smoothed_losses=(1.0, 0.9, 0.3, 5.0),
                    suggested_lr=0.01,
                    rule="steepest",
                    diverged=True,
                    num_steps=4,
                    suggested_by="steepest",
                )
                print(result.suggest("steepest"), result.explain("steepest"))

            .. testoutput::

                0.01 steepest

        Args:
            rule:
                One of :data:`RULES`.
        """
        return _suggest(self.lrs, self.smoothed_losses, rule)[0]

    def explain(self, rule: str = "steepest") -> str:
        """What produces :meth:`suggest`'s rate for ``rule``, one of :data:`SUGGESTED_BY`.

        Example:

            .. testcode::

                from optuna_ext.optim import LRRangeTestResult

                flat = (0.7, 0.7, 0.7, 0.7, 0.7)
                result = LRRangeTestResult(
                    lrs=(1e-4, 1e-3, 1e-2, 1e-1, 1.0),
                    losses=flat,
                    smoothed_losses=flat,
                    suggested_lr=1e-4,
                    rule="steepest",
                    diverged=False,
                    num_steps=5,
                )
                print(result.suggest(), result.explain())

            .. testoutput::

                0.0001 smallest rate (fallback: no clear descent, min_div_10 below it)

        Args:
            rule:
                One of :data:`RULES`.
        """
        return _suggest(self.lrs, self.smoothed_losses, rule)[1]


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _strictly_increasing(values: Sequence[float]) -> bool:
    return all(values[i] < values[i + 1] for i in range(len(values) - 1))


def _check_positive_finite(name: str, value: object) -> float:
    if not _is_real(value):
        raise TypeError(f"The value of `{name}` is {value!r}, but must be a float.")
    assert isinstance(value, (int, float))
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"The value of `{name}` is {value}, but must be finite and `{name} > 0`.")
    return float(value)


def _cycle(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Go over ``batches`` again and again (one pass per epoch)."""
    n_batches = 0
    while True:
        empty = True
        for batch in batches:
            empty = False
            n_batches += 1
            yield batch
        if empty and n_batches == 0:
            raise ValueError("The data yielded no batch.")
        if empty:
            raise ValueError(
                f"The data yielded {n_batches} batches and then none when gone over again: it "
                "is a one-pass iterator (a generator or `iter(...)`), which the test cannot "
                "cycle through (it needs `num_steps + 1` batches: the loss after each step is "
                "measured on the next batch). Pass a list of batches, a DataLoader or a data "
                f"set, or `num_steps <= {n_batches - 1}`."
            )


def lr_range_test(
    model: nn.Module,
    data: DatasetSplit | TensorDataset | Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    optimizer: str = "sgd",
    min_lr: float = 1e-7,
    max_lr: float = 10.0,
    num_steps: int = 100,
    smoothing: float = 0.98,
    divergence_factor: float = 4.0,
    rule: str = "steepest",
    batch_size: int = 64,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> LRRangeTestResult:
    """Run Smith's learning-rate range test on ``model`` and suggest an initial rate.

    Trains ``model`` for up to ``num_steps`` mini-batch steps with the optimizer ``optimizer``
    (built by :func:`optuna_ext.tasks.make_optimizer`, like :func:`optuna_ext.tasks.fit`
    does) while the rate of step ``i`` grows exponentially,
    ``lr_i = min_lr * (max_lr / min_lr) ** (i / (num_steps - 1))``. After every step it
    records the training loss of the next batch (the loss ``lr_i`` led to) and its exponential
    average with bias correction,
    ``avg_i = smoothing * avg_{i-1} + (1 - smoothing) * loss_i`` and
    ``smoothed_i = avg_i / (1 - smoothing ** (i + 1))``. It stops early, with
    ``diverged=True``, when a loss is not finite or when the smoothed loss exceeds
    ``divergence_factor`` times the lowest smoothed loss so far (the divergence test assumes a
    positive loss, like the cross-entropy or the squared error). The suggested rate is read
    off the smoothed curve by ``rule`` (see :meth:`LRRangeTestResult.suggest`):
    ``"steepest"`` (default), where the smoothed loss falls fastest against ``log(lr)``
    (leaving out the first 10% and last 5% of the sweep, up to the smoothed minimum, with a
    fallback to ``"min_div_10"`` when there is no clear descent), or ``"min_div_10"``, a tenth
    of the rate at its minimum; :attr:`LRRangeTestResult.suggested_by` says which produced
    ``suggested_lr``.

    The model is trained in place and **restored afterwards** (also when an exception is
    raised): its parameters and buffers (e.g. BatchNorm statistics) get their values from
    before the test back, through ``load_state_dict``, so the parameter tensors keep their
    identity; their ``.grad`` and the training mode are restored too. The global random state
    is left untouched (torch's RNG is forked and seeded with ``seed``), and with the same
    model, data and ``seed`` the result is the same on the CPU.

    Example:

        .. testcode::

            from optuna_ext.optim import lr_range_test
            from optuna_ext.tasks import build_model
            from optuna_ext.tasks import fit
            from optuna_ext.tasks import make_teacher_data

            data = make_teacher_data(teacher="2-3-1", n_samples=500)
            model = build_model("mlp-2-3-1", data=data)
            result = lr_range_test(model, data, min_lr=1e-4, max_lr=100.0, num_steps=60)
            assert 1e-4 <= result.suggested_lr <= 100.0
            fit(model, data, lr=result.suggested_lr, epochs=2)  # the weights were restored

    Args:
        model:
            The model; trained during the test, restored afterwards.
        data:
            A :class:`~optuna_ext.tasks.DatasetSplit` (its ``train`` part is used), a
            :class:`~torch.utils.data.TensorDataset` (both batched by
            :func:`~optuna_ext.tasks.make_loader` with ``batch_size``, shuffled with ``seed``),
            or a re-iterable of ``(inputs, labels)`` batches (used as it is, pass after pass).
        optimizer:
            One of :data:`optuna_ext.tasks.OPTIMIZER_NAMES` except ``"sgd_hd"`` and
            ``"adam_hd"`` (which change the rate themselves).
        min_lr:
            The rate of the first step, finite and ``> 0``.
        max_lr:
            The rate of the last step, finite and ``> min_lr``.
        num_steps:
            The number of steps (and rates) at most, ``>= 2``; 100 to 300 is usual.
        smoothing:
            The weight of the past in the exponential average of the loss, in ``[0, 1)``
            (``0`` for no smoothing).
        divergence_factor:
            The test stops when the smoothed loss exceeds this factor times the lowest one,
            ``> 1``; ``math.inf`` to run all ``num_steps``.
        rule:
            The rule of ``suggested_lr``, one of :data:`RULES`.
        batch_size:
            The batch size when ``data`` is a data set.
        momentum:
            The momentum of ``"sgd"`` and ``"rmsprop"`` (see
            :func:`~optuna_ext.tasks.make_optimizer`).
        weight_decay:
            The L2 penalty of the optimizer.
        loss_fn:
            ``loss_fn(outputs, labels)``, a scalar to minimize; :obj:`None` for the loss of
            :func:`optuna_ext.tasks.train_epoch` (cross-entropy, or binary cross-entropy for
            one output).
        seed:
            The seed of the batch order and of any randomness in the model (e.g. dropout).
        device:
            The device the batches are moved to; :obj:`None` for the device of the model's
            first parameter. The model itself is not moved.
    """
    from optuna_ext.tasks._data import DatasetSplit
    from optuna_ext.tasks._data import make_loader
    from optuna_ext.tasks._training import _loss
    from optuna_ext.tasks._training import _seeded
    from optuna_ext.tasks._training import make_optimizer
    from optuna_ext.tasks._training import OPTIMIZER_NAMES

    names = tuple(name for name in OPTIMIZER_NAMES if name not in _HYPERGRADIENT_NAMES)
    if optimizer not in names:
        raise ValueError(f"The value of `optimizer` is {optimizer!r}, but must be one of {names}.")
    min_lr = _check_positive_finite("min_lr", min_lr)
    max_lr = _check_positive_finite("max_lr", max_lr)
    if max_lr <= min_lr:
        raise ValueError(
            f"The value of `max_lr` is {max_lr}, but must be `max_lr > min_lr` (`min_lr` is "
            f"{min_lr})."
        )
    if not math.isfinite(max_lr / min_lr):
        # The rates are min_lr * (max_lr / min_lr) ** t: an infinite ratio made them inf.
        raise ValueError(
            f"The values of `min_lr` and `max_lr` are {min_lr} and {max_lr}, but their ratio "
            "`max_lr / min_lr` must be finite."
        )
    if not _is_int(num_steps) or num_steps < 2:
        raise ValueError(f"The value of `num_steps` is {num_steps!r}, but must be an int `>= 2`.")
    ratio = max_lr / min_lr
    rates = [min_lr * ratio ** (i / (num_steps - 1)) for i in range(num_steps)]
    if not _strictly_increasing(rates):
        raise ValueError(
            f"The values of `min_lr` and `max_lr` are {min_lr} and {max_lr}, too close for "
            f"{num_steps} distinct rates (`num_steps`): widen the range or take fewer steps."
        )
    if not (_is_real(smoothing) and 0.0 <= smoothing < 1.0):
        raise ValueError(
            f"The value of `smoothing` is {smoothing!r}, but must be `0 <= smoothing < 1`."
        )
    if not (_is_real(divergence_factor) and divergence_factor > 1.0):
        raise ValueError(
            f"The value of `divergence_factor` is {divergence_factor!r}, but must be "
            "`divergence_factor > 1`."
        )
    if rule not in RULES:
        raise ValueError(f"The value of `rule` is {rule!r}, but must be one of {RULES}.")
    if not _is_int(seed):
        raise TypeError(f"The value of `seed` is {seed!r}, but must be an int.")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"The value of `loss_fn` is {loss_fn!r}, but must be callable or None.")
    params = list(model.parameters())
    if not params:
        raise ValueError("The model has no parameters.")
    if device is None:
        device = params[0].device
    device = torch.device(device)

    if isinstance(data, DatasetSplit):
        data = data.train
    if isinstance(data, TensorDataset):
        batches: Iterable[tuple[torch.Tensor, torch.Tensor]] = make_loader(
            data, batch_size=batch_size, shuffle=True, seed=seed
        )
    elif isinstance(data, Iterable) and not isinstance(data, (torch.Tensor, str, bytes)):
        batches = data
    else:
        raise TypeError(
            f"The value of `data` is of type {type(data).__name__!r}, but must be a "
            "DatasetSplit, a TensorDataset or a re-iterable of `(inputs, labels)` batches."
        )
    compute_loss = _loss if loss_fn is None else loss_fn
    opt = make_optimizer(
        optimizer, params, lr=min_lr, momentum=momentum, weight_decay=weight_decay
    )

    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    diverged = False
    saved = {key: value.detach().clone() for key, value in model.state_dict().items()}
    saved_grads = [p.grad for p in params]
    was_training = model.training
    try:
        model.train()
        with _seeded(seed, device):
            stream = _cycle(batches)

            def batch_loss() -> torch.Tensor:
                batch = next(stream)
                if not (
                    isinstance(batch, (tuple, list))
                    and len(batch) == 2
                    and all(isinstance(t, torch.Tensor) for t in batch)
                ):
                    raise ValueError(
                        f"A batch of `data` is of type {type(batch).__name__!r}, but must be a "
                        "pair `(inputs, labels)` of tensors."
                    )
                inputs, labels = batch
                inputs = inputs.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                loss = compute_loss(model(inputs), labels)
                if not (isinstance(loss, torch.Tensor) and loss.ndim == 0):
                    raise ValueError(
                        "The loss must be a scalar tensor (`loss_fn` returned "
                        f"{type(loss).__name__}"
                        + (
                            f" of shape {tuple(loss.shape)}"
                            if isinstance(loss, torch.Tensor)
                            else ""
                        )
                        + ")."
                    )
                return loss

            average = 0.0
            best = math.inf
            loss = batch_loss()
            for i, lr in enumerate(rates):
                for group in opt.param_groups:
                    group["lr"] = lr
                opt.zero_grad(set_to_none=True)
                torch.autograd.backward(loss)
                opt.step()
                loss = batch_loss()  # the loss this rate led to (and the next step's batch)
                value = loss.item()
                lrs.append(lr)
                losses.append(value)
                if not math.isfinite(value):
                    smoothed.append(math.nan)
                    diverged = True
                    break
                average = smoothing * average + (1.0 - smoothing) * value
                current = average / (1.0 - smoothing ** (i + 1))
                smoothed.append(current)
                best = min(best, current)
                if best > 0.0 and current > divergence_factor * best:
                    diverged = True
                    break
    finally:
        model.load_state_dict(saved)
        for p, grad in zip(params, saved_grads, strict=True):
            p.grad = grad
        model.train(was_training)
    suggested_lr, suggested_by = _suggest(lrs, smoothed, rule)
    return LRRangeTestResult(
        lrs=tuple(lrs),
        losses=tuple(losses),
        smoothed_losses=tuple(smoothed),
        suggested_lr=suggested_lr,
        rule=rule,
        diverged=diverged,
        num_steps=num_steps,
        suggested_by=suggested_by,
    )
