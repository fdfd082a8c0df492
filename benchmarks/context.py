"""What a method gets (:class:`RunContext`) and gives back (:class:`Outcome`).

The context holds the problem, the budget, the seed and the job's study, and trains models the
same way for every method (:meth:`RunContext.train`: SGD through :func:`optuna_ext.tasks.fit`
with the problem's batch size, one cosine over the run by default). Every epoch trained
through it is counted against the budget and recorded as an :class:`Event` (epochs, validation
accuracy, wall time), from which the runner derives the best-so-far curve, the epochs and
time to the target and the epochs spent. Online methods that train through their own loops
record their epochs with :meth:`RunContext.record`.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
import dataclasses
import math
from typing import Any
from typing import cast
from typing import TYPE_CHECKING

import numpy as np
import optuna
from optuna.trial import TrialState

from benchmarks._lease import LeaseLost
from optuna_ext._storage import load_or_create_study


if TYPE_CHECKING:
    from optuna.pruners import BasePruner
    from optuna.samplers import BaseSampler
    from optuna.storages import BaseStorage
    from optuna.trial import BaseTrial
    from optuna.trial import FrozenTrial
    import torch
    from torch import nn
    from tqdm import tqdm

    from benchmarks._lease import Lease
    from benchmarks.problems import Budget
    from benchmarks.problems import Problem
    from optuna_ext.tasks import DatasetSplit
    from optuna_ext.tasks import FitResult


CLOCK_ATTR = "bench:clock"
"""Trial user attr: the run's wall time (s) after each epoch of the trial."""
INTERRUPTED_ATTR = "bench:interrupted"
"""Trial user attr of a trial failed because its session stopped (run again on resume)."""
RETRY_OF_ATTR = "bench:retry_of"
"""Trial user attr of a trial that runs an interrupted trial's configuration again."""
CUT_ATTR = "bench:cut"
"""Trial user attr of a trial stopped because the run's budget was spent."""
TEST_ATTR = "test_accuracy"
TRAIN_ATTR = "train_accuracy"
_DONE = (TrialState.COMPLETE, TrialState.PRUNED)

Schedule = Callable[["torch.optim.Optimizer", int], Any]
"""``schedule(optimizer, steps_per_epoch) -> LRScheduler``, as :func:`optuna_ext.tasks.fit`
takes it."""


@dataclasses.dataclass(frozen=True)
class Event:
    """One epoch (or a part of one) trained by a method.

    Attributes:
        epochs: The epochs trained (1 for an epoch; a fraction for an LR range test).
        value: The validation accuracy of the model after it (:obj:`None`: not evaluated).
        clock: The run's wall time (s) when it ended.
        trial: The training run it belongs to (the trial number; 0 for an online method's
            single run).
    """

    epochs: float
    value: float | None
    clock: float
    trial: int


@dataclasses.dataclass
class Outcome:
    """What a method chose, and how its model does.

    Args:
        config: The chosen configuration (for an online method: its final or best member's
            hyper-parameters).
        valid_accuracy: The validation accuracy of the final model.
        test_accuracy: The test accuracy of the final model.
        train_accuracy: The accuracy of the final model on the training set.
        trials: The training runs (trials, candidates, segments) the method used.
        lr_per_epoch: For an online method, the learning rate of each epoch of its model.
        notes: A short remark for the report (e.g. why a search stopped).
        final_epochs: The epochs of a final training of ``config`` (not part of the budget).
    """

    config: dict[str, Any]
    valid_accuracy: float
    test_accuracy: float
    train_accuracy: float
    trials: int
    lr_per_epoch: list[float] | None = None
    notes: str = ""
    final_epochs: int = 0


@dataclasses.dataclass(frozen=True)
class Trained:
    """A model trained by :meth:`RunContext.train`, and how it does."""

    model: nn.Module
    fit: FitResult
    train_accuracy: float

    @property
    def valid_accuracy(self) -> float:
        return self.fit.valid_accuracy[-1]

    @property
    def test_accuracy(self) -> float:
        return self.fit.test_accuracy


class _EpochReporter:
    """Stands in for the trial in :func:`optuna_ext.tasks.fit` (which only calls ``report``
    and ``should_prune``): forwards to the real trial, records each epoch in the context, and
    stops training when the budget is spent or the job was taken over."""

    def __init__(
        self,
        ctx: RunContext,
        trial: optuna.Trial | None,
        *,
        epochs: int,
        prune: bool,
        counted: bool,
        run: int,
    ) -> None:
        self._ctx = ctx
        self._run = run
        self._trial = trial
        self._epochs = epochs
        self._prune = prune
        self._counted = counted
        self.clocks: list[float] = []
        self.cut = False
        self._step = 0

    def report(self, value: float, step: int) -> None:
        self._ctx.lease.check()
        if self._trial is not None:
            self._trial.report(value, step)
        clock = self._ctx.clock()
        self.clocks.append(round(clock, 2))
        if self._counted:
            self._ctx._add(Event(1.0, float(value), clock, self._run))
        self._step = step

    def should_prune(self) -> bool:
        if self._counted and self._step < self._epochs and self._ctx.left() <= 0:
            self.cut = True
            return True
        return self._prune and self._trial is not None and self._trial.should_prune()


def derived_seed(seed: int, *stream: int) -> int:
    """A seed for one stream of a run's randomness (31 bits, as torch and numpy take)."""
    state = np.random.SeedSequence([seed, *stream]).generate_state(1)[0]
    return int(state) & 0x7FFFFFFF


FINAL_RUN = -1
"""The run index of a final training in the recorded events."""
_STREAM_DATA = 1
_STREAM_FINAL = 2
_STREAM_SAMPLER = 3


class RunContext:
    """One run of one method on one problem with one seed.

    Args:
        problem: The problem.
        budget: The budget of the run.
        seed: The run's seed (initial weights, data order, sampler).
        storage: The benchmark storage.
        study_name: The job's study (it holds the trials of the trial-based methods).
        lease: The worker's hold on the job (its clock, and whether it was taken over).
        bar: A progress bar of the epochs, or :obj:`None`.
    """

    def __init__(
        self,
        *,
        problem: Problem,
        budget: Budget,
        seed: int,
        storage: BaseStorage,
        study_name: str,
        lease: Lease,
        bar: tqdm | None = None,
    ) -> None:
        self.problem = problem
        self.budget = budget
        self.seed = seed
        self.storage = storage
        self.study_name = study_name
        self.lease = lease
        self.bar = bar
        self.events: list[Event] = []
        self._loaded = False

    # -- facts -------------------------------------------------------------------------------

    @property
    def data(self) -> DatasetSplit:
        return self.problem.data

    @property
    def epochs(self) -> int:
        """``E``, the epochs of one full training run."""
        return self.budget.epochs

    def clock(self) -> float:
        """The run's wall time so far (s)."""
        return self.lease.elapsed()

    def spent(self) -> float:
        """The epochs trained so far."""
        return sum(e.epochs for e in self.events)

    def left(self) -> float:
        """The epochs the budget still allows."""
        return self.budget.total - self.spent()

    def model(self) -> nn.Module:
        """A fresh model of the problem, initialised from the run's seed."""
        return self.problem.build_model(self.seed)

    # -- recording -------------------------------------------------------------------------

    def _add(self, event: Event) -> None:
        self.events.append(event)
        if self.bar is not None:
            self.bar.update(event.epochs)

    def record(self, value: float | None, *, epochs: float = 1.0, trial: int = 0) -> None:
        """Record an epoch an online method trained by itself (and check the lease)."""
        self.lease.check()
        self._add(
            Event(float(epochs), None if value is None else float(value), self.clock(), trial)
        )

    # -- studies -----------------------------------------------------------------------------

    def study(
        self, sampler: BaseSampler | None = None, pruner: BasePruner | None = None
    ) -> optuna.Study:
        """The job's study with ``sampler`` and ``pruner``; the epochs of its finished trials
        (from earlier sessions of this job) are counted against the budget."""
        study = load_or_create_study(
            study_name=self.study_name,
            storage=self.storage,
            direction="maximize",
            sampler=sampler,
            pruner=pruner,
        )
        if not self._loaded:
            self._loaded = True
            for trial in study.get_trials(deepcopy=False, states=_DONE):
                self._load_trial(trial)
        return study

    def _load_trial(self, trial: FrozenTrial) -> None:
        clocks = list(trial.user_attrs.get(CLOCK_ATTR, []))
        for i, step in enumerate(sorted(trial.intermediate_values)):
            clock = float(clocks[i]) if i < len(clocks) else self.lease.prior_elapsed
            self._add(Event(1.0, float(trial.intermediate_values[step]), clock, trial.number))

    def attempt_study(self, sampler: BaseSampler | None = None) -> optuna.Study:
        """A fresh extra study of this session (for a method that restarts when taken over)."""
        return load_or_create_study(
            study_name=self.lease.attempt_study_name,
            storage=self.storage,
            direction="maximize",
            sampler=sampler,
        )

    def sampler_seed(self, study_name: str | None = None) -> int:
        """The seed of a sampler: the run's seed, or, when the study already holds trials
        (a resumed run), a seed derived from their number, so that the resumed sampler does not
        draw the first configurations again."""
        name = self.study_name if study_name is None else study_name
        try:
            study_id = self.storage.get_study_id_from_name(name)
        except KeyError:
            return self.seed
        n = len(self.storage.get_all_trials(study_id, deepcopy=False))
        return self.seed if n == 0 else derived_seed(self.seed, _STREAM_SAMPLER, n)

    # -- training ----------------------------------------------------------------------------

    def cosine(self, epochs: int | None = None) -> Schedule:
        """One cosine annealing over ``epochs`` (default ``E``), stepped per iteration."""
        from optuna_ext.schedules import RecurringLR

        length = self.epochs if epochs is None else epochs
        return lambda optimizer, steps: RecurringLR(
            optimizer, boundaries=[length], steps_per_epoch=steps
        )

    def train(
        self,
        config: dict[str, float],
        *,
        trial: optuna.Trial | None = None,
        epochs: int | None = None,
        schedule: Schedule | None | str = "cosine",
        prune: bool = False,
        counted: bool = True,
        optimizer: str = "sgd",
        hypergrad_lr: float | None = None,
        data_seed: int | None = None,
        epoch_callback: Callable[[int, nn.Module], object] | None = None,
        run: int | None = None,
    ) -> Trained:
        """Train a fresh model with ``config`` (``lr``, ``momentum``, ``weight_decay``).

        Every epoch is counted against the budget (unless ``counted=False``: the final
        training of a chosen configuration) and stops the training when the budget is spent
        (:class:`optuna.TrialPruned` is raised, the trial gets the user attr ``bench:cut``).
        With a ``trial``, each epoch's validation accuracy is reported to it (``prune``: and
        its pruner asked), and its user attrs get the wall time of each epoch, the test and
        the training accuracy.

        Args:
            config: The hyper-parameters.
            trial: The trial this training is for.
            epochs: The epochs (default ``E``).
            schedule: ``"cosine"`` (one cosine over the training), :obj:`None` (a constant
                rate) or a function ``(optimizer, steps_per_epoch) -> LRScheduler``.
            prune: Whether to ask the trial's pruner after each epoch.
            counted: Whether the epochs count against the budget.
            optimizer: A name of :func:`optuna_ext.tasks.make_optimizer`.
            hypergrad_lr: The hypergradient rate of ``"sgd_hd"`` and ``"adam_hd"``.
            data_seed: The seed of the data order (default: from the run's seed and the
                trial number).
            epoch_callback: Passed on to :func:`optuna_ext.tasks.fit`.
            run: The index of the training run in the recorded events (default: the trial
                number, or 0).
        """
        from optuna_ext.tasks import evaluate
        from optuna_ext.tasks import fit

        length = self.epochs if epochs is None else epochs
        if schedule == "cosine":
            schedule = self.cosine(length)
        elif isinstance(schedule, str):
            raise ValueError(
                f"The value of `schedule` is {schedule!r}, but must be 'cosine', None or a "
                "function."
            )
        if data_seed is None:
            number = trial.number if trial is not None else 0
            data_seed = derived_seed(self.seed, _STREAM_DATA, number)
        if run is None:
            run = trial.number if trial is not None else 0
        reporter = _EpochReporter(
            self, trial, epochs=length, prune=prune, counted=counted, run=run
        )
        model = self.model()
        try:
            result = fit(
                model,
                self.data,
                optimizer=optimizer,
                lr=float(config["lr"]),
                momentum=float(config.get("momentum", self.problem.baseline["momentum"])),
                weight_decay=float(
                    config.get("weight_decay", self.problem.baseline["weight_decay"])
                ),
                hypergrad_lr=hypergrad_lr,
                batch_size=self.problem.batch_size,
                epochs=length,
                schedule=schedule,
                seed=data_seed,
                trial=cast("BaseTrial", reporter),
                prune=True,
                epoch_callback=epoch_callback,
            )
        finally:
            if trial is not None:
                trial.set_user_attr(CLOCK_ATTR, reporter.clocks)
                if reporter.cut:
                    trial.set_user_attr(CUT_ATTR, True)
        train_accuracy = evaluate(model, self.data.train).accuracy
        if trial is not None:
            trial.set_user_attr(TEST_ATTR, result.test_accuracy)
            trial.set_user_attr(TRAIN_ATTR, train_accuracy)
        return Trained(model=model, fit=result, train_accuracy=train_accuracy)

    def final(
        self, config: dict[str, float], *, optimizer: str = "sgd", counted: bool = False
    ) -> Trained:
        """Train ``config`` for ``E`` epochs with one cosine: the final model of a method that
        chose a configuration without training it fully. Not counted in the budget (the
        evaluation of a choice, e.g. MORL's), unless ``counted`` (the last step of a method,
        e.g. autoHyper's, which then leaves ``E`` epochs of its budget for it)."""
        return self.train(
            config,
            counted=counted,
            optimizer=optimizer,
            data_seed=derived_seed(self.seed, _STREAM_FINAL),
            run=FINAL_RUN,
        )

    # -- searches ----------------------------------------------------------------------------

    def optimize(
        self,
        study: optuna.Study,
        objective: Callable[[optuna.Trial], float],
        *,
        max_trials: int | None = None,
        min_left: float = 1.0,
        until: Callable[[], bool] | None = None,
    ) -> None:
        """Run ``objective`` one trial at a time while at least ``min_left`` epochs of the
        budget are left, the study holds fewer than ``max_trials`` finished trials and
        ``until()`` is false. A trial that stops because its session stops (interrupted,
        taken over) is failed with the user attr ``bench:interrupted``."""

        def wrapped(trial: optuna.Trial) -> float:
            try:
                return objective(trial)
            except optuna.TrialPruned:
                raise
            except BaseException as e:
                try:
                    trial.set_user_attr(INTERRUPTED_ATTR, True)
                except Exception:
                    pass  # failed meanwhile by the worker that took the job over
                if isinstance(e, LeaseLost):
                    # An Exception, so that Optuna fails the trial before passing it on.
                    raise RuntimeError(str(e)) from e
                raise

        while self.left() >= min_left:
            if until is not None and until():
                return
            done = len(study.get_trials(deepcopy=False, states=_DONE))
            if max_trials is not None and done >= max_trials:
                return
            study.optimize(wrapped, n_trials=1, catch=())

    def requeue_interrupted(self, study: optuna.Study) -> None:
        """Enqueue again the configurations of trials that an earlier session left unfinished
        (so that a resumed search evaluates the same configurations as an uninterrupted one).
        Each is enqueued once: its retry names it in the user attr ``bench:retry_of``."""
        trials = study.get_trials(deepcopy=False)
        retried = {t.user_attrs.get(RETRY_OF_ATTR) for t in trials}
        for trial in trials:
            if (
                trial.state == TrialState.FAIL
                and trial.user_attrs.get(INTERRUPTED_ATTR)
                and trial.number not in retried
                and trial.params
            ):
                study.enqueue_trial(dict(trial.params), user_attrs={RETRY_OF_ATTR: trial.number})

    def search(
        self,
        sampler: BaseSampler,
        *,
        pruner: BasePruner | None = None,
        schedule: Schedule | None | str = "cosine",
        retrain: bool = False,
        max_trials: int | None = None,
    ) -> Outcome:
        """A search of the problem's space: full trainings of ``E`` epochs (stopped early by
        ``pruner``) until the budget is spent; the best complete trial is chosen.

        Args:
            sampler: The sampler.
            pruner: A pruner (asked after every epoch), or :obj:`None`.
            schedule: The schedule of each trial (see :meth:`train`).
            retrain: Whether the chosen configuration is trained again with one cosine (when
                its trial was not trained that way, e.g. MORL's recurring schedule).
            max_trials: Stop after this many finished trials (e.g. a grid's size).
        """
        study = self.study(sampler, pruner)
        self.requeue_interrupted(study)

        def objective(trial: optuna.Trial) -> float:
            config = self.problem.suggest(trial)
            trained = self.train(config, trial=trial, schedule=schedule, prune=pruner is not None)
            return trained.valid_accuracy

        self.optimize(study, objective, max_trials=max_trials)
        return self.best(study, retrain=retrain)

    def best(self, study: optuna.Study, *, retrain: bool = False) -> Outcome:
        """The best complete trial of ``study`` (or, when none completed, the trial that got
        furthest), and its model's accuracies; trained again when ``retrain`` or when its
        trial did not train it fully."""
        done = study.get_trials(deepcopy=False, states=_DONE)
        if not done:
            raise RuntimeError(
                f"The study {study.study_name!r} has no finished trial: the budget "
                f"({self.budget.total} epochs) is too small for one."
            )
        complete = [t for t in done if t.state == TrialState.COMPLETE and t.value is not None]
        if complete:
            best = max(complete, key=lambda t: (cast(float, t.value), -t.number))
        else:
            best = max(done, key=lambda t: (len(t.intermediate_values), _last(t), -t.number))
        config = {k: float(v) for k, v in best.params.items()}
        if best.state == TrialState.COMPLETE and not retrain and TEST_ATTR in best.user_attrs:
            return Outcome(
                config=config,
                valid_accuracy=cast(float, best.value),
                test_accuracy=float(best.user_attrs[TEST_ATTR]),
                train_accuracy=float(best.user_attrs.get(TRAIN_ATTR, math.nan)),
                trials=len(done),
            )
        final = self.final(config)
        note = "" if best.state == TrialState.COMPLETE else "no trial completed; "
        return Outcome(
            config=config,
            valid_accuracy=final.valid_accuracy,
            test_accuracy=final.test_accuracy,
            train_accuracy=final.train_accuracy,
            trials=len(done),
            notes=note + f"chosen trial {best.number} trained again for {self.epochs} epochs",
            final_epochs=self.epochs,
        )

    def outcome_of(
        self,
        trained: Trained,
        config: dict[str, float],
        *,
        trials: int = 1,
        lr_per_epoch: Sequence[float] | None = None,
        notes: str = "",
    ) -> Outcome:
        """The outcome of a method whose model is ``trained``."""
        return Outcome(
            config=config,
            valid_accuracy=trained.valid_accuracy,
            test_accuracy=trained.test_accuracy,
            train_accuracy=trained.train_accuracy,
            trials=trials,
            lr_per_epoch=None if lr_per_epoch is None else [float(x) for x in lr_per_epoch],
            notes=notes,
        )


def _last(trial: FrozenTrial) -> float:
    values = trial.intermediate_values
    return float(values[max(values)]) if values else -math.inf
