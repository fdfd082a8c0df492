from __future__ import annotations

import binascii
import math
import numbers
from typing import TYPE_CHECKING

from optuna.pruners import HyperbandPruner

from optuna_ext.pruners._morl import _check_schedule_defaults
from optuna_ext.pruners._rungs import check_int
from optuna_ext.pruners._rungs import check_single_objective
from optuna_ext.pruners._rungs import check_step
from optuna_ext.pruners._rungs import LastRung
from optuna_ext.pruners._rungs import LayoutRecord
from optuna_ext.pruners._rungs import prune_at_rung_ends
from optuna_ext.pruners._rungs import rung_ends
from optuna_ext.samplers._storage_seeded import draw_index
from optuna_ext.schedules import RecurringLR
from optuna_ext.schedules._recurring import PAPER_STEP_FRACTIONS


if TYPE_CHECKING:
    from collections.abc import Sequence

    import optuna
    import torch

    from optuna_ext.schedules import ScheduleKind


_PREFIX = "MORLHyperbandPruner"
BRACKETS_KEY = f"{_PREFIX}:brackets"
"""The study system attr holding the rung ends of every bracket (a list of lists of ints)."""
BRACKET_KEY = f"{_PREFIX}:bracket"
"""The trial system attr holding the bracket of a trial (an int)."""


class MORLHyperbandPruner(HyperbandPruner):
    """Hyperband over the minimum exponent of MORL, each bracket with a recurring schedule.

    Each bracket ``s`` (``s = 0, 1, ...`` while ``min_resource * eta**s <= max_resource``) is a
    :class:`~optuna_ext.pruners.MORLPruner` whose first rung ends at ``min_resource * eta**s``
    epochs, so the brackets run over the minimum exponent ``s_min`` as Hyperband runs over
    successive halving's early-stopping rate (MORL paper, section 5.1: "one might combine
    MORL with Hyperband which automates the choice of s_min"). Trials are assigned to brackets
    as Optuna's :class:`~optuna.pruners.HyperbandPruner` does (a hash of the study name and the
    trial number, weighted by the same per-bracket budgets), and each trial competes only with
    the trials of its bracket.

    - Paper: `Improving Multi-fidelity Optimization with a Recurring Learning Rate for
      Hyperparameter Tuning <https://arxiv.org/abs/2209.12499>`__ (Lee et al., WACV 2023),
      section 5.1; `Hyperband <http://www.jmlr.org/papers/volume18/16-558/16-558.pdf>`__.

    Each bracket has its own rung ends, so the schedule depends on the trial: build it with
    ``pruner.schedule(optimizer, trial=trial, steps_per_epoch=...)``. The bracket of a trial is
    written to its system attr ``"MORLHyperbandPruner:bracket"`` and the rung ends of all
    brackets to the study system attr ``"MORLHyperbandPruner:brackets"``; a pruner with other
    brackets raises a ``ValueError`` on that study. Steps, promotion and bad values behave as
    in :class:`~optuna_ext.pruners.MORLPruner` (steps are epochs completed; report with
    ``step=epoch + 1``); rung values are recorded under
    ``"MORLHyperbandPruner:completed_rung_{k}"``.

    This class subclasses :class:`~optuna.pruners.HyperbandPruner` so that Optuna's
    ``optuna.pruners._filter_study`` hands samplers a study restricted to the trial's bracket
    (``study.get_trials()`` filtered, as for Optuna's Hyperband; samplers that read
    ``study._get_trials()``, such as TPE, still see every trial). Its own successive-halving
    pruners are not used.

    Example:

        .. testcode::

            import optuna
            import torch

            from optuna_ext.pruners import MORLHyperbandPruner

            pruner = MORLHyperbandPruner(max_resource=9)  # brackets: (1, 3, 9), (3, 9), (9,)


            def objective(trial):
                model = torch.nn.Linear(1, 1)
                lr = trial.suggest_float("lr", 1e-3, 1.0, log=True)
                optimizer = torch.optim.SGD(model.parameters(), lr=lr)
                scheduler = pruner.schedule(optimizer, trial=trial, steps_per_epoch=1)
                for epoch in range(9):
                    optimizer.step()
                    scheduler.step()
                    trial.report(lr * (epoch + 1), step=epoch + 1)
                    if trial.should_prune():
                        raise optuna.TrialPruned()
                return lr


            study = optuna.create_study(pruner=pruner)
            study.optimize(objective, n_trials=6)

    Args:
        max_resource:
            The maximum resource: the number of epochs of a full run and the end of every
            bracket's last rung.
        min_resource:
            The first rung end of the most aggressive bracket (``s = 0``), in epochs.
        reduction_factor:
            The reduction factor ``eta`` (``>= 2``), shared by all brackets.
        bootstrap_count:
            As in :class:`~optuna_ext.pruners.MORLPruner`, per bracket.
        last_rung:
            As in :class:`~optuna_ext.pruners.MORLPruner`, per bracket.
        schedule_kind:
            The default ``kind`` of :meth:`schedule`.
        min_lr:
            The default ``min_lr`` of :meth:`schedule`.
    """

    def __init__(
        self,
        *,
        max_resource: int,
        min_resource: int = 1,
        reduction_factor: int = 3,
        bootstrap_count: int = 0,
        last_rung: LastRung = "separate",
        schedule_kind: ScheduleKind = "cosine",
        min_lr: float = 0.0,
    ) -> None:
        reduction_factor = check_int("reduction_factor", reduction_factor, 2)
        min_resource = check_int("min_resource", min_resource, 1)
        max_resource = check_int("max_resource", max_resource, 1)
        bootstrap_count = check_int("bootstrap_count", bootstrap_count, 0)
        _check_schedule_defaults(last_rung, schedule_kind, min_lr)

        brackets: list[tuple[int, ...]] = []
        first_end = min_resource
        while True:
            brackets.append(rung_ends(first_end, reduction_factor, max_resource, last_rung))
            first_end *= reduction_factor
            if first_end > max_resource:
                break

        super().__init__(
            min_resource=min_resource,
            max_resource=max_resource,
            reduction_factor=reduction_factor,
            bootstrap_count=bootstrap_count,
        )
        self._brackets = tuple(brackets)
        self._last_step = max_resource
        self._schedule_kind: ScheduleKind = schedule_kind
        self._min_lr = float(min_lr)
        # The attributes HyperbandPruner derives in `_try_initialization`, with its meaning.
        n_brackets = len(brackets)
        self._n_brackets = n_brackets
        self._trial_allocation_budgets = [
            math.ceil(n_brackets * reduction_factor**s / (s + 1))
            for s in reversed(range(n_brackets))
        ]
        self._total_trial_allocation_budget = sum(self._trial_allocation_budgets)
        self._layout = LayoutRecord(
            BRACKETS_KEY, [list(b) for b in self._brackets], "MORLHyperbandPruner"
        )

    @property
    def brackets(self) -> tuple[tuple[int, ...], ...]:
        """The rung ends of every bracket; bracket ``s`` starts at ``min_resource * eta**s``."""
        return self._brackets

    def boundaries_for(self, trial: optuna.trial.Trial) -> tuple[int, ...]:
        """Return the rung ends of the trial's bracket (and record the bracket in the trial).

        Args:
            trial:
                A running trial of a study using this pruner.

        Returns:
            The rung ends in epochs of the trial's bracket.
        """
        self._layout.ensure(trial.study)
        frozen = trial.storage.get_trial(trial._trial_id)
        return self._brackets[self._recorded_bracket(trial.study, frozen)]

    def prune(self, study: optuna.study.Study, trial: optuna.trial.FrozenTrial) -> bool:
        check_single_objective(study)
        check_step("MORLHyperbandPruner", trial, self._last_step)
        self._layout.ensure(study)
        bracket = self._recorded_bracket(study, trial)
        return prune_at_rung_ends(
            self._create_bracket_study(study, bracket),
            trial,
            self._brackets[bracket],
            self._reduction_factor,
            self._bootstrap_count,
            _PREFIX,
        )

    def schedule(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        trial: optuna.trial.Trial,
        steps_per_epoch: int,
        kind: ScheduleKind | None = None,
        min_lr: float | Sequence[float] | None = None,
        step_fractions: Sequence[float] = PAPER_STEP_FRACTIONS,
        step_gamma: float = 0.1,
        cyclic_peak: float = 0.5,
    ) -> RecurringLR:
        """Build the recurring schedule restarting at the rung ends of the trial's bracket.

        Args:
            optimizer:
                The optimizer whose learning rates to drive.
            trial:
                The running trial: its bracket decides the boundaries.
            steps_per_epoch:
                The number of iterations (scheduler steps) per epoch.
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
            A :class:`~optuna_ext.schedules.RecurringLR` over ``boundaries_for(trial)``.
        """
        return RecurringLR(
            optimizer,
            boundaries=self.boundaries_for(trial),
            steps_per_epoch=steps_per_epoch,
            kind=self._schedule_kind if kind is None else kind,
            min_lr=self._min_lr if min_lr is None else min_lr,
            step_fractions=step_fractions,
            step_gamma=step_gamma,
            cyclic_peak=cyclic_peak,
        )

    def _get_bracket_id(self, study: optuna.study.Study, trial: optuna.trial.FrozenTrial) -> int:
        # Called by Optuna's `_filter_study` and `_BracketStudy.get_trials` too, with a
        # `_BracketStudy` on which only `study_name`, `_storage` and the like are accessible.
        bracket = _stored_bracket(trial.system_attrs.get(BRACKET_KEY), len(self._brackets))
        if bracket is not None:
            return bracket
        return self._hash_bracket(study.study_name, trial.number)

    def _recorded_bracket(self, study: optuna.study.Study, trial: optuna.trial.FrozenTrial) -> int:
        """The trial's stored bracket; for a trial without one, a new one, stored."""
        bracket = _stored_bracket(trial.system_attrs.get(BRACKET_KEY), len(self._brackets))
        if bracket is None:
            bracket = self._new_bracket(study, trial)
            study._storage.set_trial_system_attr(trial._trial_id, BRACKET_KEY, bracket)
        return bracket

    def _new_bracket(self, study: optuna.study.Study, trial: optuna.trial.FrozenTrial) -> int:
        """The bracket of a trial that has none stored yet, from its draw index.

        The draw index is the trial's number among the trials that are not Optuna's retries of
        a killed trial (a retry takes its original's; see
        :func:`~optuna_ext.samplers._storage_seeded.draw_index`), so that after a kill and a
        retry the later trials get the brackets of an uninterrupted run, as
        ``StorageSeededRandomSampler`` gives them its parameters. Without retries it is the
        trial number, which Optuna's ``HyperbandPruner`` hashes.
        """
        index = draw_index(study.get_trials(deepcopy=False), trial)
        return self._hash_bracket(study.study_name, index)

    def _hash_bracket(self, study_name: str, trial_number: int) -> int:
        n = binascii.crc32(f"{study_name}_{trial_number}".encode()) % (
            self._total_trial_allocation_budget
        )
        for bracket, budget in enumerate(self._trial_allocation_budgets):
            n -= budget
            if n < 0:
                return bracket
        raise AssertionError("unreachable: the budgets sum to the modulus")


def _stored_bracket(value: object, n_brackets: int) -> int | None:
    # Called for every trial of the study at every decision (Optuna's bracket study filters
    # the trials with it): the plain int read back from JSON first, without the ABC check.
    if type(value) is int:
        return value if 0 <= value < n_brackets else None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        if 0 <= int(value) < n_brackets:
            return int(value)
    return None
