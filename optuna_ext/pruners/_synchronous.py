from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
import math
import random
import time
from typing import Any
from typing import TYPE_CHECKING
import warnings
import weakref

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages._heartbeat import get_heartbeat_thread
from optuna.storages._heartbeat import is_heartbeat_enabled
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
from optuna_ext.samplers._storage_seeded import RETRIED_FROM_KEY
from optuna_ext.samplers._storage_seeded import RETRY_HISTORY_KEY
from optuna_ext.schedules import RecurringLR
from optuna_ext.schedules._recurring import PAPER_STEP_FRACTIONS


if TYPE_CHECKING:
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
DUPLICATE_KEY = f"{_PREFIX}:duplicate"
"""The trial system attr of a second trial of one configuration, cancelled before it trained
(two workers started the configuration at the same time)."""


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
    In exchange it suspends trials between rounds: a configuration that has finished its round
    waits (its trial ``WAITING``, its model and optimizer state kept in memory or in an
    artifact store) until the whole round has, and the study is driven by this runner
    (ask-and-tell), not by ``study.optimize``. (Do not call ``study.ask()`` or
    ``study.optimize`` on its study meanwhile: ``ask`` takes a WAITING trial, a suspended
    configuration, first.)

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

    **Trials and storage.** A trial is ``RUNNING`` while a worker trains it and ``WAITING``
    between its rounds; the losers of a round are told ``PRUNED`` (their value is the one at
    their last rung end), and the configurations of the last round are told ``COMPLETE`` with
    their value at ``max_resource``. A non-finite value is never promoted and is told
    ``PRUNED``. Ties go to the configuration with the lower index. The progress is kept in the
    storage: the trial system attrs ``"SynchronousMORL:bracket"``,
    ``"SynchronousMORL:config"`` (its index in the bracket) and
    ``"SynchronousMORL:completed_rung_{k}"`` (the value at ``b_k``), and the study system attr
    ``"SynchronousMORL:layout"``, which a runner with other arguments refuses (``ValueError``).
    Without an ``artifact_store`` the states are kept in memory on the runner, so the same
    runner can go on after :meth:`optimize` returned early (``max_rounds``) or raised. With an
    ``artifact_store`` each state is saved as an artifact of its trial (its id in
    ``"SynchronousMORL:checkpoint_{k}"``, loaded with ``weights_only=True``) and not kept in
    memory, so a new runner in a new process resumes the run: it skips the rounds done,
    retrains the configuration that was interrupted (released as ``WAITING`` by the exception
    that interrupted it) from its last state, and ends with the same trials and values as an
    uninterrupted run when ``train_fn`` is deterministic (and, for a run interrupted in its
    first round, when the sampler draws the remaining configurations as it would have).
    Values ``train_fn`` reported in the interrupted round before the crash stay, and its
    second reports of those steps are ignored by Optuna with a warning. The checkpoints of
    pruned trials are removed; each completed trial keeps its final one.

    **Several workers.** Start :meth:`optimize` with the same arguments, study and artifact
    store (on a disk or bucket all of them reach) in as many processes or machines as you
    like, at any time: each takes a configuration of the current round that nobody trains,
    trains it through the round and takes the next; when none is left it helps in the next
    bracket, or waits ``poll_interval`` seconds for the round to complete. Every configuration
    is trained once per round, and the promotions are those of one worker (each sees the whole
    round). A configuration of the first round is started by creating its trial with its
    bracket and index in one write; a waiting one is taken with Optuna's atomic ``WAITING``
    to ``RUNNING`` update. When two workers start the same configuration at once, the trial
    with the higher number is cancelled (``FAIL``, ``"SynchronousMORL:duplicate"``) before it
    trains. A worker that leaves between rounds leaves nothing behind. One that is killed
    while training leaves its trial ``RUNNING``: with Optuna's heartbeat
    (``RDBStorage(url, heartbeat_interval=..., grace_period=...)``, which the runner records
    while training) the trial is failed after the grace period and its configuration goes on
    from its last round in a copy (``"SynchronousMORL:copy_of"``; or in the copy that
    ``RetryHeartbeatStaleTrialCallback`` makes); without it, the other workers wait for that
    trial until it is failed by hand. Without an ``artifact_store`` each worker can only
    continue the configurations it trained itself.

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
        self._warned_no_heartbeat = False
        # The brackets found finished, per storage and study id (they never change again).
        self._done: weakref.WeakKeyDictionary[BaseStorage, dict[int, set[int]]] = (
            weakref.WeakKeyDictionary()
        )
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
        poll_interval: float = 0.5,
    ) -> optuna.trial.FrozenTrial | None:
        """Run (or resume, or join) brackets ``0 .. n_brackets - 1`` of synchronous halving.

        Brackets whose trials are all finished are skipped; the first unfinished one resumes
        at its first unfinished round. Each bracket asks for fresh configurations, so a
        model-based sampler (e.g. TPE) learns from the trials of the brackets before it.
        Several processes may call this on one study at once (see the class documentation).

        Args:
            study:
                A single-objective study (any sampler; its pruner is not used).
            train_fn:
                ``train_fn(trial, round) -> (value, state)``; see the class documentation.
            n_brackets:
                The number of brackets, i.e. repetitions of successive halving with
                ``n_configs`` fresh configurations each (``>= 1``).
            max_rounds:
                Return after this many rounds in which this call trained a configuration
                have been completed (``>= 1``), or :obj:`None` to run all brackets to the
                end. A later call goes on from there.
            poll_interval:
                Seconds to wait, when every configuration that can be trained now is being
                trained by another worker, before looking again (``> 0``).

        Returns:
            The best trial completed in any bracket of this runner in ``study`` so far, or
            :obj:`None` when no trial has completed yet.
        """
        n_brackets = check_int("n_brackets", n_brackets, 1)
        if max_rounds is not None:
            max_rounds = check_int("max_rounds", max_rounds, 1)
        if not callable(train_fn):
            raise ValueError(f"The value of `train_fn` is {train_fn!r}, but must be callable.")
        if not (isinstance(poll_interval, (int, float)) and math.isfinite(poll_interval)) or (
            poll_interval <= 0
        ):
            raise ValueError(
                f"The value of `poll_interval` is {poll_interval}, but must be "
                "`poll_interval > 0`."
            )
        if len(study.directions) != 1:
            raise ValueError(
                f"The study {study.study_name!r} has {len(study.directions)} objectives, but "
                "SynchronousMORL ranks one value per trial: use a single-objective study."
            )
        self._check_layout(study)

        heartbeat = is_heartbeat_enabled(study._storage)
        trained: set[tuple[int, int]] = set()  # the rounds (bracket, rung) this call trained in
        rng = random.Random()
        collided = False
        while True:
            if heartbeat:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ExperimentalWarning)
                    optuna.storages.fail_stale_trials(study)
            views = self._views(study, study.get_trials(deepcopy=False), n_brackets)
            if any(self._settle(study, view) for view in views):
                continue  # something changed: look again
            if max_rounds is not None:
                closed = 0
                for b, k in trained:
                    open_rung = views[b].rung
                    closed += open_rung is None or k < open_rung
                if closed >= max_rounds:
                    return self._best_trial(study)
            if all(view.rung is None for view in views):
                return self._best_trial(study)
            unit = self._next_unit(study, views, rng if collided else None)
            if unit is None:
                self._wait_or_raise(study, views, heartbeat, poll_interval)
                continue
            view, config = unit
            trial = self._claim(study, view, config)
            if trial is None:
                collided = True  # another worker was first: pick at random from now on
                continue
            assert view.rung is not None
            trained.add((view.bracket, view.rung))
            self._train(study, trial, train_fn, view.bracket, view.rung, heartbeat)

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

    def _views(
        self, study: optuna.Study, trials: Sequence[optuna.trial.FrozenTrial], n_brackets: int
    ) -> list[_BracketView]:
        """The views of brackets ``0 .. n_brackets - 1``, from one pass over the trials.

        A bracket whose trials are all finished never changes again: it is remembered (per
        storage and study) and not looked at again, so a step costs little more than reading
        the trials however many brackets the study has done.
        """
        done = self._done.setdefault(study._storage, {}).setdefault(study._study_id, set())
        by_bracket: dict[int, list[optuna.trial.FrozenTrial]] = {}
        for t in trials:
            bracket = t.system_attrs.get(BRACKET_KEY)
            if isinstance(bracket, int) and 0 <= bracket < n_brackets and bracket not in done:
                by_bracket.setdefault(bracket, []).append(t)
        views = []
        for b in range(n_brackets):
            if b in done:
                views.append(_BracketView(bracket=b))
                continue
            view = self._view(study, by_bracket.get(b, []), b)
            if view.rung is None and all(t.state.is_finished() for t in by_bracket.get(b, [])):
                done.add(b)
            views.append(view)
        return views

    def _view(
        self, study: optuna.Study, trials: Sequence[optuna.trial.FrozenTrial], bracket: int
    ) -> _BracketView:
        """The state of ``bracket``: its configurations' trials, open round and losers."""
        by_config: dict[int, list[optuna.trial.FrozenTrial]] = {}
        for t in trials:
            attrs = t.system_attrs
            if attrs.get(BRACKET_KEY) != bracket or CONFIG_KEY not in attrs:
                continue
            if DUPLICATE_KEY in attrs:
                continue
            by_config.setdefault(int(attrs[CONFIG_KEY]), []).append(t)
        view = _BracketView(bracket=bracket)
        for i, candidates in by_config.items():
            candidates.sort(key=lambda t: t.number)
            alive = [t for t in candidates if t.state != TrialState.FAIL]
            if alive:
                # The lowest-numbered trial of a configuration is its trial; one made at the
                # same time by another worker has a higher number and is cancelled.
                view.configs[i] = alive[0]
                view.extra.extend(alive[1:])
            else:
                view.lost[i] = candidates[-1]
        maximize = study.direction == StudyDirection.MAXIMIZE
        members = list(range(self._n_configs))
        for rung in range(len(self._boundaries)):
            key = rung_value_key(rung)
            is_last = rung == len(self._boundaries) - 1
            done = all(
                i in view.configs
                and (view.configs[i].state.is_finished() or (key in view.configs[i].system_attrs))
                and (not is_last or view.configs[i].state.is_finished())
                for i in members
            )
            if not done:
                view.rung, view.members = rung, members
                return view
            if is_last:
                break
            survivors = self._survivors(view.configs, members, rung, maximize)
            view.losers.extend(
                view.configs[i]
                for i in members
                if i not in survivors and not view.configs[i].state.is_finished()
            )
            members = survivors
        view.rung, view.members = None, []
        return view

    def _survivors(
        self,
        configs: Mapping[int, optuna.trial.FrozenTrial],
        members: Sequence[int],
        rung: int,
        maximize: bool,
    ) -> list[int]:
        """The best ``n_{rung+1}`` of round ``rung`` by finite value at ``b_rung``, ties to the
        lower index; a configuration dropped by ``train_fn`` (no value) does not compete."""
        key = rung_value_key(rung)
        scored = [
            (float(configs[i].system_attrs[key]), i)
            for i in members
            if configs[i].system_attrs.get(key) is not None
        ]
        scored.sort(key=lambda vi: (-vi[0] if maximize else vi[0], vi[1]))
        return sorted(i for _, i in scored[: self._n_per_rung[rung + 1]])

    def _settle(self, study: optuna.Study, view: _BracketView) -> bool:
        """Cancel second trials of a configuration, tell the losers of closed rounds PRUNED and
        copy the configurations whose worker was lost; return whether anything changed."""
        storage = study._storage
        changed = False
        for t in view.extra:
            if t.state == TrialState.WAITING and _claim_waiting(storage, t._trial_id):
                storage.set_trial_system_attr(t._trial_id, DUPLICATE_KEY, True)
                storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
                changed = True
        for t in view.losers:
            if t.state == TrialState.WAITING and _claim_waiting(storage, t._trial_id):
                if t.system_attrs.get(RETRY_HISTORY_KEY):
                    # A retry gets its original's reports, so that its value is the last one.
                    _inherit_reports(storage, study.get_trials(deepcopy=False), t)
                self._drop_state(study, t._trial_id, _last_rung_done(t))
                self._states.get(storage, {}).pop(t._trial_id, None)
                study.tell(t.number, state=TrialState.PRUNED)
                changed = True
        for i, t in view.lost.items():
            if i in view.members:
                # Its worker was lost (the trial failed as stale): go on from its last round.
                storage.create_new_trial(study._study_id, template_trial=_copy_of(t))
                _logger.warning(
                    f"SynchronousMORL: trial {t.number} (bracket {view.bracket}, configuration "
                    f"{i}) failed while it was trained; its configuration goes on in a copy."
                )
                changed = True
        return changed

    def _next_unit(
        self, study: optuna.Study, views: Sequence[_BracketView], rng: random.Random | None
    ) -> tuple[_BracketView, int] | None:
        """The first bracket with a configuration to train now, and that configuration.

        Configurations of the earliest bracket come first; within it the lowest index, or,
        after a collision with another worker, one chosen at random.
        """
        memory = self._states.get(study._storage, {})
        for view in views:
            if view.rung is None:
                continue
            key = rung_value_key(view.rung)
            ready = []
            for i in view.members:
                t = view.configs.get(i)
                if t is None:
                    if view.rung == 0 and i not in view.lost:
                        ready.append(i)
                elif t.state == TrialState.WAITING and key not in t.system_attrs:
                    if view.rung == 0 or self._artifact_store is not None or t._trial_id in memory:
                        ready.append(i)
            if ready:
                return view, (rng.choice(ready) if rng is not None else ready[0])
        return None

    def _claim(
        self, study: optuna.Study, view: _BracketView, config: int
    ) -> optuna.trial.Trial | None:
        """Take ``config`` of the view's open round for this worker, or None if another was first.

        A configuration of the first round without a trial gets a new RUNNING trial (its
        bracket and index in the same write); a waiting one is claimed by Optuna's atomic
        WAITING -> RUNNING update. Then the claim is checked against the trials of the
        configuration: when a lower-numbered one exists (made at the same time by another
        worker), this one is cancelled.
        """
        storage = study._storage
        existing = view.configs.get(config)
        if existing is None:
            template = optuna.trial.create_trial(
                state=TrialState.RUNNING,
                system_attrs={BRACKET_KEY: view.bracket, CONFIG_KEY: config},
            )
            trial_id = storage.create_new_trial(study._study_id, template_trial=template)
        else:
            trial_id = existing._trial_id
            if not _claim_waiting(storage, trial_id):
                return None
        try:
            if isinstance(storage, BaseHeartbeat) and is_heartbeat_enabled(storage):
                # At once: a worker killed before its heartbeat thread starts still leaves a
                # trial that becomes stale.
                storage.record_heartbeat(trial_id)
            trials = study.get_trials(deepcopy=False)
            mine = self._view(study, trials, view.bracket).configs.get(config)
            if mine is None or mine._trial_id != trial_id:
                storage.set_trial_system_attr(trial_id, DUPLICATE_KEY, True)
                storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
                return None
            _inherit_reports(storage, trials, mine)
            study._thread_local.cached_all_trials = None
            return optuna.trial.Trial(study, trial_id)
        except BaseException:
            # Interrupted (Ctrl-C, an error) after the trial was taken and before it trains:
            # release it, as `_train` does, so that the next worker takes it at once.
            try:
                storage.set_trial_state_values(trial_id, state=TrialState.WAITING)
            except Exception:  # pragma: no cover - the storage is gone as well
                _logger.warning(f"SynchronousMORL: could not release trial id {trial_id}.")
            raise

    def _wait_or_raise(
        self,
        study: optuna.Study,
        views: Sequence[_BracketView],
        heartbeat: bool,
        poll_interval: float,
    ) -> None:
        """Nothing to train now: wait for the other workers, or raise if none is training."""
        running = [
            t
            for view in views
            if view.rung is not None
            for t in (*view.configs.values(), *view.extra, *view.losers)
            if t.state == TrialState.RUNNING
        ]
        if not running:
            memory = self._states.get(study._storage, {})
            stuck = [
                t
                for view in views
                for t in view.configs.values()
                if t.state == TrialState.WAITING and t._trial_id not in memory
            ]
            if stuck and self._artifact_store is None:
                raise RuntimeError(
                    f"Trial {stuck[0].number} completed round {_last_rung_done(stuck[0])}, but "
                    "its state is not in this runner's memory: the run was started by another "
                    "runner without an `artifact_store`. Pass the artifact store the states "
                    "were saved in (several workers need one)."
                )
            raise RuntimeError(  # pragma: no cover - every open round has a unit or a runner
                "SynchronousMORL found nothing to train and no trial being trained."
            )
        if not heartbeat and not self._warned_no_heartbeat:
            self._warned_no_heartbeat = True
            _logger.info(
                f"SynchronousMORL: waiting for trials {[t.number for t in running]} that other "
                "workers are training. The storage has no heartbeat: if such a worker was "
                "killed, fail its trial by hand (`study.tell(number, state=TrialState.FAIL)`) "
                "and the configuration goes on in a copy."
            )
        time.sleep(poll_interval)

    def _train(
        self,
        study: optuna.Study,
        trial: optuna.trial.Trial,
        train_fn: TrainFn,
        bracket: int,
        rung: int,
        heartbeat: bool,
    ) -> None:
        """Train ``trial`` through round ``rung``; park it (WAITING) or tell it at the end."""
        storage = study._storage
        start = self._boundaries[rung - 1] if rung > 0 else 0
        end = self._boundaries[rung]
        is_last = rung == len(self._boundaries) - 1
        try:
            with get_heartbeat_thread(trial._trial_id, storage):
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
                result = train_fn(trial, round_)
                value, new_state = _check_result(result)
                # Save the state before recording the rung value: a run interrupted in between
                # retrains this round from the previous state.
                if self._artifact_store is not None:
                    artifact_id = save_checkpoint(
                        new_state,
                        artifact_store=self._artifact_store,
                        study_or_trial=trial,
                        filename=f"synchronous_morl_rung{rung}.pt",
                    )
                    storage.set_trial_system_attr(
                        trial._trial_id, checkpoint_key(rung), artifact_id
                    )
                else:
                    self._states.setdefault(storage, {})[trial._trial_id] = dict(new_state)
                frozen = storage.get_trial(trial._trial_id)
                if end not in frozen.intermediate_values:
                    trial.report(value, step=end)
                storage.set_trial_system_attr(
                    trial._trial_id, rung_value_key(rung), value if math.isfinite(value) else None
                )
        except optuna.TrialPruned:
            self._drop_state(study, trial._trial_id, rung - 1)
            self._states.get(storage, {}).pop(trial._trial_id, None)
            study.tell(trial, state=TrialState.PRUNED)
            return
        except BaseException:
            # Interrupted (an error, Ctrl-C): the configuration waits for the next worker, which
            # trains this round again from the previous state.
            try:
                storage.set_trial_state_values(trial._trial_id, state=TrialState.WAITING)
            except Exception:  # pragma: no cover - the storage is gone as well
                _logger.warning(f"SynchronousMORL: could not release trial {trial.number}.")
            raise
        self._drop_state(study, trial._trial_id, rung - 1)
        _logger.info(
            f"SynchronousMORL bracket {bracket}, round {rung}: trial {trial.number} trained to "
            f"epoch {end}."
        )
        if is_last:
            self._states.get(storage, {}).pop(trial._trial_id, None)
            if math.isfinite(value):
                study.tell(trial, value)
            else:
                self._drop_state(study, trial._trial_id, rung)
                study.tell(trial, state=TrialState.PRUNED)
        else:
            # Suspended until the round is complete: then it goes on, or is told PRUNED.
            storage.set_trial_state_values(trial._trial_id, state=TrialState.WAITING)

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


@dataclass
class _BracketView:
    """One bracket as read from the trials.

    Attributes:
        bracket: The bracket.
        configs: The trial of each configuration that has one (not failed; the lowest number).
        extra: Further live trials of a configuration, made by two workers at once.
        lost: The last trial of each configuration whose every trial failed (killed workers).
        rung: The first round not complete yet, or None when the bracket is done.
        members: The configurations of that round.
        losers: Configurations out of a complete round that are not told PRUNED yet.
    """

    bracket: int
    configs: dict[int, optuna.trial.FrozenTrial] = field(default_factory=dict)
    extra: list[optuna.trial.FrozenTrial] = field(default_factory=list)
    lost: dict[int, optuna.trial.FrozenTrial] = field(default_factory=dict)
    rung: int | None = None
    members: list[int] = field(default_factory=list)
    losers: list[optuna.trial.FrozenTrial] = field(default_factory=list)


def _claim_waiting(storage: BaseStorage, trial_id: int) -> bool:
    """Optuna's atomic WAITING -> RUNNING update: True for the one process that made it."""
    try:
        return storage.set_trial_state_values(trial_id, state=TrialState.RUNNING)
    except UpdateFinishedTrialError:
        return False


def _last_rung_done(trial: optuna.trial.FrozenTrial) -> int:
    """The last round whose value the trial has recorded, or -1."""
    rung = -1
    while rung_value_key(rung + 1) in trial.system_attrs:
        rung += 1
    return rung


def _inherit_reports(
    storage: BaseStorage,
    trials: Sequence[optuna.trial.FrozenTrial],
    trial: optuna.trial.FrozenTrial,
) -> None:
    """Give a retry the values its failed original reported and it lacks.

    Optuna's ``RetryHeartbeatStaleTrialCallback`` copies no intermediate values unless asked
    (``inherit_intermediate_values``), so a configuration continued in its retry would show
    only the rounds after the failure in the dashboard; the ranking does not depend on them
    (the rung values are system attrs, which are copied).
    """
    history = trial.system_attrs.get(RETRY_HISTORY_KEY)
    if not history or not isinstance(history[-1], int):
        return
    original = next((t for t in trials if t.number == history[-1]), None)
    if original is None:
        return
    for step, value in sorted(original.intermediate_values.items()):
        if step not in trial.intermediate_values:
            storage.set_trial_intermediate_value(trial._trial_id, step, value)


def _copy_of(trial: optuna.trial.FrozenTrial) -> optuna.trial.FrozenTrial:
    """A WAITING copy of a failed trial, with its configuration, progress and checkpoints.

    The copy is marked as Optuna's ``RetryHeartbeatStaleTrialCallback`` marks a retry (the
    system attrs ``"failed_trial"``, the first trial of the configuration, and
    ``"retry_history"``), so that ``RetryHeartbeatStaleTrialCallback.retried_trial_number``
    finds the original and a sampler seeded per draw (``StorageSeededRandomSampler``) does not
    count the copy as a new draw.
    """
    attrs = trial.system_attrs
    history = list(attrs.get(RETRY_HISTORY_KEY, []))
    return optuna.trial.create_trial(
        state=TrialState.WAITING,
        params=trial.params,
        distributions=trial.distributions,
        user_attrs=trial.user_attrs,
        system_attrs={
            **attrs,
            f"{_PREFIX}:copy_of": trial.number,
            RETRIED_FROM_KEY: attrs.get(RETRIED_FROM_KEY, trial.number),
            RETRY_HISTORY_KEY: [*history, trial.number],
        },
        intermediate_values=trial.intermediate_values,
    )


def _check_result(result: object) -> tuple[float, Mapping[str, Any]]:
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
    return value, new_state
