from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
import math
from typing import Any
from typing import TYPE_CHECKING
import weakref

import optuna
from optuna.study import StudyDirection
from optuna.trial import TrialState

from optuna_ext._checkpoint import load_checkpoint
from optuna_ext._checkpoint import remove_checkpoint
from optuna_ext._checkpoint import save_checkpoint
from optuna_ext.pruners._morl import _check_schedule_defaults
from optuna_ext.pruners._rungs import check_int
from optuna_ext.pruners._rungs import completed_rung_key
from optuna_ext.pruners._rungs import first_rung_end
from optuna_ext.pruners._rungs import LastRung
from optuna_ext.pruners._rungs import rung_ends
from optuna_ext.schedules import RecurringLR
from optuna_ext.schedules._recurring import PAPER_STEP_FRACTIONS


if TYPE_CHECKING:
    from collections.abc import Sequence

    from optuna.artifacts._protocol import ArtifactStore
    from optuna.storages import BaseStorage
    import torch

    from optuna_ext.schedules import ScheduleKind


_logger = optuna.logging.get_logger(__name__)

_PREFIX = "SynchronousMORL"
LAYOUT_KEY = f"{_PREFIX}:layout"
"""The study system attr holding the run's layout (rung ends, configurations, schedule)."""
BRACKET_KEY = f"{_PREFIX}:bracket"
"""The trial system attr holding the bracket (repetition) a trial belongs to (an int)."""
CONFIG_KEY = f"{_PREFIX}:config"
"""The trial system attr holding a trial's index among its bracket's configurations."""


def checkpoint_key(rung: int) -> str:
    """Return the trial system attr key of the artifact id of the state at the end of ``rung``."""
    return f"{_PREFIX}:checkpoint_{rung}"


def rung_value_key(rung: int) -> str:
    """Return the trial system attr key of the value at the end of ``rung`` (None if not finite).

    The key's presence marks the rung as done for the trial.
    """
    return completed_rung_key(_PREFIX, rung)


@dataclass(frozen=True)
class SynchronousRound:
    """One round of one configuration in :class:`SynchronousMORL`, as given to ``train_fn``.

    ``train_fn(trial, round)`` continues training the configuration of ``trial`` from
    :attr:`state` (the state it returned at the end of the previous round; :obj:`None` in the
    first round) over the epochs ``[start_epoch, end_epoch)``, with the learning rate of
    :meth:`schedule`, and returns ``(value, state)``.

    Args:
        bracket:
            The bracket (repetition of successive halving with fresh configurations), from 0.
        rung:
            The round's index ``k`` within the bracket, from 0.
        start_epoch:
            The number of epochs the configuration has been trained for: ``b_{k-1}``, 0 in the
            first round.
        end_epoch:
            The rung end ``b_k``: train until this many epochs are done.
        is_last:
            Whether this is the last round (``end_epoch == max_resource``).
        state:
            What ``train_fn`` returned as state at the end of the previous round (e.g. the
            model's and the optimizer's state dicts), or :obj:`None` in the first round.
        schedule_boundaries:
            The boundaries of the learning-rate schedule: the rung ends (the recurring MORL
            schedule) or ``(max_resource,)`` (one schedule over the whole run).
        schedule_kind:
            The kind of schedule :meth:`schedule` builds by default.
        min_lr:
            The ``min_lr`` :meth:`schedule` uses by default.
    """

    bracket: int
    rung: int
    start_epoch: int
    end_epoch: int
    is_last: bool
    state: dict[str, Any] | None
    schedule_boundaries: tuple[int, ...]
    schedule_kind: ScheduleKind = "cosine"
    min_lr: float = 0.0

    @property
    def epochs(self) -> range:
        """The epochs to train in this round, ``range(start_epoch, end_epoch)``."""
        return range(self.start_epoch, self.end_epoch)

    def schedule(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        steps_per_epoch: int,
        kind: ScheduleKind | None = None,
        min_lr: float | Sequence[float] | None = None,
        step_fractions: Sequence[float] = PAPER_STEP_FRACTIONS,
        step_gamma: float = 0.1,
        cyclic_peak: float = 0.5,
    ) -> RecurringLR:
        """Build the learning-rate schedule positioned at the start of this round.

        The schedule is a :class:`~optuna_ext.schedules.RecurringLR` over
        :attr:`schedule_boundaries` whose iteration counter is set to
        ``start_epoch * steps_per_epoch``, and the optimizer's rates are set to the schedule's
        value there, so that stepping it once per iteration of this round continues the
        schedule of the whole run exactly. Each parameter group's base rate is its
        ``"initial_lr"`` when the optimizer's state dict was restored from an earlier round, or
        its current ``"lr"`` for a fresh optimizer.

        Args:
            optimizer:
                The optimizer of the configuration's model.
            steps_per_epoch:
                The number of iterations (scheduler steps) per epoch, e.g. ``len(loader)``.
            kind:
                The schedule kind; defaults to :attr:`schedule_kind`.
            min_lr:
                The lowest rate; defaults to :attr:`min_lr`.
            step_fractions:
                See :class:`~optuna_ext.schedules.RecurringLR`.
            step_gamma:
                See :class:`~optuna_ext.schedules.RecurringLR`.
            cyclic_peak:
                See :class:`~optuna_ext.schedules.RecurringLR`.

        Returns:
            The scheduler, to be stepped once per iteration.
        """
        scheduler = RecurringLR(
            optimizer,
            boundaries=self.schedule_boundaries,
            steps_per_epoch=steps_per_epoch,
            kind=self.schedule_kind if kind is None else kind,
            min_lr=self.min_lr if min_lr is None else min_lr,
            step_fractions=step_fractions,
            step_gamma=step_gamma,
            cyclic_peak=cyclic_peak,
        )
        if self.start_epoch > 0:
            # Fast-forward through the state dict: RecurringLR.load_state_dict sets the
            # optimizer's rates to the closed form at the restored iteration.
            state = scheduler.state_dict()
            state["last_epoch"] = self.start_epoch * scheduler.steps_per_epoch
            state["_step_count"] = state["last_epoch"] + 1
            scheduler.load_state_dict(state)
        return scheduler


TrainFn = Callable[[optuna.trial.Trial, SynchronousRound], tuple[float, Mapping[str, Any]]]
"""``train_fn(trial, round) -> (value, state)``, see :class:`SynchronousMORL`."""


class SynchronousMORL:
    """The MORL paper's synchronous protocol: rounds of successive halving on annealed models.

    Each bracket asks the study for ``n_configs`` configurations (any sampler), trains every
    one of them to the first rung end ``b_0`` with the recurring learning rate (condensed into
    the rung and annealed at its end), ranks them, and promotes the top ``1 / eta`` to train
    on to ``b_1`` from where they stopped, and so on until ``max_resource``. Round ``k``
    therefore trains exactly ``n_k = floor(n_configs * eta**-k)`` configurations (at least
    one), from epoch ``b_{k-1}`` to ``b_k``.

    - Paper: `Improving Multi-fidelity Optimization with a Recurring Learning Rate for
      Hyperparameter Tuning <https://arxiv.org/abs/2209.12499>`__ (Lee et al., WACV 2023),
      Algorithm 1.

    **Differences from** :class:`~optuna_ext.pruners.MORLPruner` (asynchronous, as ASHA and
    Optuna's :class:`~optuna.pruners.SuccessiveHalvingPruner`): the pruner decides when a trial
    reaches a rung end, against the trials that reached it before, so the first trials of a
    study are promoted on few comparisons, later ones may go on although better ones follow,
    and the number of trials per rung is only ``1 / eta`` of the previous one on average. It
    needs no stored state and works with ``study.optimize`` and many workers. This runner
    waits until every configuration of a round has reached the rung end and then promotes
    exactly the best ``n_{k+1}``, as Algorithm 1 does; every decision sees the whole round.
    In exchange it suspends trials between rounds: they stay ``RUNNING`` (ask-and-tell), their
    model and optimizer state is kept (in memory, or in an artifact store), and the rounds run
    one configuration after another in one process.

    **The training function.** ``train_fn(trial, round)`` is called once per configuration
    and round with a :class:`SynchronousRound`. It reads the configuration with
    ``trial.suggest_*`` (a later round gets the values suggested in the first), restores the
    model and optimizer from ``round.state`` (:obj:`None` in the first round), builds the
    schedule with ``round.schedule(optimizer, steps_per_epoch=...)``, steps it once per
    iteration over the epochs ``round.epochs`` (``[b_{k-1}, b_k)``), and returns
    ``(value, state)``: the validation value ranked at the rung end and what the next round
    needs (tensors and plain values, e.g. ``{"model": model.state_dict(), "optimizer":
    optimizer.state_dict()}``). It may report values at the epochs in between; the runner
    reports ``value`` at ``step=b_k`` unless that step was reported. Raising
    :class:`optuna.TrialPruned` drops the configuration (told ``PRUNED``, it never competes).

    **Trials and storage.** Trials stay ``RUNNING`` across rounds; the losers of a round are
    told ``PRUNED`` (their value is the one at their last rung end), and the survivors of the
    last round are told ``COMPLETE`` with their value at ``max_resource``. A non-finite value
    is never promoted and is told ``PRUNED``. Ties go to the configuration asked first. The
    progress is kept in the storage: the trial system attrs ``"SynchronousMORL:bracket"``,
    ``"SynchronousMORL:config"`` (its index in the bracket) and
    ``"SynchronousMORL:completed_rung_{k}"`` (the value at ``b_k``), and the study system attr
    ``"SynchronousMORL:layout"``, which a runner with other arguments refuses (``ValueError``).
    Without an ``artifact_store`` the states are kept in memory on the runner, so the same
    runner can go on after :meth:`optimize` returned early (``max_rounds``) or raised. With an
    ``artifact_store`` each state is saved as an artifact of its trial (its id in
    ``"SynchronousMORL:checkpoint_{k}"``, loaded with ``weights_only=True``) and not kept in
    memory, so a new runner in a new process resumes the run: it re-attaches the ``RUNNING``
    trials by id, skips the rounds done, retrains the configuration that was interrupted from
    its last state, and ends with the same trials and values as an uninterrupted run when
    ``train_fn`` is deterministic (and, for a run interrupted in its first round, when the
    sampler draws the remaining configurations as it would have). Values ``train_fn``
    reported in the interrupted round before the crash stay, and its second reports of those
    steps are ignored by Optuna with a warning. A trial that a killed run had just asked for
    (the study's newest trial, RUNNING, with no parameters and no bracket yet) is taken over
    rather than left RUNNING. These trials run under ask-and-tell, so Optuna's heartbeat
    never fails them: a resumed runner re-attaches them itself. The checkpoints of pruned
    trials are removed; each completed trial keeps its final one. One process at a time may
    run a study's rounds.

    Example:

        .. testcode::

            import optuna
            import torch

            from optuna_ext.pruners import SynchronousMORL

            x = torch.randn(64, 4)
            y = x.sum(dim=1, keepdim=True)


            def train_fn(trial, round):
                model = torch.nn.Linear(4, 1)
                lr = trial.suggest_float("lr", 1e-3, 1.0, log=True)
                optimizer = torch.optim.SGD(model.parameters(), lr=lr)
                if round.state is not None:
                    model.load_state_dict(round.state["model"])
                    optimizer.load_state_dict(round.state["optimizer"])
                scheduler = round.schedule(optimizer, steps_per_epoch=4)
                for epoch in round.epochs:
                    for xb, yb in zip(x.split(16), y.split(16)):
                        optimizer.zero_grad()
                        torch.nn.functional.mse_loss(model(xb), yb).backward()
                        optimizer.step()
                        scheduler.step()
                with torch.no_grad():
                    loss = torch.nn.functional.mse_loss(model(x), y).item()
                state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
                return loss, state


            runner = SynchronousMORL(max_resource=9, n_configs=9, min_exponent=0)
            study = optuna.create_study()
            best = runner.optimize(study, train_fn)  # rounds of 9, 3 and 1 configurations
            assert best.number == study.best_trial.number

    Args:
        max_resource:
            The maximum resource ``r``: the epochs of a full run, the end of the last round.
        n_configs:
            The number of configurations ``n`` each bracket starts with.
        reduction_factor:
            The reduction factor ``eta`` (``>= 2``): the top ``1 / eta`` of a round go on, and
            the rung ends grow by ``eta``.
        min_exponent:
            The minimum exponent ``s_min``: the first round ends at ``eta**s_min`` epochs.
            Defaults to 2 (the paper's). Give either this or ``min_resource``.
        min_resource:
            The end of the first round in epochs, for a first rung other than a power of
            ``eta``. Give either this or ``min_exponent``.
        last_rung:
            ``"separate"`` or ``"stretched"``: where the last round ends when ``max_resource``
            is not a rung end of the ladder, as in :class:`~optuna_ext.pruners.MORLPruner`
            (``"stretched"`` is Algorithm 1's).
        recurring:
            :obj:`True` (MORL) for a schedule condensed into and restarted in every round;
            :obj:`False` for one schedule over the whole run ``[0, max_resource]``, i.e. plain
            synchronous successive halving (the paper's SHA baseline) with the same rungs.
        schedule_kind:
            The default kind of :meth:`SynchronousRound.schedule`: ``"cosine"`` (the
            paper's), ``"step"``, ``"linear"`` or ``"cyclic"``.
        min_lr:
            The default ``min_lr`` of :meth:`SynchronousRound.schedule`.
        artifact_store:
            An Optuna artifact store (e.g.
            :class:`~optuna.artifacts.FileSystemArtifactStore`) to keep the states in, so that
            the run survives a restart; :obj:`None` keeps them in memory.
    """

    def __init__(
        self,
        *,
        max_resource: int,
        n_configs: int,
        reduction_factor: int = 3,
        min_exponent: int | None = None,
        min_resource: int | None = None,
        last_rung: LastRung = "separate",
        recurring: bool = True,
        schedule_kind: ScheduleKind = "cosine",
        min_lr: float = 0.0,
        artifact_store: ArtifactStore | None = None,
    ) -> None:
        reduction_factor = check_int("reduction_factor", reduction_factor, 2)
        max_resource = check_int("max_resource", max_resource, 1)
        first_end = first_rung_end(
            reduction_factor, min_exponent, min_resource, "round", max_resource
        )
        n_configs = check_int("n_configs", n_configs, 1)
        if not isinstance(recurring, bool):
            raise ValueError(f"The value of `recurring` is {recurring!r}, but must be a bool.")
        _check_schedule_defaults(last_rung, schedule_kind, min_lr)
        if artifact_store is not None and not all(
            callable(getattr(artifact_store, name, None))
            for name in ("open_reader", "write", "remove")
        ):
            raise ValueError(
                f"The value of `artifact_store` is {artifact_store!r}, but must be an Optuna "
                "artifact store (with `open_reader`, `write` and `remove`) or None."
            )

        self._max_resource = max_resource
        self._n_configs = n_configs
        self._reduction_factor = reduction_factor
        self._boundaries = rung_ends(first_end, reduction_factor, max_resource, last_rung)
        self._recurring = recurring
        self._schedule_kind: ScheduleKind = schedule_kind
        self._min_lr = float(min_lr)
        self._artifact_store = artifact_store
        self._n_per_rung = tuple(
            max(n_configs // reduction_factor**k, 1) for k in range(len(self._boundaries))
        )
        self._layout: dict[str, Any] = {
            "boundaries": list(self._boundaries),
            "n_configs": n_configs,
            "reduction_factor": reduction_factor,
            "recurring": recurring,
            "schedule_kind": schedule_kind,
            "min_lr": float(min_lr),
        }
        # Without an artifact store: the states of unfinished trials, per storage and trial id.
        self._states: weakref.WeakKeyDictionary[BaseStorage, dict[int, dict[str, Any]]] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def boundaries(self) -> tuple[int, ...]:
        """The rung ends ``b_k`` in epochs, strictly increasing, the last ``max_resource``."""
        return self._boundaries

    @property
    def schedule_boundaries(self) -> tuple[int, ...]:
        """The schedule's boundaries: the rung ends, or ``(max_resource,)`` if not recurring."""
        return self._boundaries if self._recurring else (self._max_resource,)

    @property
    def n_configs_per_rung(self) -> tuple[int, ...]:
        """The configurations trained in each round: ``max(floor(n * eta**-k), 1)``."""
        return self._n_per_rung

    @property
    def epochs_per_bracket(self) -> int:
        """The epochs one bracket trains in all, ``sum_k n_k * (b_k - b_{k-1})``."""
        starts = (0,) + self._boundaries[:-1]
        return sum(
            n * (end - start)
            for n, start, end in zip(self._n_per_rung, starts, self._boundaries, strict=True)
        )

    def optimize(
        self,
        study: optuna.Study,
        train_fn: TrainFn,
        *,
        n_brackets: int = 1,
        max_rounds: int | None = None,
    ) -> optuna.trial.FrozenTrial | None:
        """Run (or resume) brackets ``0 .. n_brackets - 1`` of synchronous successive halving.

        Brackets whose trials are all finished are skipped; the first unfinished one resumes
        at its first unfinished round. Each bracket asks for fresh configurations, so a
        model-based sampler (e.g. TPE) learns from the trials of the brackets before it.

        Args:
            study:
                A single-objective study (any sampler; its pruner is not used).
            train_fn:
                ``train_fn(trial, round) -> (value, state)``; see the class documentation.
            n_brackets:
                The number of brackets, i.e. repetitions of successive halving with
                ``n_configs`` fresh configurations each (``>= 1``).
            max_rounds:
                Return after this many rounds have been completed in this call (``>= 1``), or
                :obj:`None` to run all brackets to the end. A later call goes on from there.

        Returns:
            The best trial completed in any bracket of this runner in ``study`` so far, or
            :obj:`None` when no trial has completed yet.
        """
        n_brackets = check_int("n_brackets", n_brackets, 1)
        if max_rounds is not None:
            max_rounds = check_int("max_rounds", max_rounds, 1)
        if not callable(train_fn):
            raise ValueError(f"The value of `train_fn` is {train_fn!r}, but must be callable.")
        if len(study.directions) != 1:
            raise ValueError(
                f"The study {study.study_name!r} has {len(study.directions)} objectives, but "
                "SynchronousMORL ranks one value per trial: use a single-objective study."
            )
        self._check_layout(study)

        rounds_done = 0
        for bracket in range(n_brackets):
            for rung in range(len(self._boundaries)):
                if max_rounds is not None and rounds_done >= max_rounds:
                    return self._best_trial(study)
                if self._run_round(study, train_fn, bracket, rung):
                    rounds_done += 1
        return self._best_trial(study)

    # ----------------------------------------------------------------------------------------

    def _check_layout(self, study: optuna.Study) -> None:
        storage = study._storage
        stored = storage.get_study_system_attrs(study._study_id).get(LAYOUT_KEY)
        if stored is None:
            storage.set_study_system_attr(study._study_id, LAYOUT_KEY, self._layout)
            stored = storage.get_study_system_attrs(study._study_id).get(LAYOUT_KEY)
        if stored != self._layout:
            raise ValueError(
                f"The study {study.study_name!r} was run with the layout {stored} (study system "
                f"attr {LAYOUT_KEY!r}), but this SynchronousMORL has {self._layout}: resume a "
                "run with the arguments it started with, or start a new study."
            )

    def _bracket_trials(
        self, study: optuna.Study, bracket: int
    ) -> dict[int, optuna.trial.FrozenTrial]:
        """The trials of ``bracket`` by configuration index."""
        trials: dict[int, optuna.trial.FrozenTrial] = {}
        for t in study.get_trials(deepcopy=False):
            if t.system_attrs.get(BRACKET_KEY) == bracket and CONFIG_KEY in t.system_attrs:
                trials[int(t.system_attrs[CONFIG_KEY])] = t
        return trials

    def _participants(
        self, trials: dict[int, optuna.trial.FrozenTrial], rung: int, maximize: bool
    ) -> list[int] | None:
        """The configuration indices of round ``rung``, or None while an earlier one is open.

        Round 0 has all ``n_configs``; round ``k + 1`` the best ``n_{k+1}`` of round ``k`` by
        finite value at ``b_k``, ties to the lower index. A configuration dropped by
        ``train_fn`` (finished without a value) does not compete.
        """
        members = list(range(self._n_configs))
        for k in range(rung):
            key = rung_value_key(k)
            for i in members:
                t = trials.get(i)
                if t is None or (key not in t.system_attrs and t.state == TrialState.RUNNING):
                    return None
            scored = [
                (float(trials[i].system_attrs[key]), i)
                for i in members
                if trials[i].system_attrs.get(key) is not None
            ]
            scored.sort(key=lambda vi: (-vi[0] if maximize else vi[0], vi[1]))
            members = sorted(i for _, i in scored[: self._n_per_rung[k + 1]])
        return members

    def _run_round(self, study: optuna.Study, train_fn: TrainFn, bracket: int, rung: int) -> bool:
        """Run round ``rung`` of ``bracket`` unless it is closed; return whether it ran."""
        maximize = study.direction == StudyDirection.MAXIMIZE
        trials = self._bracket_trials(study, bracket)
        members = self._participants(trials, rung, maximize)
        if members is None:
            raise AssertionError("unreachable: the rounds of a bracket run in order")
        is_last = rung == len(self._boundaries) - 1
        if self._is_closed(trials, members, rung, maximize):
            return False

        key = rung_value_key(rung)
        start = self._boundaries[rung - 1] if rung > 0 else 0
        end = self._boundaries[rung]
        _logger.info(
            f"SynchronousMORL bracket {bracket}, round {rung}: {len(members)} configurations, "
            f"epochs {start} to {end}."
        )
        for i in members:
            frozen = trials.get(i)
            if frozen is None:
                trial = self._new_trial(study)
                study._storage.set_trial_system_attr(trial._trial_id, BRACKET_KEY, bracket)
                study._storage.set_trial_system_attr(trial._trial_id, CONFIG_KEY, i)
            elif key in frozen.system_attrs or frozen.state != TrialState.RUNNING:
                continue
            else:
                # A trial of an earlier round or an earlier run: re-attach it by id.
                trial = optuna.trial.Trial(study, frozen._trial_id)
            self._train(study, trial, train_fn, bracket, rung, start, end, is_last)

        trials = self._bracket_trials(study, bracket)
        survivors = set() if is_last else set(self._participants(trials, rung + 1, maximize) or ())
        self._tell(study, trials, members, survivors, rung)
        return True

    def _new_trial(self, study: optuna.Study) -> optuna.trial.Trial:
        """Ask for a configuration's trial, or adopt the one a killed run had just asked for.

        A run killed between ``study.ask()`` and writing the trial's configuration index leaves
        the study's newest trial RUNNING, unlabelled and without parameters; it is taken over,
        so that the trial numbers (and what a sampler seeded by them draws) stay those of an
        uninterrupted run, and no trial is left RUNNING for ever.
        """
        trials = study.get_trials(deepcopy=False)
        if trials:
            newest = trials[-1]
            if (
                newest.state == TrialState.RUNNING
                and CONFIG_KEY not in newest.system_attrs  # written after BRACKET_KEY
                and not newest.params
                and not newest.intermediate_values
            ):
                _logger.info(
                    f"SynchronousMORL: trial {newest.number}, asked for by a run that stopped "
                    "before it was used, is taken over."
                )
                return optuna.trial.Trial(study, newest._trial_id)
        return study.ask()

    def _is_closed(
        self,
        trials: dict[int, optuna.trial.FrozenTrial],
        members: list[int],
        rung: int,
        maximize: bool,
    ) -> bool:
        """Whether every member of the round has its value and only survivors still run."""
        key = rung_value_key(rung)
        running = [i for i in members if i not in trials or trials[i].state == TrialState.RUNNING]
        if any(i not in trials or key not in trials[i].system_attrs for i in running):
            return False
        if rung == len(self._boundaries) - 1:
            return not running
        survivors = set(self._participants(trials, rung + 1, maximize) or ())
        return all(i in survivors for i in running)

    def _train(
        self,
        study: optuna.Study,
        trial: optuna.trial.Trial,
        train_fn: TrainFn,
        bracket: int,
        rung: int,
        start: int,
        end: int,
        is_last: bool,
    ) -> None:
        storage = study._storage
        state = self._load_state(study, trial, rung)
        round_ = SynchronousRound(
            bracket=bracket,
            rung=rung,
            start_epoch=start,
            end_epoch=end,
            is_last=is_last,
            state=state,
            schedule_boundaries=self.schedule_boundaries,
            schedule_kind=self._schedule_kind,
            min_lr=self._min_lr,
        )
        try:
            result = train_fn(trial, round_)
        except optuna.TrialPruned:
            self._drop_state(study, trial._trial_id, rung - 1)
            study.tell(trial, state=TrialState.PRUNED)
            return
        if not (isinstance(result, tuple) and len(result) == 2):
            raise ValueError(
                f"`train_fn` returned {type(result).__name__}, but must return a pair "
                "`(value, state)`."
            )
        value = float(result[0])
        new_state = result[1]
        if not isinstance(new_state, Mapping):
            raise ValueError(
                f"`train_fn` returned a state of type {type(new_state).__name__}, but the state "
                "must be a mapping (e.g. a dict of state dicts)."
            )
        # Save the state before recording the rung value: a run interrupted in between
        # retrains this round from the previous state.
        if self._artifact_store is not None:
            artifact_id = save_checkpoint(
                new_state,
                artifact_store=self._artifact_store,
                study_or_trial=trial,
                filename=f"synchronous_morl_rung{rung}.pt",
            )
            storage.set_trial_system_attr(trial._trial_id, checkpoint_key(rung), artifact_id)
        else:
            self._states.setdefault(storage, {})[trial._trial_id] = dict(new_state)
        frozen = storage.get_trial(trial._trial_id)
        if end not in frozen.intermediate_values:
            trial.report(value, step=end)
        storage.set_trial_system_attr(
            trial._trial_id, rung_value_key(rung), value if math.isfinite(value) else None
        )
        self._drop_state(study, trial._trial_id, rung - 1)

    def _load_state(
        self, study: optuna.Study, trial: optuna.trial.Trial, rung: int
    ) -> dict[str, Any] | None:
        if rung == 0:
            return None
        if self._artifact_store is None:
            states = self._states.get(study._storage, {})
            if trial._trial_id not in states:
                raise RuntimeError(
                    f"Trial {trial.number} completed round {rung - 1}, but its state is not in "
                    "this runner's memory: the run was started by another runner without an "
                    "`artifact_store`. Pass the artifact store the states were saved in."
                )
            return states[trial._trial_id]
        attrs = study._storage.get_trial_system_attrs(trial._trial_id)
        artifact_id = attrs.get(checkpoint_key(rung - 1))
        if artifact_id is None:
            raise RuntimeError(
                f"Trial {trial.number} completed round {rung - 1}, but has no checkpoint "
                f"(trial system attr {checkpoint_key(rung - 1)!r}): the run was started "
                "without an `artifact_store`."
            )
        return load_checkpoint(artifact_store=self._artifact_store, artifact_id=artifact_id)

    def _drop_state(self, study: optuna.Study, trial_id: int, rung: int) -> None:
        """Forget the state at the end of ``rung`` (no-op for ``rung < 0``)."""
        if rung < 0:
            return
        if self._artifact_store is None:
            return
        attrs = study._storage.get_trial_system_attrs(trial_id)
        artifact_id = attrs.get(checkpoint_key(rung))
        if artifact_id is not None:
            remove_checkpoint(artifact_store=self._artifact_store, artifact_id=artifact_id)

    def _tell(
        self,
        study: optuna.Study,
        trials: dict[int, optuna.trial.FrozenTrial],
        members: list[int],
        survivors: set[int],
        rung: int,
    ) -> None:
        """Tell the losers of round ``rung`` PRUNED, or its members COMPLETE after the last."""
        key = rung_value_key(rung)
        is_last = rung == len(self._boundaries) - 1
        memory = self._states.get(study._storage, {})
        for i in members:
            t = trials[i]
            if t.state != TrialState.RUNNING or i in survivors:
                continue
            value = t.system_attrs.get(key)
            if is_last and value is not None:
                study.tell(t.number, float(value))
            else:
                self._drop_state(study, t._trial_id, rung)
                study.tell(t.number, state=TrialState.PRUNED)
            memory.pop(t._trial_id, None)
        _logger.info(
            f"SynchronousMORL round {rung} done: "
            + ("completed." if is_last else f"{len(survivors)} of {len(members)} promoted.")
        )

    def _best_trial(self, study: optuna.Study) -> optuna.trial.FrozenTrial | None:
        completed = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if BRACKET_KEY in t.system_attrs and t.value is not None
        ]
        if not completed:
            return None
        if study.direction == StudyDirection.MAXIMIZE:
            return max(completed, key=lambda t: (t.value, -t.number))
        return min(completed, key=lambda t: (t.value, t.number))
