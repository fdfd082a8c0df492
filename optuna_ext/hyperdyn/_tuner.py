from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
import copy
import dataclasses
import math
from numbers import Real
from typing import Any
from typing import TYPE_CHECKING

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.distributions import distribution_to_json
from optuna.distributions import FloatDistribution
from optuna.distributions import IntDistribution
from optuna.study import StudyDirection
from optuna.trial import TrialState
import torch

from optuna_ext._checkpoint import CheckpointError
from optuna_ext._checkpoint import load_checkpoint
from optuna_ext._checkpoint import save_checkpoint
from optuna_ext._objective_names import name_objectives
from optuna_ext.hyperdyn._trend import check_accuracy_trend
from optuna_ext.hyperdyn._trend import check_trend_args
from optuna_ext.hyperdyn._trend import keep_probability
from optuna_ext.samplers._hyperdyn.sampler import HyperdynSampler


if TYPE_CHECKING:
    from optuna.artifacts._protocol import ArtifactStore
    from optuna.trial import Trial
    from torch import nn


_logger = optuna.logging.get_logger(__name__)

CONFIG_KEY = "HyperdynTuner:config"
"""Study system attr: the settings of the run, checked on every resume."""
INITIAL_KEY = "HyperdynTuner:initial"
"""Study system attr: the artifact id of the initial model and optimizer state."""
EPOCH_KEY_PREFIX = "HyperdynTuner:epoch:"
"""Study system attrs ``HyperdynTuner:epoch:<t>``: the record of finished epoch ``t``."""

USER_ATTR_EPOCH = "hyperdyn:epoch"
USER_ATTR_ROLE = "hyperdyn:role"
USER_ATTR_ACCURACY = "hyperdyn:accuracy"
USER_ATTR_KEPT = "hyperdyn:kept"
USER_ATTR_FAILURE = "hyperdyn:failure"

OBJECTIVE_NAME = "acc_diff"
"""The objective name :meth:`HyperdynTuner.run` gives the study (unless it has one already)."""

PLOT_ID = "hyperdyn-lr"
"""The ``graph_object_id`` of the chosen-rate figure saved with optuna-dashboard."""

TREND_TESTS = ("paper", "compare")
"""The values of :class:`HyperdynTuner`'s ``trend_test``."""
# Settings added after the first release: a stored config without them had the default.
_CONFIG_DEFAULTS: dict[str, Any] = {"trend_test": "paper", "max_switch_drop": None}

_STREAM_TRAIN = 0
_STREAM_TREND = 1
_STREAM_RANDOM = 2


def _derived_seed(seed: int, *stream: int) -> int:
    state = np.random.SeedSequence([seed, *stream]).generate_state(1, dtype=np.uint64)
    return int(state[0] >> np.uint64(1))


def _hypergradient_refusal(what: str) -> str:
    return (
        f"The value of {what}, but Hyperdyn needs an optimizer whose rate is the one it sets: "
        "it sets the rate each epoch and records it as the epoch's choice, while "
        "hypergradient descent (SGD-HD, Adam-HD) moves the rate within the epoch. Use 'sgd' "
        "or 'adam' (or `optuna_ext.optim.SGDHD`/`AdamHD` without Hyperdyn)."
    )


def set_optimizer_params(optimizer: torch.optim.Optimizer, params: Mapping[str, float]) -> None:
    """Write hyper-parameters into every parameter group of ``optimizer``.

    A name is the key of the parameter group (``"lr"``, ``"momentum"``, ``"weight_decay"``,
    ...); ``"beta1"`` and ``"beta2"`` set the two entries of Adam's ``"betas"``.

    Args:
        optimizer: The optimizer to update in place.
        params: The values by name.
    """
    for group in optimizer.param_groups:
        for name, value in params.items():
            if name in ("beta1", "beta2"):
                beta1, beta2 = group["betas"]
                group["betas"] = (value, beta2) if name == "beta1" else (beta1, value)
            else:
                group[name] = value


def default_search_space(optimizer: torch.optim.Optimizer) -> dict[str, BaseDistribution]:
    """Return the search space the tuner uses when none is given.

    The paper tunes the learning rate and the momentum of SGD (section 4), and the learning
    rate and ``beta1``, ``beta2`` of Adam. Here: ``lr`` in ``[1e-4, 1]`` (log) and ``momentum``
    in ``[0, 0.95]`` for an optimizer with momentum (SGD, RMSprop); ``lr`` in ``[1e-5, 1e-1]``
    (log) and ``beta1`` in ``[0, 0.99]`` for Adam-like optimizers (``beta2`` stays at its
    value: add ``FloatDistribution(0.9, 0.9999)`` to tune it too); ``lr`` in ``[1e-5, 1]``
    (log) otherwise.

    Args:
        optimizer: The optimizer to tune.
    """
    group = optimizer.param_groups[0]
    if "momentum" in group:
        return {
            "lr": FloatDistribution(1e-4, 1.0, log=True),
            "momentum": FloatDistribution(0.0, 0.95),
        }
    if "betas" in group:
        return {
            "lr": FloatDistribution(1e-5, 1e-1, log=True),
            "beta1": FloatDistribution(0.0, 0.99),
        }
    return {"lr": FloatDistribution(1e-5, 1.0, log=True)}


@dataclasses.dataclass(frozen=True)
class HyperdynResult:
    """What a Hyperdyn run chose and reached, one entry per finished epoch.

    Attributes:
        params:
            The hyper-parameters the kept weights were trained with in each epoch.
        accuracy:
            The metric (as ``evaluate`` returns it) of the kept weights after each epoch.
        switched:
            Whether the epoch's kept candidate was a new proposal (``False``: the incumbent
            rate was kept; epoch 0 counts as a switch).
        kept_trials:
            The number of the trial whose weights were kept in each epoch.
        n_trained:
            The number of one-epoch trainings each epoch cost (``k`` at epoch 0, then 2 for
            Hyperdyn and greedy BO, ``random_factor`` for random search).
        initial_accuracy:
            The metric of the initial weights.
        test_accuracy:
            The test metric of the final model, when the caller measured it (see
            :func:`fit_hyperdyn`), else :obj:`None`.
    """

    params: list[dict[str, float]]
    accuracy: list[float]
    switched: list[bool]
    kept_trials: list[int]
    n_trained: list[int]
    initial_accuracy: float
    test_accuracy: float | None = None

    @property
    def epochs(self) -> int:
        """The number of finished epochs."""
        return len(self.accuracy)

    @property
    def lrs(self) -> list[float]:
        """The learning rate (``params["lr"]``) of each epoch (empty when ``lr`` is untuned)."""
        return [float(p["lr"]) for p in self.params if "lr" in p]

    @property
    def best_accuracy(self) -> float:
        """The best metric over the epochs."""
        return max(self.accuracy)


@dataclasses.dataclass
class _Candidate:
    trial: Trial
    role: str
    params: dict[str, float]
    accuracy: float = math.nan
    failure: str | None = None
    model_state: dict[str, Any] | None = None
    optimizer_state: dict[str, Any] | None = None


@dataclasses.dataclass
class _State:
    epoch: int  # the last finished epoch, -1 before Random-Start
    params: dict[str, float]
    history: list[float]  # metric of the kept weights after epochs 0..epoch (raw units)
    last_change: int
    initial_accuracy: float


class HyperdynTuner:
    """Online learning-rate tuning of one training run with Hyperdyn.

    Paper: `Dynamically Learning the Learning Rates: Online Hyperparameter Optimization
    <https://openreview.net/forum?id=HJtPtdqQG>`__ (ICLR 2018 submission), Algorithm 4. The
    tuner trains ``model`` epoch by epoch and re-chooses the hyper-parameters (by default the
    learning rate and the momentum, as in the paper) at each epoch end:

    1. Random-Start (Algorithm 3, epoch 0): ``n_random_start`` random candidates are trained
       for one epoch from the same initial weights; the one with the best validation metric
       is kept.
    2. Each later epoch ``t`` trains, from the kept weights of epoch ``t - 1``, the incumbent
       hyper-parameters and the proposal of :class:`~optuna_ext.samplers.HyperdynSampler`
       (expected improvement at epoch ``t`` of a GP over (hyper-parameters, epoch)).
    3. Check-Accuracy-Trend (Algorithm 5, :func:`check_accuracy_trend`) on the metric of the
       kept weights over the last ``window`` epochs, with a uniform draw ``u``, decides
       whether the incumbent's or the proposal's weights and hyper-parameters go on.

    Every candidate is a trial of ``study``: its parameters are the hyper-parameters plus the
    epoch (the sampler's ``time_param``), its value the paper's observation ``acc_diff``: the
    candidate's metric minus that of the weights it started from, in units of
    ``metric_scale``. (Algorithm 3 records the raw accuracy at epoch 0; its difference over
    the initial weights is used here so that all observations share one scale; within epoch
    0 the two differ by a constant.) User attrs ``hyperdyn:epoch``, ``hyperdyn:role``
    (``"random-start"``, ``"incumbent"``, ``"proposal"``, ``"random"``),
    ``hyperdyn:accuracy`` and ``hyperdyn:kept`` describe each trial in optuna-dashboard,
    and :meth:`run` names the study's objective ``"acc_diff"`` (``study.metric_names``, shown
    by optuna-dashboard instead of "Objective 0"; names already set are kept).

    **Readings of the paper.** (The project's reference notes were written before the paper
    was at hand; where they differ, this follows the paper.) Random-Start trains its ``k``
    candidates from the same initial weights within epoch 0 (Algorithm 3), not one random
    rate per epoch for the first 5 epochs. The trend test compares the metric of the kept
    weights now and ``window`` epochs ago whatever happened in between (Algorithm 5), not
    only after ``window`` epochs without a change; the epoch of the last change is recorded
    but not used; before ``window`` epochs have passed the oldest metric stands in. The test
    decides from the trend alone: the candidates' ``acc_diff`` of the current epoch feed the
    GP but not the decision (Algorithm 4, lines 7-13), and a rejected proposal does not
    restore older weights. BO runs every epoch, also when the incumbent is kept.

    **Trend-test variant (an option, not the paper).** ``trend_test="compare"`` also weighs
    the two candidates of the current epoch: the rise of the trend is replaced by
    ``min(rise, lead)``, ``lead`` the incumbent's metric minus the proposal's, so a proposal
    that beat the incumbent by ``d`` is taken with probability at least
    ``1 - exp(-metric_scale * d / T - b)`` even when the trend is rising (see
    :func:`check_accuracy_trend`). It only adds switches to the paper's test, with the same
    draw ``u``. The default ``"paper"`` is Algorithm 5 as written.

    **Switch guard (an option, not the paper).** The paper's test decides from the trend
    alone, so on a plateau it switches with probability ``1 - exp(-b)`` (about 1 % per epoch)
    to the proposal whatever the proposal's epoch did to the weights, and a switch restores
    nothing. ``max_switch_drop=d`` refuses a switch to a proposal whose metric after the
    epoch is more than ``d`` below the incumbent's (in the units of ``T`` and ``b``:
    percentage points with ``metric_scale=100``); the incumbent is kept and the epoch's
    record says ``"guarded": True``. In the benchmarks, 4 of 499 switches lost more than 10
    points in their epoch; one run fell from 99.4 % to 36 % at epoch 55 of 60 and did not
    recover (``benchmarks/results/hyperdyn_notes.md``). :obj:`None` (the default) follows the
    paper.

    **Resuming.** After each epoch the kept model and optimizer state is saved in
    ``artifact_store`` as an artifact of the kept trial, and the epoch's record (the kept
    hyper-parameters and metric, the artifact id, the draw ``u``) is written to the study's
    system attrs (the commit); then the candidates' trials are told. A new tuner on the same
    study (same storage, same settings, a :class:`~optuna_ext.samplers.HyperdynSampler` with
    the same seed) continues after the last committed epoch: it loads the checkpoint into
    ``model`` and ``optimizer``, tells the candidates of a committed epoch that a killed
    process left RUNNING as the record says, marks the trials of an unfinished epoch FAIL
    (each trial carries its epoch from its creation, so none is missed), and carries on with
    the same hyper-parameters. The draw ``u`` of epoch ``t``, the random candidates and the
    torch seed of each candidate's training are derived from ``(seed, t)``, so a resumed run
    ends identical to an uninterrupted one (on the CPU with a fixed number of threads, and
    given a ``train_epoch`` whose data order depends only on the epoch it is passed). Use one
    study per run.

    **Baselines.** ``greedy=True`` is the paper's epoch-based BO (offset ``b = inf``: always
    switch to the proposal). ``random_factor=r`` is its "random search r x": each epoch ``r``
    random candidates are trained from the kept weights and the best is kept (no GP, no
    trend test); the paper's baseline is ``r = 5``.

    **Bad metrics.** A candidate whose ``evaluate`` result (or ``train_epoch`` return value,
    when it is a number) is NaN or infinite has diverged: its trial is told FAIL with the
    user attr ``hyperdyn:failure``, it is never kept (the other candidate is), and the GP
    does not see it. If every candidate of an epoch fails, :class:`RuntimeError` is raised
    and the epoch is not committed.

    The chosen rate per epoch (paper Figure 2(a)) is saved to the study with
    ``optuna_dashboard.save_plotly_graph_object(..., graph_object_id="hyperdyn-lr")`` at
    the end of :meth:`run`.

    Example:

        .. testcode::

            import optuna
            from optuna.artifacts import FileSystemArtifactStore
            import tempfile

            from optuna_ext.hyperdyn import HyperdynTuner
            from optuna_ext.hyperdyn import make_task_functions
            from optuna_ext.samplers._hyperdyn import HyperdynSampler
            from optuna_ext.tasks import build_model
            from optuna_ext.tasks import load_digits
            from optuna_ext.tasks import make_optimizer

            data = load_digits()
            model = build_model("cnn", data=data, seed=0)
            optimizer = make_optimizer("sgd", model.parameters(), lr=0.01)
            train_epoch, evaluate = make_task_functions(data, batch_size=128, seed=0)
            study = optuna.create_study(
                direction="maximize", sampler=HyperdynSampler(seed=0, n_candidates=64)
            )
            with tempfile.TemporaryDirectory() as tmp:
                tuner = HyperdynTuner(
                    study=study,
                    model=model,
                    optimizer=optimizer,
                    train_epoch=train_epoch,
                    evaluate=evaluate,
                    artifact_store=FileSystemArtifactStore(tmp),
                    n_random_start=2,
                )
                result = tuner.run(epochs=3)
            print(len(result.lrs))

        .. testoutput::

            3

    Args:
        study:
            A single-objective study to maximize, created with a
            :class:`~optuna_ext.samplers.HyperdynSampler` (any sampler with
            ``random_factor``).
        model:
            The model, trained in place; it holds the kept weights after :meth:`run`.
        optimizer:
            The optimizer of ``model``'s parameters; its state (e.g. momentum buffers)
            follows the kept trajectory. An optimizer that adapts its own rate by
            hypergradient descent (:class:`~optuna_ext.optim.SGDHD`,
            :class:`~optuna_ext.optim.AdamHD`, any with a ``"hypergrad_lr"`` option) is
            refused: the tuner sets the rate per epoch and records it as the epoch's choice,
            which such an optimizer would move within the epoch.
        train_epoch:
            ``train_epoch(model, optimizer, epoch)`` trains one epoch (``epoch`` counted
            from 0). It should draw its data order from ``epoch`` (see
            :func:`make_task_functions`); a returned number that is NaN or infinite marks
            divergence.
        evaluate:
            ``evaluate(model)`` returns the validation metric to maximize (e.g. accuracy).
        artifact_store:
            Any Optuna artifact store, for the checkpoints.
        search_space:
            The tuned hyper-parameters: float or int distributions by optimizer
            parameter-group key (``"beta1"``/``"beta2"`` for Adam's betas). Log
            distributions need positive bounds. :obj:`None` uses
            :func:`default_search_space`.
        n_random_start:
            The number ``k`` of Random-Start candidates (paper: 5).
        window:
            The window ``Delta >= 1`` of the trend test in epochs (paper: 4).
        temperature:
            The temperature ``T > 0`` of the trend test (paper: 1).
        offset:
            The offset ``b >= 0`` of the trend test (paper: 0.01).
        metric_scale:
            The factor that turns ``evaluate``'s value into the units of ``T`` and ``b``,
            which the paper states for accuracy in percentage points: ``100`` (the default)
            for an ``evaluate`` that returns fractions in ``[0, 1]``, ``1`` for one that
            returns percentages. Trial values (``acc_diff``) are in these units too.
        greedy:
            Run the epoch-based BO baseline (always switch).
        random_factor:
            Run the random-search baseline with this many candidates per epoch.
        seed:
            The seed of the trend test's draws, of the random baseline and of each
            candidate's torch random state.
        apply_params:
            ``apply_params(optimizer, params)`` writes hyper-parameters into the optimizer;
            :obj:`None` uses :func:`set_optimizer_params`.
        plot:
            Save the chosen-rate figure to the study at the end of :meth:`run`.
        trend_test:
            ``"paper"`` (the default): Algorithm 5 on the kept weights' trend alone.
            ``"compare"``: also weigh the incumbent's lead over the proposal in the current
            epoch (a variant that is not in the paper; see above). Only for Hyperdyn itself,
            not with ``greedy`` or ``random_factor``.
        max_switch_drop:
            Refuse a switch to a proposal that scored more than this below the incumbent in
            the epoch (``>= 0``, in the units of ``T`` and ``b``; a variant that is not in the
            paper, see above). :obj:`None` (the default): no guard, as in the paper. Only
            for Hyperdyn itself, not with ``greedy`` or ``random_factor``.
    """

    def __init__(
        self,
        *,
        study: optuna.Study,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        train_epoch: Callable[[nn.Module, torch.optim.Optimizer, int], object],
        evaluate: Callable[[nn.Module], float],
        artifact_store: ArtifactStore,
        search_space: Mapping[str, BaseDistribution] | None = None,
        n_random_start: int = 5,
        window: int = 4,
        temperature: float = 1.0,
        offset: float = 0.01,
        metric_scale: float = 100.0,
        greedy: bool = False,
        random_factor: int | None = None,
        seed: int = 0,
        apply_params: Callable[[torch.optim.Optimizer, Mapping[str, float]], None] | None = None,
        plot: bool = True,
        trend_test: str = "paper",
        max_switch_drop: float | None = None,
    ) -> None:
        check_trend_args(window, temperature, offset, metric_scale)
        if max_switch_drop is not None:
            if (
                isinstance(max_switch_drop, bool)
                or not isinstance(max_switch_drop, Real)
                or not math.isfinite(max_switch_drop)
                or max_switch_drop < 0.0
            ):
                raise ValueError(
                    f"The value of `max_switch_drop` is {max_switch_drop!r}, but must be a "
                    "finite number `>= 0` or None."
                )
            if greedy or random_factor is not None:
                raise ValueError(
                    f"The value of `max_switch_drop` is {max_switch_drop!r}, but the baselines "
                    "(`greedy`, `random_factor`) run no trend test: leave it at None."
                )
        if trend_test not in TREND_TESTS:
            raise ValueError(
                f"The value of `trend_test` is {trend_test!r}, but must be one of {TREND_TESTS}."
            )
        if trend_test != "paper" and (greedy or random_factor is not None):
            raise ValueError(
                f"The value of `trend_test` is {trend_test!r}, but the baselines (`greedy`, "
                "`random_factor`) run no trend test: leave it at 'paper'."
            )
        if isinstance(n_random_start, bool) or not isinstance(n_random_start, int):
            raise ValueError(
                f"The value of `n_random_start` is {n_random_start!r}, but must be an int."
            )
        if n_random_start < 1:
            raise ValueError(
                f"The value of `n_random_start` is {n_random_start}, but must be "
                "`n_random_start >= 1`."
            )
        if random_factor is not None:
            if isinstance(random_factor, bool) or not isinstance(random_factor, int):
                raise ValueError(
                    f"The value of `random_factor` is {random_factor!r}, but must be an int "
                    "`>= 1` or None."
                )
            if random_factor < 1:
                raise ValueError(
                    f"The value of `random_factor` is {random_factor}, but must be "
                    "`random_factor >= 1`."
                )
            if greedy:
                raise ValueError(
                    "The values of `greedy` and `random_factor` are True and "
                    f"{random_factor}, but at most one baseline can be chosen."
                )
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"The value of `seed` is {seed!r}, but must be an int `>= 0`.")
        if len(study.directions) != 1 or study.direction != StudyDirection.MAXIMIZE:
            raise ValueError(
                "The study must be single-objective with direction 'maximize' (the trial "
                "values are accuracy changes), but its directions are "
                f"{[d.name.lower() for d in study.directions]}."
            )
        if any("hypergrad_lr" in group for group in optimizer.param_groups):
            raise ValueError(
                _hypergradient_refusal(f"`optimizer` is a {type(optimizer).__name__}")
            )
        sampler = study.sampler
        if random_factor is None and not isinstance(sampler, HyperdynSampler):
            raise ValueError(
                f"The study's sampler is a {type(sampler).__name__}, but Hyperdyn needs a "
                "HyperdynSampler: create the study with "
                "`optuna.create_study(direction='maximize', sampler=HyperdynSampler(seed=...))`."
            )
        self._time_param = sampler.time_param if isinstance(sampler, HyperdynSampler) else "epoch"
        space = dict(search_space) if search_space is not None else default_search_space(optimizer)
        if not space:
            raise ValueError("The value of `search_space` is empty, but must name a parameter.")
        for name, distribution in space.items():
            _check_distribution(
                name, distribution, optimizer if apply_params is None else None, self._time_param
            )
        self._study = study
        self._model = model
        self._optimizer = optimizer
        self._train_epoch = train_epoch
        self._evaluate = evaluate
        self._store = artifact_store
        self._space: dict[str, FloatDistribution | IntDistribution] = {
            name: d
            for name, d in space.items()
            if isinstance(d, (FloatDistribution, IntDistribution))
        }
        self._n_random_start = n_random_start
        self._window = window
        self._temperature = float(temperature)
        self._offset = math.inf if greedy else float(offset)
        self._metric_scale = float(metric_scale)
        self._greedy = greedy
        self._random_factor = random_factor
        self._seed = int(seed)
        self._apply = apply_params if apply_params is not None else set_optimizer_params
        self._plot = plot
        self._trend_test = trend_test
        self._max_switch_drop = None if max_switch_drop is None else float(max_switch_drop)

    # -- storage -----------------------------------------------------------------------------

    def _config(self) -> dict[str, Any]:
        return {
            "time_param": self._time_param,
            "search_space": {n: distribution_to_json(d) for n, d in self._space.items()},
            "n_random_start": self._n_random_start,
            "window": self._window,
            "temperature": self._temperature,
            "offset": None if math.isinf(self._offset) else self._offset,
            "metric_scale": self._metric_scale,
            "greedy": self._greedy,
            "random_factor": self._random_factor,
            "seed": self._seed,
            "trend_test": self._trend_test,
            "max_switch_drop": self._max_switch_drop,
        }

    def _system_attrs(self) -> dict[str, Any]:
        return self._study._storage.get_study_system_attrs(self._study._study_id)

    def _set_study_attr(self, key: str, value: Any) -> None:
        self._study._storage.set_study_system_attr(self._study._study_id, key, value)

    def _records(self) -> list[dict[str, Any]]:
        attrs = self._system_attrs()
        records = []
        t = 0
        while f"{EPOCH_KEY_PREFIX}{t}" in attrs:
            records.append(attrs[f"{EPOCH_KEY_PREFIX}{t}"])
            t += 1
        return records

    def _check_config(self) -> None:
        stored = self._system_attrs().get(CONFIG_KEY)
        config = self._config()
        if stored is None:
            self._set_study_attr(CONFIG_KEY, config)
            return
        stored = {**_CONFIG_DEFAULTS, **stored}
        differing = sorted(k for k in config if stored.get(k) != config[k])
        if differing:
            shown = ", ".join(
                f"{k}: stored {stored.get(k)!r}, given {config[k]!r}" for k in differing
            )
            raise ValueError(
                "The study holds a Hyperdyn run with other settings; resume it with the same "
                f"settings or use a new study ({shown})."
            )

    def _discard_unfinished(self, last_epoch: int) -> None:
        """Mark the trials of epochs after ``last_epoch`` that never finished as FAIL."""
        trials = self._study._get_trials(
            deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING), use_cache=False
        )
        stale = [t for t in trials if USER_ATTR_EPOCH in t.user_attrs]
        for frozen in stale:
            if frozen.state == TrialState.WAITING:
                # An enqueued incumbent that was never asked for: pop it, then fail it.
                popped = self._study.ask()
                number = popped.number
            else:
                number = frozen.number
            self._study.tell(number, state=TrialState.FAIL)
            _logger.info(
                f"Hyperdyn: trial {number} of an unfinished epoch (after epoch {last_epoch}) "
                "was marked FAIL."
            )

    def _tell_committed(self, records: list[dict[str, Any]]) -> None:
        """Tell the candidates of committed epochs that a killed process left RUNNING."""
        running = {
            t.number: t
            for t in self._study._get_trials(
                deepcopy=False, states=(TrialState.RUNNING,), use_cache=False
            )
        }
        if not running:
            return
        for record in records:
            for outcome in record.get("outcomes", ()):
                frozen = running.get(int(outcome["number"]))
                if frozen is not None:
                    self._tell(frozen._trial_id, outcome)
                    _logger.info(
                        f"Hyperdyn: trial {frozen.number} of the finished epoch "
                        f"{record['epoch']} was told as recorded."
                    )

    def _restore(self) -> _State:
        self._check_config()
        name_objectives(self._study, [OBJECTIVE_NAME])
        records = self._records()
        last = len(records) - 1
        self._tell_committed(records)
        self._discard_unfinished(last)
        attrs = self._system_attrs()
        if not records:
            initial_id = attrs.get(INITIAL_KEY)
            if initial_id is None:
                initial_id = save_checkpoint(
                    self._snapshot(),
                    artifact_store=self._store,
                    study_or_trial=self._study,
                    filename="hyperdyn-initial.pt",
                )
                self._set_study_attr(INITIAL_KEY, initial_id)
            else:
                self._load(initial_id)
            return _State(
                epoch=-1, params={}, history=[], last_change=-1, initial_accuracy=math.nan
            )
        self._load(records[-1]["checkpoint"])
        return _State(
            epoch=last,
            params={k: float(v) for k, v in records[-1]["params"].items()},
            history=[float(r["accuracy"]) for r in records],
            last_change=int(records[-1]["last_change"]),
            initial_accuracy=float(records[0]["initial_accuracy"]),
        )

    def _snapshot(self) -> dict[str, Any]:
        return {
            "model": copy.deepcopy(self._model.state_dict()),
            "optimizer": copy.deepcopy(self._optimizer.state_dict()),
        }

    def _load(self, artifact_id: str) -> None:
        try:
            state = load_checkpoint(artifact_store=self._store, artifact_id=artifact_id)
        except CheckpointError as e:
            raise CheckpointError(
                f"{e} The study holds a Hyperdyn run whose checkpoints are not in this "
                "artifact store: resume with the store of the earlier run (e.g. the same "
                "FileSystemArtifactStore directory), or start a new study."
            ) from e
        self._model.load_state_dict(state["model"])
        self._optimizer.load_state_dict(state["optimizer"])

    # -- one epoch ---------------------------------------------------------------------------

    def _suggest(self, trial: Trial, t: int) -> dict[str, float]:
        trial.suggest_float(self._time_param, float(t), float(t))
        params: dict[str, float] = {}
        for name, d in self._space.items():
            if isinstance(d, IntDistribution):
                params[name] = trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
            else:
                params[name] = trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log)
        return params

    def _ask(self, t: int, role: str, fixed: Mapping[str, float] | None = None) -> _Candidate:
        attrs = {USER_ATTR_EPOCH: t, USER_ATTR_ROLE: role}
        # Enqueued, so that the trial has its user attrs from its creation: a process killed
        # right after `ask` leaves a trial that the next run recognizes and discards.
        params = {} if fixed is None else {self._time_param: float(t), **fixed}
        self._study.enqueue_trial(params, user_attrs=attrs)
        trial = self._study.ask()
        return _Candidate(trial=trial, role=role, params=self._suggest(trial, t))

    def _random_params(self, t: int, count: int) -> list[dict[str, float]]:
        rng = np.random.default_rng(_derived_seed(self._seed, _STREAM_RANDOM, t))
        draws = []
        for _ in range(count):
            params: dict[str, float] = {}
            for name, d in self._space.items():
                low, high = float(d.low), float(d.high)
                if d.log:
                    value = math.exp(rng.uniform(math.log(low), math.log(high)))
                else:
                    value = rng.uniform(low, high)
                step = d.step
                if step is not None:
                    value = low + round((value - low) / step) * step
                    value = min(max(value, low), high)
                params[name] = int(round(value)) if isinstance(d, IntDistribution) else value
            draws.append(params)
        return draws

    def _train(self, candidate: _Candidate, start: Mapping[str, Any], t: int, slot: int) -> None:
        self._model.load_state_dict(start["model"])
        self._optimizer.load_state_dict(start["optimizer"])
        self._apply(self._optimizer, candidate.params)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_derived_seed(self._seed, _STREAM_TRAIN, t, slot))
            returned = self._train_epoch(self._model, self._optimizer, t)
            if _is_bad_number(returned):
                candidate.failure = f"train_epoch returned {returned}"
                return
            metric = self._evaluate(self._model)
        if isinstance(metric, bool) or not isinstance(metric, Real):
            raise TypeError(
                f"The `evaluate` function returned {metric!r}, but must return a float."
            )
        if not math.isfinite(float(metric)):
            candidate.failure = f"evaluate returned {metric}"
            return
        candidate.accuracy = float(metric)
        candidate.model_state = copy.deepcopy(self._model.state_dict())
        candidate.optimizer_state = copy.deepcopy(self._optimizer.state_dict())

    def _epoch(self, state: _State, t: int) -> _State:
        start = self._snapshot()
        if t == 0:
            with torch.random.fork_rng(devices=[]):
                metric = self._evaluate(self._model)
            if isinstance(metric, bool) or not isinstance(metric, Real):
                raise TypeError(
                    f"The `evaluate` function returned {metric!r}, but must return a float."
                )
            if not math.isfinite(float(metric)):
                raise RuntimeError(
                    f"The `evaluate` function returned {metric} for the initial weights."
                )
            state.initial_accuracy = float(metric)
            reference = float(metric)
        else:
            reference = state.history[-1]

        candidates: list[_Candidate] = []
        if t == 0:
            if self._random_factor is None:
                candidates = [self._ask(0, "random-start") for _ in range(self._n_random_start)]
            else:
                candidates = [
                    self._ask(0, "random-start", p)
                    for p in self._random_params(0, self._n_random_start)
                ]
        elif self._random_factor is not None:
            candidates = [
                self._ask(t, "random", p) for p in self._random_params(t, self._random_factor)
            ]
        else:
            proposal = self._ask(t, "proposal")
            incumbent = self._ask(t, "incumbent", state.params)
            candidates = [incumbent, proposal]

        for slot, candidate in enumerate(candidates):
            self._train(candidate, start, t, slot)
        ok = [c for c in candidates if c.failure is None]

        u: float | None = None
        p_keep: float | None = None
        lead: float | None = None
        guarded = False
        if not ok:
            for c in candidates:
                outcome = _outcome(c, kept=False, reference=math.nan, scale=self._metric_scale)
                self._tell(c.trial._trial_id, outcome)
            reasons = "; ".join(f"trial {c.trial.number}: {c.failure}" for c in candidates)
            raise RuntimeError(f"Every candidate of epoch {t} failed ({reasons}).")
        if t == 0 or self._random_factor is not None:
            kept = max(ok, key=lambda c: c.accuracy)
            switched = True if t == 0 else kept.params != state.params
        else:
            u = float(np.random.default_rng(_derived_seed(self._seed, _STREAM_TREND, t)).random())
            incumbent, proposal = candidates
            if (
                self._trend_test == "compare"
                and incumbent.failure is None
                and proposal.failure is None
            ):
                lead = incumbent.accuracy - proposal.accuracy
            p_keep = keep_probability(
                state.history,
                window=self._window,
                temperature=self._temperature,
                offset=self._offset,
                metric_scale=self._metric_scale,
                lead=lead,
            )
            keep = check_accuracy_trend(
                state.history,
                window=self._window,
                temperature=self._temperature,
                offset=self._offset,
                metric_scale=self._metric_scale,
                lead=lead,
                u=u,
            )
            if (
                not keep
                and self._max_switch_drop is not None
                and incumbent.failure is None
                and proposal.failure is None
                and self._metric_scale * (incumbent.accuracy - proposal.accuracy)
                > self._max_switch_drop
            ):
                keep = guarded = True
            kept = incumbent if keep else proposal
            if kept.failure is not None:
                kept = proposal if kept is incumbent else incumbent
            switched = kept is proposal

        assert kept.model_state is not None and kept.optimizer_state is not None
        self._model.load_state_dict(kept.model_state)
        self._optimizer.load_state_dict(kept.optimizer_state)
        checkpoint = save_checkpoint(
            {"model": kept.model_state, "optimizer": kept.optimizer_state},
            artifact_store=self._store,
            study_or_trial=kept.trial,
            filename=f"hyperdyn-epoch-{t}.pt",
        )
        outcomes = [
            _outcome(c, kept=c is kept, reference=reference, scale=self._metric_scale)
            for c in candidates
        ]
        last_change = t if switched else state.last_change
        record = {
            "epoch": t,
            "params": dict(kept.params),
            "accuracy": kept.accuracy,
            "kept_trial": kept.trial.number,
            "checkpoint": checkpoint,
            "switched": switched,
            "last_change": last_change,
            "u": u,
            "keep_probability": p_keep,
            "lead": lead,
            "guarded": guarded,
            "candidates": [c.trial.number for c in candidates],
            "initial_accuracy": state.initial_accuracy,
            "outcomes": outcomes,
        }
        # The record is the commit, and the candidates are told after it: a process killed in
        # between leaves RUNNING trials that the next run tells from the record. (Told before,
        # they would stay COMPLETE in an epoch that is then run again, and the GP of the later
        # epochs would see that epoch twice.)
        self._set_study_attr(f"{EPOCH_KEY_PREFIX}{t}", record)
        pairs = sorted(zip(candidates, outcomes, strict=True), key=lambda co: co[0] is kept)
        for c, outcome in pairs:  # the kept one last, as before
            self._tell(c.trial._trial_id, outcome)
        return _State(
            epoch=t,
            params=dict(kept.params),
            history=[*state.history, kept.accuracy],
            last_change=last_change,
            initial_accuracy=state.initial_accuracy,
        )

    def _tell(self, trial_id: int, outcome: Mapping[str, Any]) -> None:
        """Finish a candidate's trial as its epoch's record says."""
        storage = self._study._storage
        storage.set_trial_user_attr(trial_id, USER_ATTR_KEPT, bool(outcome["kept"]))
        number = storage.get_trial_number_from_id(trial_id)
        if outcome["failure"] is not None:
            storage.set_trial_user_attr(trial_id, USER_ATTR_FAILURE, outcome["failure"])
            self._study.tell(number, state=TrialState.FAIL)
            return
        storage.set_trial_user_attr(trial_id, USER_ATTR_ACCURACY, outcome["accuracy"])
        self._study.tell(number, outcome["value"])

    # -- public API --------------------------------------------------------------------------

    def run(self, *, epochs: int) -> HyperdynResult:
        """Train until ``epochs`` epochs are finished (resuming after the last one stored).

        Epoch 0 is the Random-Start epoch, so the kept weights are trained for ``epochs``
        epochs in all, at the cost of ``n_random_start`` one-epoch trainings for epoch 0 and
        2 (Hyperdyn, greedy) or ``random_factor`` per later epoch. A study that already holds
        ``epochs`` finished epochs is not trained further; its model and optimizer state are
        loaded from the last checkpoint.

        Args:
            epochs: The number of epochs of the kept trajectory, ``>= 1``.

        Returns:
            The per-epoch choices and metrics of all finished epochs.
        """
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"The value of `epochs` is {epochs!r}, but must be `epochs >= 1`.")
        state = self._restore()
        try:
            for t in range(state.epoch + 1, epochs):
                state = self._epoch(state, t)
        finally:
            if self._plot:
                self.save_plot()
        return self.result()

    def result(self) -> HyperdynResult:
        """Return the choices and metrics of the epochs the study holds."""
        records = self._records()
        return HyperdynResult(
            params=[{k: float(v) for k, v in r["params"].items()} for r in records],
            accuracy=[float(r["accuracy"]) for r in records],
            switched=[bool(r["switched"]) for r in records],
            kept_trials=[int(r["kept_trial"]) for r in records],
            n_trained=[len(r["candidates"]) for r in records],
            initial_accuracy=float(records[0]["initial_accuracy"]) if records else math.nan,
        )

    def save_plot(self) -> None:
        """Save the chosen rate per epoch (paper Figure 2(a)) to the study for the dashboard."""
        records = self._records()
        if not records:
            return
        from optuna_dashboard import save_plotly_graph_object

        from optuna_ext.hyperdyn._plot import plot_chosen_params

        trials = self._study._get_trials(deepcopy=False, use_cache=False)
        figure = plot_chosen_params(records, trials, self._time_param, list(self._space))
        save_plotly_graph_object(self._study, figure, graph_object_id=PLOT_ID)


def _outcome(
    candidate: _Candidate, *, kept: bool, reference: float, scale: float
) -> dict[str, Any]:
    """What a candidate's trial is told: its metric and ``acc_diff``, or its failure."""
    if candidate.failure is not None:
        return {"number": candidate.trial.number, "kept": kept, "failure": candidate.failure}
    return {
        "number": candidate.trial.number,
        "kept": kept,
        "failure": None,
        "accuracy": candidate.accuracy,
        "value": scale * (candidate.accuracy - reference),
    }


def _is_bad_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, Real):
        return False
    return not math.isfinite(float(value))


def _check_distribution(
    name: str,
    distribution: BaseDistribution,
    optimizer: torch.optim.Optimizer | None,
    time_param: str,
) -> None:
    if name == time_param:
        raise ValueError(
            f"The search space names the time parameter `{time_param}`, which the tuner sets."
        )
    if not isinstance(distribution, (FloatDistribution, IntDistribution)):
        raise ValueError(
            f"The distribution of `{name}` is {distribution}, but must be a FloatDistribution "
            "or an IntDistribution."
        )
    if distribution.single():
        raise ValueError(
            f"The distribution of `{name}` is {distribution}, but must hold more than one value."
        )
    if distribution.log and distribution.low <= 0:
        raise ValueError(
            f"The bounds of log parameter `{name}` are ({distribution.low}, {distribution.high}), "
            "but must be `0 < low < high`."
        )
    if optimizer is None:
        return
    group = optimizer.param_groups[0]
    key = "betas" if name in ("beta1", "beta2") else name
    if key not in group:
        raise ValueError(
            f"The search space names `{name}`, but the optimizer's parameter groups have no "
            f"`{key}` (they have {sorted(group)}); pass `apply_params` to map it."
        )
