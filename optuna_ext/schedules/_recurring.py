from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
import math
import numbers
from typing import Any
from typing import Literal
from typing import TypeAlias

from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


ScheduleKind: TypeAlias = Literal["cosine", "step", "linear", "cyclic"]
"""The base schedules :class:`RecurringLR` can condense into each segment."""

SCHEDULE_KINDS: tuple[str, ...] = ("cosine", "step", "linear", "cyclic")

PAPER_STEP_FRACTIONS: tuple[float, float] = (81 / 164, 122 / 164)
"""Where the step schedule decays, as fractions of a segment: epochs 81 and 122 of 164.

These are the milestones of the hand-tuned CIFAR schedule the MORL paper starts from (section
4.1); section 5.3 keeps "the ratio of decaying epoch" when it condenses the step schedule.
"""


class RecurringLR(LRScheduler):
    """Learning-rate schedule condensed into every segment between boundaries and restarted.

    This is the recurring learning rate of MORL: a base schedule (cosine annealing by default)
    is condensed to fit each segment ``[b_{k-1}, b_k)`` of the training run (with ``b_{-1} = 0``)
    and restarted from the initial learning rate at every boundary ``b_k``, so that every rung of
    successive halving ends with an annealed model. With the rung ends of
    :class:`~optuna_ext.pruners.MORLPruner` as ``boundaries`` (``pruner.schedule(...)`` builds
    it), each promotion decision compares models trained through a whole schedule.

    - Paper: `Improving Multi-fidelity Optimization with a Recurring Learning Rate for
      Hyperparameter Tuning <https://arxiv.org/abs/2209.12499>`__ (Lee et al., WACV 2023),
      Algorithm 1 and section 5.3.

    Epochs, iterations and boundaries:

    - The scheduler is stepped once per iteration (optimizer step), as in the paper, where the
      rate "is updated after every gradient descent". :attr:`last_epoch` therefore counts
      iterations, as for :class:`~torch.optim.lr_scheduler.OneCycleLR`, and iteration ``i`` is at
      the fractional epoch ``t = i / steps_per_epoch``.
    - ``boundaries`` are in epochs (fractional values allowed) counted from the start of
      training. Within segment ``k``, ``u = (t - b_{k-1}) / (b_k - b_{k-1})`` runs over
      ``[0, 1)`` and the rate is ``min_lr + (base_lr - min_lr) * f(u)``, where ``f`` is the
      shape of ``kind`` below. :meth:`lr_at` is right-continuous: at a boundary it gives the
      restarted rate, and the end-of-segment rate is the limit from the left.
    - From the last boundary on, the rate holds the end-of-segment value ``f(1)`` (``min_lr``
      for every kind but ``"step"``).
    - ``boundaries=[r]`` gives one schedule over the whole run ``[0, r]``: the non-recurring
      baseline (successive halving used with a single cosine schedule).

    Kinds (``f(0)`` is the rate at a segment's start, ``f(1)`` the limit at its end):

    - ``"cosine"``: ``f(u) = (1 + cos(pi u)) / 2``; from the base rate to ``min_lr``
      (SGDR-style annealing, the paper's default).
    - ``"linear"``: ``f(u) = 1 - u``; from the base rate to ``min_lr``.
    - ``"step"``: ``f(u) = step_gamma ** j`` where ``j`` is the number of ``step_fractions``
      that ``u`` has passed; the segment starts at the base rate and ends at
      ``min_lr + (base_lr - min_lr) * step_gamma ** len(step_fractions)``, not at ``min_lr``
      (with the defaults, a hundredth of the base rate). The default fractions are the paper's
      81/164 and 122/164.
    - ``"cyclic"``: one triangular cycle per segment (Smith's cyclical learning rate with
      ``min_lr`` as the lower and the base rate as the upper bound): ``f`` rises linearly from
      0 to 1 at ``u = cyclic_peak`` and falls linearly back to 0 at the segment's end. This is
      the one kind that starts a segment at ``min_lr`` rather than at the base rate; it was
      chosen so that the rate stays within ``[min_lr, base_lr]`` and every segment still ends
      annealed, which is what MORL needs at the promotion points.

    Differences from the paper, on purpose:

    - Algorithm 1 writes the epoch rate as ``l/2 (1 + cos(e pi / (e_end - e_start)))`` with
      ``e`` counted from the segment's first epoch. Its denominator is one less than the
      segment's length in epochs, so it reaches zero at the start of the segment's last epoch.
      Here the cosine spans the whole segment and reaches ``min_lr`` exactly at the rung end,
      as SGDR's and torch's :class:`~torch.optim.lr_scheduler.CosineAnnealingLR` do.
    - The restart goes back to the initial rate ``l`` at every rung, as in Algorithm 1, not to
      the value a single uncondensed schedule would have reached there. ``min_lr`` (the paper
      anneals to 0) and the per-group base rates are additions.

    Every parameter group keeps its own initial learning rate as its base rate.

    Example:

        .. testcode::

            import torch

            from optuna_ext.schedules import RecurringLR

            model = torch.nn.Linear(4, 1)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            steps_per_epoch = 10
            scheduler = RecurringLR(
                optimizer, boundaries=[9, 27, 81], steps_per_epoch=steps_per_epoch
            )
            for epoch in range(81):
                for _ in range(steps_per_epoch):
                    optimizer.step()
                    scheduler.step()
            assert scheduler.lr_at(9.0) == [0.1]  # restarted at the first boundary

    Args:
        optimizer:
            The wrapped optimizer.
        boundaries:
            The segment ends in epochs, strictly increasing and positive: the rung ends of
            successive halving (``pruner.boundaries``).
        steps_per_epoch:
            The number of iterations (scheduler steps) per epoch, e.g. ``len(loader)``.
        kind:
            The base schedule condensed into every segment: ``"cosine"``, ``"step"``,
            ``"linear"`` or ``"cyclic"``.
        min_lr:
            The lowest rate, reached at the end of every segment (except for ``"step"``). A
            float for all parameter groups, or one value per group. Must be non-negative and
            below each group's base rate.
        step_fractions:
            For ``"step"``: where in the segment the rate decays, as fractions in ``(0, 1)``,
            strictly increasing.
        step_gamma:
            For ``"step"``: the factor applied at each decay, in ``(0, 1]``.
        cyclic_peak:
            For ``"cyclic"``: where in the segment the triangle peaks at the base rate, a
            fraction in ``(0, 1)``.
        last_epoch:
            The index of the last iteration, as in torch's schedulers: leave it at ``-1``
            except when rebuilding a scheduler without its state dict.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        boundaries: Sequence[int | float],
        steps_per_epoch: int,
        kind: ScheduleKind = "cosine",
        min_lr: float | Sequence[float] = 0.0,
        step_fractions: Sequence[float] = PAPER_STEP_FRACTIONS,
        step_gamma: float = 0.1,
        cyclic_peak: float = 0.5,
        last_epoch: int = -1,
    ) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")
        if kind not in SCHEDULE_KINDS:
            raise ValueError(
                f"The value of `kind` is {kind!r}, but must be one of {SCHEDULE_KINDS}."
            )
        if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, numbers.Integral):
            raise ValueError(
                f"The value of `steps_per_epoch` is {steps_per_epoch!r}, but must be an integer."
            )
        if steps_per_epoch < 1:
            raise ValueError(
                f"The value of `steps_per_epoch` is {steps_per_epoch}, "
                "but must be `steps_per_epoch >= 1`."
            )
        self.boundaries: tuple[float, ...] = validate_boundaries(boundaries)
        fractions = tuple(float(f) for f in step_fractions)
        if not all(0.0 < f < 1.0 for f in fractions) or any(
            a >= b for a, b in zip(fractions, fractions[1:], strict=False)
        ):
            raise ValueError(
                f"The value of `step_fractions` is {list(step_fractions)}, but must be strictly "
                "increasing fractions with `0 < fraction < 1`."
            )
        if not 0.0 < step_gamma <= 1.0:
            raise ValueError(
                f"The value of `step_gamma` is {step_gamma}, but must be `0 < step_gamma <= 1`."
            )
        if not 0.0 < cyclic_peak < 1.0:
            raise ValueError(
                f"The value of `cyclic_peak` is {cyclic_peak}, but must be `0 < cyclic_peak < 1`."
            )
        if isinstance(last_epoch, bool) or not isinstance(last_epoch, numbers.Integral):
            raise ValueError(
                f"The value of `last_epoch` is {last_epoch!r}, but must be an integer "
                "`last_epoch >= -1`."
            )
        if last_epoch < -1:
            raise ValueError(
                f"The value of `last_epoch` is {last_epoch}, but must be `last_epoch >= -1`."
            )

        # The base rates LRScheduler.__init__ is about to record: an existing `initial_lr` wins,
        # as with its `group.setdefault("initial_lr", group["lr"])`.
        groups = optimizer.param_groups
        base_lrs = [float(group.get("initial_lr", group["lr"])) for group in groups]
        self.min_lrs: list[float] = _validate_min_lr(min_lr, base_lrs)
        self.steps_per_epoch: int = int(steps_per_epoch)
        self.kind: ScheduleKind = kind
        self.step_fractions: tuple[float, ...] = fractions
        self.step_gamma: float = float(step_gamma)
        self.cyclic_peak: float = float(cyclic_peak)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch: float) -> list[float]:
        """Return the learning rate of every parameter group at a fractional epoch.

        This is the closed form the scheduler follows: after ``i`` calls of :meth:`step`, the
        optimizer's rates are ``lr_at(i / steps_per_epoch)``.

        Args:
            epoch:
                The training time in epochs, ``0 <= epoch``; fractional values address
                iterations inside an epoch.

        Returns:
            One learning rate per parameter group of the optimizer.
        """
        if not math.isfinite(epoch) or epoch < 0:
            raise ValueError(f"The value of `epoch` is {epoch}, but must be finite and `>= 0`.")
        f = annealing_fraction(
            segment_progress(self.boundaries, epoch),
            kind=self.kind,
            step_fractions=self.step_fractions,
            step_gamma=self.step_gamma,
            cyclic_peak=self.cyclic_peak,
        )
        return [m + (float(b) - m) * f for b, m in zip(self.base_lrs, self.min_lrs, strict=True)]

    def get_lr(self) -> list[float | Tensor]:
        """Compute the learning rates at the current iteration :attr:`last_epoch`.

        Returns:
            One learning rate per parameter group, ``lr_at(last_epoch / steps_per_epoch)``.
        """
        return list(self._get_closed_form_lr())

    def _get_closed_form_lr(self) -> list[float | Tensor]:
        return list(self.lr_at(max(self.last_epoch, 0) / self.steps_per_epoch))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load the scheduler's state and set the optimizer's rates from it.

        As with torch's schedulers, the state (including the boundaries and the kind) replaces
        this scheduler's. The optimizer's rates are then set to the closed form at the restored
        iteration, so that training continues the schedule exactly even when the optimizer's
        own state was not restored.

        Args:
            state_dict:
                A dictionary returned by :meth:`state_dict`.
        """
        super().load_state_dict(state_dict)
        values = self._get_closed_form_lr()
        for group, lr in zip(self.optimizer.param_groups, values, strict=True):
            if isinstance(group["lr"], Tensor):
                group["lr"].fill_(float(lr))
            else:
                group["lr"] = lr
        self._last_lr = [
            g["lr"].clone() if isinstance(g["lr"], Tensor) else g["lr"]
            for g in self.optimizer.param_groups
        ]


def validate_boundaries(boundaries: Sequence[int | float]) -> tuple[float, ...]:
    """Check segment boundaries: non-empty, finite, positive and strictly increasing.

    Args:
        boundaries:
            The segment ends in epochs.

    Returns:
        The boundaries as a tuple, integers kept as integers.
    """
    given = list(boundaries)
    if len(given) == 0:
        raise ValueError("The value of `boundaries` is [], but must hold at least one boundary.")
    if any(isinstance(b, bool) or not isinstance(b, numbers.Real) for b in given):
        raise ValueError(f"The value of `boundaries` is {given}, but must hold numbers only.")
    values = tuple(int(b) if isinstance(b, numbers.Integral) else float(b) for b in given)
    if not all(math.isfinite(b) and b > 0 for b in values) or any(
        a >= b for a, b in zip(values, values[1:], strict=False)
    ):
        raise ValueError(
            f"The value of `boundaries` is {list(values)}, but must be finite, positive and "
            "strictly increasing."
        )
    return values


def segment_progress(boundaries: Sequence[float], epoch: float) -> float:
    """Return the progress ``u`` through the segment holding ``epoch``.

    Segment ``k`` is ``[b_{k-1}, b_k)`` with ``b_{-1} = 0``; the result is in ``[0, 1)`` inside
    the boundaries and ``1.0`` from the last boundary on.

    Args:
        boundaries:
            Validated segment ends (see :func:`validate_boundaries`).
        epoch:
            The fractional epoch, ``>= 0``.

    Returns:
        ``(epoch - b_{k-1}) / (b_k - b_{k-1})`` for the segment ``k`` holding ``epoch``.
    """
    k = bisect_right(boundaries, epoch)
    if k >= len(boundaries):
        return 1.0
    start = boundaries[k - 1] if k > 0 else 0.0
    end = boundaries[k]
    return min(max((epoch - start) / (end - start), 0.0), 1.0)


def annealing_fraction(
    u: float,
    *,
    kind: str,
    step_fractions: Sequence[float] = PAPER_STEP_FRACTIONS,
    step_gamma: float = 0.1,
    cyclic_peak: float = 0.5,
) -> float:
    """Return the shape ``f(u)`` of a schedule kind, a fraction of ``base_lr - min_lr``.

    Args:
        u:
            The progress through a segment, in ``[0, 1]``.
        kind:
            ``"cosine"``, ``"step"``, ``"linear"`` or ``"cyclic"`` (see :class:`RecurringLR`).
        step_fractions:
            The decay points of ``"step"``.
        step_gamma:
            The decay factor of ``"step"``.
        cyclic_peak:
            The peak position of ``"cyclic"``.

    Returns:
        ``f(u)`` in ``[0, 1]``.
    """
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * u))
    if kind == "linear":
        return 1.0 - u
    if kind == "step":
        return float(step_gamma ** bisect_right(step_fractions, u))
    if kind == "cyclic":
        if u < cyclic_peak:
            return u / cyclic_peak
        return (1.0 - u) / (1.0 - cyclic_peak)
    raise ValueError(f"The value of `kind` is {kind!r}, but must be one of {SCHEDULE_KINDS}.")


def _validate_min_lr(min_lr: float | Sequence[float], base_lrs: list[float]) -> list[float]:
    if isinstance(min_lr, (int, float)):
        values = [float(min_lr)] * len(base_lrs)
    else:
        values = [float(m) for m in min_lr]
        if len(values) != len(base_lrs):
            raise ValueError(
                f"The value of `min_lr` is {list(min_lr)}, but must hold one value per parameter "
                f"group ({len(base_lrs)})."
            )
    for i, (m, b) in enumerate(zip(values, base_lrs, strict=True)):
        if not math.isfinite(m) or m < 0:
            raise ValueError(f"The value of `min_lr` is {m}, but must be finite and `>= 0`.")
        if not m < b:
            raise ValueError(
                f"The value of `min_lr` is {m}, but must be below the base learning rate "
                f"({b}) of parameter group {i}: `min_lr < lr`."
            )
    return values
