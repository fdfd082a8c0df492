from __future__ import annotations

import math
from typing import TYPE_CHECKING

from optuna.pruners import BasePruner

from optuna_ext.pruners._rungs import check_int
from optuna_ext.pruners._rungs import check_single_objective
from optuna_ext.pruners._rungs import check_step
from optuna_ext.pruners._rungs import first_rung_end
from optuna_ext.pruners._rungs import LAST_RUNG_CHOICES
from optuna_ext.pruners._rungs import LastRung
from optuna_ext.pruners._rungs import LayoutRecord
from optuna_ext.pruners._rungs import prune_at_rung_ends
from optuna_ext.pruners._rungs import rung_ends
from optuna_ext.schedules import RecurringLR
from optuna_ext.schedules._recurring import PAPER_STEP_FRACTIONS
from optuna_ext.schedules._recurring import SCHEDULE_KINDS


if TYPE_CHECKING:
    from collections.abc import Sequence

    import optuna
    import torch

    from optuna_ext.schedules import ScheduleKind


_PREFIX = "MORLPruner"
BOUNDARIES_KEY = f"{_PREFIX}:boundaries"
"""The study system attr holding the resolved rung ends (a list of ints)."""


class MORLPruner(BasePruner):
    """Successive halving whose rungs each end with an annealed learning-rate schedule (MORL).

    Multi-fidelity optimization with a recurring learning rate: the learning-rate schedule is
    condensed into every rung and restarted at every rung end, so that the promotion decisions
    compare annealed models and configurations that start slowly are not killed before their
    schedule anneals. The pruner holds the rung layout and judges trials; the schedule is a
    :class:`~optuna_ext.schedules.RecurringLR` over :attr:`boundaries`, built by
    :meth:`schedule`, which the objective must step once per iteration.

    - Paper: `Improving Multi-fidelity Optimization with a Recurring Learning Rate for
      Hyperparameter Tuning <https://arxiv.org/abs/2209.12499>`__ (Lee et al., WACV 2023),
      Algorithm 1 and section 3.3.

    **Steps are epochs completed.** Report the value after epoch ``e`` (counted from 0) with
    ``trial.report(value, step=e + 1)`` and call :meth:`~optuna.trial.Trial.should_prune` after
    every report. Rung ``k`` is completed when ``step >= b_k``; the value compared there is the
    one reported at the first step ``>= b_k`` (with a report per epoch, the value at ``b_k``,
    where the schedule has annealed). A step past ``max_resource`` raises a ``ValueError``.

    Rung layout: with ``eta = reduction_factor`` the rung ends are ``b_k = u * eta**k`` for
    ``u = eta**min_exponent`` (or ``u = min_resource``) while they stay ``<= max_resource``,
    and the last rung ends at ``max_resource``: for ``max_resource=164`` with the defaults,
    ``(9, 27, 81, 164)``. The resolved layout is written to the study system attr
    ``"MORLPruner:boundaries"`` on first use; a pruner whose layout differs (other arguments in
    another process or a resumed run) raises a ``ValueError`` instead of silently mixing rungs
    (unlike Optuna's ``"auto"`` resources, which can differ between processes: optuna#1220).

    Promotion is asynchronous, as in Optuna's
    :class:`~optuna.pruners.SuccessiveHalvingPruner`: at each rung end the trial's value is
    recorded in the trial system attr ``"MORLPruner:completed_rung_{k}"`` and the trial goes
    on only if its value is within the top ``1 / eta`` of the values recorded there by all the
    trials of the study so far (``len // eta`` of them, ties at the cut-off included; only the
    best while fewer than ``eta`` trials have completed the rung). A NaN or infinite value
    prunes the trial and is never recorded. At the last rung end the value is recorded and the
    trial is not pruned. Minimize and maximize are both supported; multi-objective studies
    are not (``NotImplementedError``, as Optuna's ``should_prune`` raises).

    A trial killed with its process and retried by Optuna's
    ``RetryHeartbeatStaleTrialCallback`` (see the README, "Resume after a kill") is judged
    again from its first rung end, and the killed original no longer competes: with a
    deterministic objective and a sampler that draws the same parameters after a restart,
    the promotions are those of an uninterrupted run.

    Differences from the paper, on purpose:

    - The paper runs synchronous rounds (every configuration of a round trains, then the top
      ``1/eta`` go on); Optuna cannot suspend trials, so promotion here is asynchronous as in
      ASHA, with the same rung ends and promotion rate.
    - Algorithm 1 has ``floor(log_eta r) - s_min + 1`` rounds, the last one ending at ``r``
      instead of at ``eta**floor(log_eta r)``: for ``r = 164`` the rounds end at 9, 27 and 164.
      The default ``last_rung="separate"`` keeps ``eta**floor(log_eta r)`` as a rung end and
      adds ``r`` after it (9, 27, 81, 164); ``last_rung="stretched"`` reproduces Algorithm 1.
      Both agree when ``r`` is a power of ``eta`` times the first rung end.
    - ``min_resource`` and ``bootstrap_count`` are additions, with Optuna's meaning.

    With ``min_resource=m * eta**s`` and ``max_resource`` past the last step reported, the
    pruning decisions are those of ``SuccessiveHalvingPruner(min_resource=m,
    reduction_factor=eta, min_early_stopping_rate=s)`` except at ``max_resource``, where a
    trial has finished its training and is not pruned, and for infinite values, which are
    pruned here (given a call of ``should_prune`` after every report; otherwise Optuna compares
    the latest value and MORLPruner the one at the rung end).

    Example:

        .. testcode::

            import optuna
            import torch

            from optuna_ext.pruners import MORLPruner

            x = torch.randn(64, 4)
            y = x.sum(dim=1, keepdim=True)
            pruner = MORLPruner(max_resource=12, min_exponent=1)  # rungs end at 3, 9, 12


            def objective(trial):
                model = torch.nn.Linear(4, 1)
                lr = trial.suggest_float("lr", 1e-3, 1.0, log=True)
                optimizer = torch.optim.SGD(model.parameters(), lr=lr)
                scheduler = pruner.schedule(optimizer, steps_per_epoch=4)
                for epoch in range(pruner.boundaries[-1]):
                    for xb, yb in zip(x.split(16), y.split(16)):
                        optimizer.zero_grad()
                        torch.nn.functional.mse_loss(model(xb), yb).backward()
                        optimizer.step()
                        scheduler.step()
                    with torch.no_grad():
                        loss = torch.nn.functional.mse_loss(model(x), y).item()
                    trial.report(loss, step=epoch + 1)
                    if trial.should_prune():
                        raise optuna.TrialPruned()
                return loss


            study = optuna.create_study(pruner=pruner)
            study.optimize(objective, n_trials=5)

    Args:
        max_resource:
            The maximum resource ``r``: the number of epochs of a full run and the end of the
            last rung.
        reduction_factor:
            The reduction factor ``eta``: the top ``1 / eta`` trials of a rung are promoted and
            the rung ends grow by ``eta``. Must be ``>= 2``.
        min_exponent:
            The minimum exponent ``s_min``: the first rung ends at ``eta**s_min`` epochs.
            Defaults to 2 (the paper's choice, 9 epochs with ``eta = 3``). Give either this or
            ``min_resource``.
        min_resource:
            The end of the first rung in epochs, for a first rung other than a power of
            ``eta``. Give either this or ``min_exponent``.
        bootstrap_count:
            The number of trials that must have completed a rung before any trial is promoted
            from it (as in :class:`~optuna.pruners.SuccessiveHalvingPruner`).
        last_rung:
            ``"separate"`` (default) to end the last rung at ``max_resource`` after the last
            ``first_end * eta**k <= max_resource``, or ``"stretched"`` to move that last end to
            ``max_resource`` as the paper's Algorithm 1 does.
        schedule_kind:
            The default ``kind`` of :meth:`schedule`: ``"cosine"`` (the paper's),
            ``"step"``, ``"linear"`` or ``"cyclic"``.
        min_lr:
            The default ``min_lr`` of :meth:`schedule`.
    """

    def __init__(
        self,
        *,
        max_resource: int,
        reduction_factor: int = 3,
        min_exponent: int | None = None,
        min_resource: int | None = None,
        bootstrap_count: int = 0,
        last_rung: LastRung = "separate",
        schedule_kind: ScheduleKind = "cosine",
        min_lr: float = 0.0,
    ) -> None:
        reduction_factor = check_int("reduction_factor", reduction_factor, 2)
        max_resource = check_int("max_resource", max_resource, 1)
        first_end = first_rung_end(
            reduction_factor, min_exponent, min_resource, "rung", max_resource
        )
        bootstrap_count = check_int("bootstrap_count", bootstrap_count, 0)
        _check_schedule_defaults(last_rung, schedule_kind, min_lr)

        self._max_resource = max_resource
        self._reduction_factor = reduction_factor
        self._bootstrap_count = bootstrap_count
        self._schedule_kind: ScheduleKind = schedule_kind
        self._min_lr = float(min_lr)
        self._boundaries = rung_ends(first_end, reduction_factor, max_resource, last_rung)
        self._layout = LayoutRecord(BOUNDARIES_KEY, list(self._boundaries), "MORLPruner")

    @property
    def boundaries(self) -> tuple[int, ...]:
        """The rung ends in epochs, strictly increasing, the last one ``max_resource``."""
        return self._boundaries

    def prune(self, study: optuna.study.Study, trial: optuna.trial.FrozenTrial) -> bool:
        check_single_objective(study)
        check_step("MORLPruner", trial, self._max_resource)
        self._layout.ensure(study)
        return prune_at_rung_ends(
            study,
            trial,
            self._boundaries,
            self._reduction_factor,
            self._bootstrap_count,
            _PREFIX,
        )

    def schedule(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        steps_per_epoch: int,
        trial: optuna.trial.Trial | None = None,
        kind: ScheduleKind | None = None,
        min_lr: float | Sequence[float] | None = None,
        step_fractions: Sequence[float] = PAPER_STEP_FRACTIONS,
        step_gamma: float = 0.1,
        cyclic_peak: float = 0.5,
    ) -> RecurringLR:
        """Build the recurring schedule restarting at this pruner's rung ends.

        Args:
            optimizer:
                The optimizer whose learning rates to drive; each group's current rate is its
                base rate.
            steps_per_epoch:
                The number of iterations (scheduler steps) per epoch, e.g. ``len(loader)``.
            trial:
                Optionally, the trial the schedule is for: its study's stored layout is then
                checked (and written if absent) now rather than at the first ``should_prune``.
            kind:
                The schedule kind; defaults to the pruner's ``schedule_kind``.
            min_lr:
                The lowest rate; defaults to the pruner's ``min_lr``.
            step_fractions:
                See :class:`~optuna_ext.schedules.RecurringLR`.
            step_gamma:
                See :class:`~optuna_ext.schedules.RecurringLR`.
            cyclic_peak:
                See :class:`~optuna_ext.schedules.RecurringLR`.

        Returns:
            A :class:`~optuna_ext.schedules.RecurringLR` with ``boundaries=self.boundaries``,
            to be stepped once per iteration.
        """
        if trial is not None:
            self._layout.ensure(trial.study)
        return RecurringLR(
            optimizer,
            boundaries=self._boundaries,
            steps_per_epoch=steps_per_epoch,
            kind=self._schedule_kind if kind is None else kind,
            min_lr=self._min_lr if min_lr is None else min_lr,
            step_fractions=step_fractions,
            step_gamma=step_gamma,
            cyclic_peak=cyclic_peak,
        )


def _check_schedule_defaults(last_rung: str, schedule_kind: str, min_lr: float) -> None:
    if last_rung not in LAST_RUNG_CHOICES:
        raise ValueError(
            f"The value of `last_rung` is {last_rung!r}, but must be one of {LAST_RUNG_CHOICES}."
        )
    if schedule_kind not in SCHEDULE_KINDS:
        raise ValueError(
            f"The value of `schedule_kind` is {schedule_kind!r}, but must be one of "
            f"{SCHEDULE_KINDS}."
        )
    if not math.isfinite(min_lr) or min_lr < 0:
        raise ValueError(f"The value of `min_lr` is {min_lr}, but must be finite and `>= 0`.")
