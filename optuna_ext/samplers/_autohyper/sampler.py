from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import datetime
import functools
import logging
import math
import time
from typing import Any
from typing import Literal
from typing import TYPE_CHECKING

from optuna.distributions import FloatDistribution
from optuna.samplers import BaseSampler
from optuna.samplers._lazy_random_state import LazyRandomState
from optuna.trial import TrialState

from optuna_ext._storage import keep_alive
from optuna_ext._storage import retry_on_write_conflict
from optuna_ext._storage import save_dashboard_figure
from optuna_ext.metrics._keys import KNOWLEDGE_GAIN_Z_KEY
from optuna_ext.samplers._autohyper._search import Attempt
from optuna_ext.samplers._autohyper._search import AutoHyperEvaluation
from optuna_ext.samplers._autohyper._search import AutoHyperSearch
from optuna_ext.samplers._autohyper._search import GridPoint
from optuna_ext.samplers._autohyper._search import MAX_TRIALS
from optuna_ext.samplers._autohyper._search import point_outcome
from optuna_ext.samplers._autohyper._search import replay
from optuna_ext.samplers._autohyper._search import SearchState
from optuna_ext.samplers._autohyper._search import upcoming
from optuna_ext.samplers._storage_seeded import StorageSeededRandomSampler


if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.study import Study
    from optuna.trial import FrozenTrial


_logger = logging.getLogger(__name__)

_POINT_KEY = "AutoHyperSampler:point"
"""Trial system attr: ``{"pass": int, "index": int | None, "lr": float}`` (index None: final)."""
_SEARCH_KEY = "AutoHyperSampler:search"
"""Study system attr: the search settings, the tuned parameter name and the Z source."""

USER_ATTR_BEST_LR = "autohyper:best_lr"
USER_ATTR_CONVERGED = "autohyper:converged"
USER_ATTR_REASON = "autohyper:reason"
USER_ATTR_N_TRIALS = "autohyper:n_trials"
USER_ATTR_BOUNDS = "autohyper:bounds_reached"

PLOT_ID = "autohyper-z"
"""The ``graph_object_id`` of the Z(lr) figure saved with optuna-dashboard."""

_LR_RTOL = 1e-9
_MAX_CLAIM_ROUNDS = 16
# When every upcoming grid point is held by a running trial, a new trial waits (polling the
# storage) for one of them to finish for at most this long before it measures a held point
# again. A held point is freed sooner when its holder is presumed dead (see below).
_MAX_WAIT_SECONDS = 60.0
_MAX_POLL_SECONDS = 1.0
# A RUNNING trial that has held its point for longer than max(_STALE_FACTOR * the longest
# finished autoHyper trial, _STALE_MIN_SECONDS) is presumed dead (killed without being marked
# FAIL), and its point is handed out again.
_STALE_FACTOR = 3.0
_STALE_MIN_SECONDS = 60.0
_UNSET: Any = object()

_REASON_MESSAGES = {
    "running": "the search has not converged yet",
    "plateau": "the plateau test fired more than `exit_counter_threshold` times; lr is the rate "
    "at which the last plateau fired",
    "exit-delta": "the grid became narrower than `lr_delta`; lr is its upper end",
    "relative-width": "the grid's max/min fell below 1 + `relative_width`; lr is its upper end",
    "upper-bound": "Z(lr) had not reached its plateau at the upper bound of the distribution; "
    "lr is that bound (the knee lies above the allowed range)",
    "max-trials": "the search used `max_trials` evaluations without converging",
    "no-trials": "no trial of this study has sampled a parameter with AutoHyperSampler yet",
}


@dataclasses.dataclass(frozen=True)
class AutoHyperResult:
    """The outcome of an autoHyper search, as read back from the study.

    Attributes:
        lr:
            The chosen learning rate, or :obj:`None` before convergence.
        converged:
            Whether the search has stopped with an answer.
        reason:
            A short code: ``"running"``, ``"no-trials"``, or the stop reason (``"plateau"``,
            ``"exit-delta"``, ``"relative-width"``, ``"upper-bound"``, ``"max-trials"``).
        message:
            The reason in words.
        n_trials:
            Number of evaluations the search has used (failed ones included).
        bounds_reached:
            Which bounds of the parameter's distribution the grid reached (``"lower"``,
            ``"upper"``), in order.
        evaluations:
            Every measurement the search used, in order: ``Z`` (``z``) at the rate ``lr`` of
            point ``index`` of grid ``pass_id`` (the response curve ``Z(lr)`` of the paper's
            Figure 1, one grid per pass). Failed and skipped points are not in it, nor are
            speculative measurements of a grid the search never reached.
    """

    lr: float | None
    converged: bool
    reason: str
    message: str
    n_trials: int
    bounds_reached: tuple[str, ...] = ()
    evaluations: tuple[AutoHyperEvaluation, ...] = ()


def _now() -> datetime.datetime:
    return datetime.datetime.now()


def _is_close_lr(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=_LR_RTOL, abs_tol=0.0)


def _valid_z(z: Any) -> bool:
    if isinstance(z, bool) or not isinstance(z, (int, float)):
        return False
    return 0.0 <= float(z) <= 1.0  # False for NaN


def _raw_z(trial: FrozenTrial, z_source: str, values: Sequence[float] | None = None) -> Any:
    if z_source == "value":
        if values is not None:
            return values[0] if len(values) > 0 else None
        return trial.values[0] if trial.values else None
    return trial.user_attrs.get(KNOWLEDGE_GAIN_Z_KEY)


@dataclasses.dataclass
class _Book:
    """The trials that got a grid point, grouped by ``(pass, index)``."""

    attempts: dict[tuple[int, int], list[Attempt]]
    holders: dict[tuple[int, int], list[float]]

    @classmethod
    def read(
        cls,
        trials: Sequence[FrozenTrial],
        z_source: str,
        *,
        exclude_trial_id: int | None = None,
        current: tuple[int, TrialState, float | None] | None = None,
        now: datetime.datetime | None = None,
    ) -> _Book:
        """Group the trials; with ``now``, presumed-dead RUNNING trials hold nothing."""
        attempts: dict[tuple[int, int], list[Attempt]] = {}
        holders: dict[tuple[int, int], list[float]] = {}
        running: list[tuple[tuple[int, int], float, datetime.datetime | None]] = []
        longest = 0.0
        for t in trials:  # sorted by number
            if t._trial_id == exclude_trial_id:
                continue
            point = t.system_attrs.get(_POINT_KEY)
            if not isinstance(point, dict) or point.get("index") is None:
                continue
            key = (int(point["pass"]), int(point["index"]))
            lr = float(point["lr"])
            state = t.state
            z: float | None
            if current is not None and t._trial_id == current[0]:
                state, z = current[1], current[2]
            else:
                raw = _raw_z(t, z_source)
                z = float(raw) if _valid_z(raw) else None
                if state == TrialState.PRUNED and z_source == "value":
                    z = None  # a pruned trial's value is its last intermediate value, not Z
            if state in (TrialState.RUNNING, TrialState.WAITING):
                running.append((key, lr, t.datetime_start))
                continue
            attempts.setdefault(key, []).append((lr, z if state != TrialState.FAIL else None))
            if t.datetime_start is not None and t.datetime_complete is not None:
                duration = (t.datetime_complete - t.datetime_start).total_seconds()
                longest = max(longest, duration)
        stale_after = max(_STALE_FACTOR * longest, _STALE_MIN_SECONDS)
        for key, lr, start in running:
            if now is not None and start is not None:
                if (now - start).total_seconds() > stale_after:
                    continue
            holders.setdefault(key, []).append(lr)
        return cls(attempts, holders)

    def decided(self, point: GridPoint, max_retries: int) -> bool:
        key = (point.pass_id, point.index)
        zs = [z for lr, z in self.attempts.get(key, ()) if _is_close_lr(lr, point.lr)]
        return point_outcome(zs, max_retries)[0] != "pending"

    def held(self, point: GridPoint) -> bool:
        return any(
            _is_close_lr(lr, point.lr) for lr in self.holders.get((point.pass_id, point.index), ())
        )


def _load_stored(study: Study) -> tuple[str, str, AutoHyperSearch] | None:
    stored = study._storage.get_study_system_attrs(study._study_id).get(_SEARCH_KEY)
    if stored is None:
        return None
    d = dict(stored)
    param_name = d.pop("param_name")
    z_source = d.pop("z_source")
    return param_name, z_source, AutoHyperSearch.from_dict(d)


def _to_result(state: SearchState) -> AutoHyperResult:
    return AutoHyperResult(
        lr=state.lr if state.converged else None,
        converged=state.converged,
        reason=state.reason,
        message=_REASON_MESSAGES.get(state.reason, state.reason),
        n_trials=state.n_trials,
        bounds_reached=state.bounds_reached,
        evaluations=state.evaluations,
    )


def _try_stop(study: Study) -> None:
    try:
        study.stop()
    except RuntimeError:
        # Outside `Study.optimize` (ask-and-tell, `result`), there is no loop to stop.
        pass


def _checked_z(
    trial: FrozenTrial,
    state: TrialState,
    values: Sequence[float] | None,
    param_name: str,
    z_source: str,
) -> float | None:
    """The valid Z of a finished grid-point trial, None for a failure; raises if it is bad."""
    if state == TrialState.FAIL:
        return None
    if state == TrialState.PRUNED and z_source == "value":
        return None
    raw = _raw_z(trial, z_source, values)
    where = (
        "the objective value (z_source='value')"
        if z_source == "value"
        else f"the trial user attr {KNOWLEDGE_GAIN_Z_KEY!r} (KNOWLEDGE_GAIN_Z_KEY)"
    )
    if raw is None:
        if state == TrialState.PRUNED:
            return None
        raise ValueError(
            f"Trial {trial.number} finished {state.name} with {param_name}="
            f"{trial.params.get(param_name)}, but has no Z in {where}. "
            "AutoHyperSampler needs the knowledge-gain response Z(lr) of every trial it "
            "samples: call `KnowledgeGainTracker.report(trial)` (optuna_ext.metrics) in the "
            "objective after the tracked epochs, or "
            "`trial.set_user_attr(KNOWLEDGE_GAIN_Z_KEY, z)`, or create the sampler with "
            "`z_source='value'` to use the objective value as Z."
        )
    if not _valid_z(raw):
        raise ValueError(
            f"Trial {trial.number} reported Z={raw!r} in {where}, but AutoHyperSampler "
            "needs Z to be a float in [0, 1] (the fraction of zero knowledge gains)."
        )
    return float(raw)


class AutoHyperSampler(BaseSampler):
    """Sampler that tunes the initial learning rate with autoHyper.

    autoHyper (*Response Modeling of Hyper-Parameters for Deep Convolutional Neural Networks*,
    ICLR 2021 submission; reference code ``MathieuTuli/autoHyper``) trains the
    network for a few epochs at each learning rate ``lr`` of a logarithmic grid and measures
    ``Z(lr)``, the fraction of convolution-weight unfoldings whose low-rank (EVBMF)
    factorization is still empty. ``Z`` falls from 1 (nothing learned) to a plateau as ``lr``
    grows; autoHyper walks the grid, grows, shrinks and zooms it (Algorithm 1), and returns the
    rate at the inception of the plateau. See
    :class:`~optuna_ext.samplers.AutoHyperSearch` for each rule, and for
    where the defaults follow the reference code rather than the paper.

    How it works with Optuna:

    - Only the parameter named ``param_name`` is tuned; it must be suggested with
      ``trial.suggest_float(param_name, low, high, log=True)``. The grid never leaves
      ``[low, high]``: a rule that would cross a bound is clamped, the event is logged and
      recorded in the study user attr ``"autohyper:bounds_reached"``, and if the search must
      move above ``high`` it stops there (reason ``"upper-bound"``). Every other parameter is
      sampled by ``independent_sampler``.
    - ``Z`` is read from the trial user attr ``"knowledge_gain:Z"``
      (:data:`~optuna_ext.metrics.KNOWLEDGE_GAIN_Z_KEY`) that
      :meth:`KnowledgeGainTracker.report <optuna_ext.metrics.KnowledgeGainTracker.report>`
      writes, or from the objective value with ``z_source="value"``. The objective itself may
      return any metric (e.g. validation accuracy); the sampler does not use it.
    - No search state lives only in memory. Each trial that gets a grid point records it in the
      trial system attr ``"AutoHyperSampler:point"``; the settings are stored in the study
      system attr ``"AutoHyperSampler:search"``. The state is rebuilt at every step by
      replaying the search over the finished trials, so a new sampler (or process) on the same
      storage continues exactly where the last one stopped, and :meth:`result` works from a
      fresh process with only the storage. Resuming with different settings raises
      :class:`ValueError` (``max_trials`` excepted, which may be changed to extend a search).
    - Several workers: a new trial gets the first point of the search's upcoming sequence that
      no RUNNING or WAITING trial holds and that is not already decided. Points beyond the next
      one are speculative: their measurements are used only if the sequential search reaches
      them with the same rate (a re-grid makes them stale, and they are ignored). The
      decisions are therefore exactly those of a single worker. A claim is written, then
      re-checked against the other running trials; on a collision both trials pick again,
      after a random pause, among the first few free points at random. When every upcoming
      point is taken (a slow trial that the other workers have run far ahead of), a new
      trial waits for one of them to finish, polling the storage, rather than measure a
      held point twice; only after a minute of waiting does it re-evaluate the next point
      (the first finished measurement, by trial number, is used). A trial that asks for the
      rate while it alone holds every upcoming point (several trials asked before any is
      told, in one thread) therefore waits that minute.
    - Failed trials: a FAIL trial, and a PRUNED or COMPLETE trial without a valid ``Z``, are a
      failed attempt; the point is re-assigned up to ``max_retries`` times and then skipped
      (the walk continues at the next grid point). A PRUNED trial with a valid ``Z`` is used.
      A trial killed without being marked FAIL stays RUNNING; it keeps its point until it has
      run for three times as long as the longest finished autoHyper trial (and at least a
      minute), after which the point is handed out again. Optuna's heartbeat
      (``RDBStorage(heartbeat_interval=...)``) fails such trials sooner.
    - When the search stops, the sampler calls :meth:`Study.stop <optuna.study.Study.stop>`
      (which ends :meth:`~optuna.study.Study.optimize`; under ask-and-tell nothing is raised)
      and writes ``"autohyper:best_lr"``, ``"autohyper:converged"``, ``"autohyper:reason"`` and
      ``"autohyper:n_trials"`` to the study user attrs. A trial that asks for ``param_name``
      afterwards gets the chosen rate (after ``"max-trials"``, the upper end of the last grid).
    - After each trial, a plotly figure of ``Z`` against ``lr`` (log axis, colour = grid pass,
      chosen rate as a vertical line) is saved to the study with optuna-dashboard's
      ``save_plotly_graph_object`` (id ``"autohyper-z"``, overwritten each time).
    - Use it with a pruner that does not prune the autoHyper trials (e.g.
      :class:`~optuna.pruners.NopPruner`): a trial pruned before it reports ``Z`` is a failure.

    Example:

        .. testcode::

            import optuna

            from optuna_ext.metrics import KNOWLEDGE_GAIN_Z_KEY
            from optuna_ext.samplers import AutoHyperSampler


            def objective(trial):
                lr = trial.suggest_float("lr", 1e-6, 1.0, log=True)
                # In practice: train a few epochs with a KnowledgeGainTracker and call
                # tracker.report(trial). Here, a synthetic response with its knee at 1e-2.
                z = 0.05 + 0.95 / (1.0 + (lr / 1e-2) ** 3)
                trial.set_user_attr(KNOWLEDGE_GAIN_Z_KEY, round(z, 3))
                return 1.0 - z  # any metric


            study = optuna.create_study(sampler=AutoHyperSampler(), direction="maximize")
            study.optimize(objective, n_trials=500)  # stops early, when the search converges
            print(AutoHyperSampler.best_lr(study))

    Args:
        param_name:
            The learning-rate parameter to tune.
        min_lr:
            Lower end of the first grid.
        max_lr:
            Upper end of the first grid.
        num_split:
            Number of points in each grid.
        min_delta:
            Plateau threshold on ``prod(Z) ** power``.
        power:
            Exponent of the plateau test.
        lr_delta:
            Stop when the grid is narrower than this (absolute, as in the reference code);
            :obj:`None` disables the test.
        exit_counter_threshold:
            Stop at plateau number ``exit_counter_threshold + 1``.
        relative_width:
            If set, also stop when ``max_lr / min_lr < 1 + relative_width``. Recommended for
            SGD-scale rates, where the absolute ``lr_delta`` rarely fires.
        max_trials:
            Maximum number of evaluations the search may use (failed ones included); then the
            study is stopped without an answer.
        max_retries:
            How many times a failed grid point is re-evaluated before it is skipped.
        z_source:
            ``"user_attr"`` to read ``Z`` from the user attr ``"knowledge_gain:Z"``, or
            ``"value"`` to use the objective value.
        independent_sampler:
            Sampler for every parameter except ``param_name``. Defaults to uniform sampling
            seeded by ``seed`` and the trial's position in the study (not by one random
            stream, as :class:`~optuna.samplers.RandomSampler` is), so that a study resumed
            in a new process draws the values an uninterrupted one would have.
        seed:
            Seed of the default independent sampler and of the sampler's own random state
            (only used to stagger concurrent workers). The learning rates themselves are
            deterministic.
        save_plot:
            Whether to save the ``Z(lr)`` figure to the study after each trial.
    """

    def __init__(
        self,
        *,
        param_name: str = "lr",
        min_lr: float = 1e-4,
        max_lr: float = 0.1,
        num_split: int = 20,
        min_delta: float = 5e-3,
        power: float = 0.8,
        lr_delta: float | None = 3e-5,
        exit_counter_threshold: int = 6,
        relative_width: float | None = None,
        max_trials: int = 100,
        max_retries: int = 2,
        z_source: Literal["user_attr", "value"] = "user_attr",
        independent_sampler: BaseSampler | None = None,
        seed: int | None = None,
        save_plot: bool = True,
    ) -> None:
        if not isinstance(param_name, str) or not param_name:
            raise ValueError(
                f"The value of `param_name` is {param_name!r}, but must be a non-empty string."
            )
        if z_source not in ("user_attr", "value"):
            raise ValueError(
                f"The value of `z_source` is {z_source!r}, but must be 'user_attr' or 'value'."
            )
        if independent_sampler is not None and not isinstance(independent_sampler, BaseSampler):
            raise ValueError(
                f"The value of `independent_sampler` is {independent_sampler!r}, but must be an "
                "optuna.samplers.BaseSampler or None."
            )
        self._settings: dict[str, Any] = dict(
            min_lr=min_lr,
            max_lr=max_lr,
            num_split=num_split,
            min_delta=min_delta,
            power=power,
            lr_delta=lr_delta,
            exit_counter_threshold=exit_counter_threshold,
            relative_width=relative_width,
            max_trials=max_trials,
            max_retries=max_retries,
        )
        # Validates every setting (each bad value raises a ValueError naming it).
        AutoHyperSearch(**self._settings)
        self._param_name = param_name
        self._z_source = z_source
        self._save_plot = bool(save_plot)
        self._rng = LazyRandomState(seed)
        self._independent_sampler = independent_sampler or StorageSeededRandomSampler(seed=seed)
        self._logged: set[tuple[int, str]] = set()

    # -- public API ------------------------------------------------------------------------

    @property
    def param_name(self) -> str:
        """The name of the tuned learning-rate parameter."""
        return self._param_name

    @classmethod
    def result(cls, study: Study) -> AutoHyperResult:
        """Read the state of the autoHyper search of ``study`` from its storage.

        The search is replayed from the trials and the settings stored in the study, so this
        works from any process, with no sampler instance, and gives the same answer every time.

        Args:
            study:
                A study optimized with :class:`AutoHyperSampler`.

        Returns:
            The chosen rate (``lr``, :obj:`None` before convergence), whether the search has
            converged, why, and how many evaluations it used.
        """
        stored = _load_stored(study)
        if stored is None:
            return AutoHyperResult(None, False, "no-trials", _REASON_MESSAGES["no-trials"], 0)
        _, z_source, search = stored
        book = _Book.read(study._get_trials(deepcopy=False), z_source)
        return _to_result(replay(search, book.attempts))

    @classmethod
    def best_lr(cls, study: Study) -> float | None:
        """The learning rate chosen by the search, or :obj:`None` if it has not converged.

        Use :meth:`result` for the reason.
        """
        return cls.result(study).lr

    # -- BaseSampler -----------------------------------------------------------------------

    def reseed_rng(self) -> None:
        self._rng.rng.seed()
        self._independent_sampler.reseed_rng()

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        self._raise_error_if_multi_objective(study)
        return {}

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._independent_sampler.before_trial(study, trial)

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        self._raise_error_if_multi_objective(study)
        if param_name != self._param_name:
            return self._independent_sampler.sample_independent(
                study, trial, param_name, param_distribution
            )
        if not (
            isinstance(param_distribution, FloatDistribution)
            and param_distribution.log
            and param_distribution.step is None
        ):
            raise ValueError(
                f"AutoHyperSampler tunes `{param_name}` on a logarithmic grid, so it must be "
                f"suggested with `trial.suggest_float({param_name!r}, low, high, log=True)`, "
                f"but its distribution is {param_distribution}."
            )
        search = self._resolve_search(study, param_distribution)
        return self._claim(study, trial, search)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._independent_sampler.after_trial(study, trial, state, values)
        point = trial.system_attrs.get(_POINT_KEY)
        if not isinstance(point, dict) or point.get("index") is None:
            return  # not an autoHyper grid point (other parameters only, enqueued, or final)
        stored = _load_stored(study)
        if stored is None:  # pragma: no cover - the claim always stores the settings first
            return
        param_name, z_source, search = stored
        z = _checked_z(trial, state, values, param_name, z_source)
        # Optuna's heartbeat thread has stopped: keep the trial from looking stale to the
        # other workers while the search is replayed and the figure saved.
        with keep_alive(study, trial._trial_id):
            book = _Book.read(
                study._get_trials(deepcopy=False),
                z_source,
                current=(trial._trial_id, state, z),
            )
            self._publish(study, replay(search, book.attempts))

    # -- internals -------------------------------------------------------------------------

    def _resolve_search(self, study: Study, distribution: FloatDistribution) -> AutoHyperSearch:
        search = AutoHyperSearch(
            **self._settings, lower_bound=distribution.low, upper_bound=distribution.high
        )
        mine = {"param_name": self._param_name, "z_source": self._z_source, **search.to_dict()}
        stored = study._storage.get_study_system_attrs(study._study_id).get(_SEARCH_KEY)
        if stored is None:
            study._storage.set_study_system_attr(study._study_id, _SEARCH_KEY, mine)
            return search
        stored = dict(stored)
        keys = (set(stored) | set(mine)) - {"max_trials"}
        diff = sorted(k for k in keys if stored.get(k) != mine.get(k))
        if diff:
            changes = ", ".join(f"{k}: {stored.get(k)!r} -> {mine.get(k)!r}" for k in diff)
            raise ValueError(
                "This study's autoHyper search was run with other settings or another "
                f"distribution of `{self._param_name}` ({changes}). A search cannot continue "
                "with different settings: use the original ones, or a new study."
            )
        if stored.get("max_trials") != mine["max_trials"]:
            _logger.info(
                "AutoHyperSampler: max_trials of this study changed from %s to %s.",
                stored.get("max_trials"),
                mine["max_trials"],
            )
            study._storage.set_study_system_attr(study._study_id, _SEARCH_KEY, mine)
        return search

    def _claim(self, study: Study, trial: FrozenTrial, search: AutoHyperSearch) -> float:
        trials = study._get_trials(deepcopy=False)
        point: GridPoint | None = None
        round_ = 0
        waited = 0.0
        n_polls = 0
        while round_ < _MAX_CLAIM_ROUNDS:
            book = _Book.read(trials, self._z_source, exclude_trial_id=trial._trial_id, now=_now())
            state = replay(search, book.attempts)
            if state.finished:
                return self._final(study, trial, state)
            # First try: the first free point. After a collision: one of the first `round_ + 1`
            # free points at random, so that colliding trials drift apart.
            free = self._free_points(search, state, book, round_ + 1)
            if not free and waited < _MAX_WAIT_SECONDS:
                # Every upcoming point is held by a running trial (other workers, or one slow
                # trial that the others have run far ahead of): wait for one to finish rather
                # than measure a held point twice.
                self._log_once(
                    study,
                    "wait",
                    logging.INFO,
                    "AutoHyperSampler: every upcoming grid point is held by a running trial; "
                    "trial %d waits for one of them to finish.",
                    trial.number,
                )
                pause = min(_MAX_POLL_SECONDS, 0.01 * 2**n_polls)
                pause *= 0.5 + float(self._rng.rng.random_sample())
                time.sleep(pause)
                waited += pause
                n_polls += 1
                trials = study._get_trials(deepcopy=False)
                continue
            if not free:
                point = state.next_point
                assert point is not None
                self._log_once(
                    study,
                    "duplicate",
                    logging.WARNING,
                    "AutoHyperSampler: every upcoming grid point has been held by a running "
                    "trial for %.0f s; trial %d re-evaluates lr=%.6g (the first finished "
                    "measurement is used).",
                    waited,
                    trial.number,
                    point.lr,
                )
                self._write_point(study, trial, point)
                return point.lr
            # (np.random.RandomState is thread-safe; the sampler holds no lock so that it can
            # be pickled and deep-copied.)
            point = free[int(self._rng.rng.randint(len(free)))] if round_ else free[0]
            self._write_point(study, trial, point)
            # Re-read: if another trial claimed (or finished) the same point meanwhile, whichever
            # of the two wrote last sees the other; both pick again after a random pause.
            trials = study._get_trials(deepcopy=False)
            check = _Book.read(
                trials, self._z_source, exclude_trial_id=trial._trial_id, now=_now()
            )
            if not (check.held(point) or check.decided(point, search.max_retries)):
                return point.lr
            _logger.debug("AutoHyperSampler: trial %d lost point %s", trial.number, point)
            pause = 0.001 * 2 ** min(round_, 6) * float(self._rng.rng.random_sample())
            time.sleep(pause)
            round_ += 1
        assert point is not None
        _logger.warning(
            "AutoHyperSampler: trial %d could not claim a free grid point after %d rounds; it "
            "evaluates lr=%.6g anyway.",
            trial.number,
            _MAX_CLAIM_ROUNDS,
            point.lr,
        )
        return point.lr

    @staticmethod
    def _write_point(study: Study, trial: FrozenTrial, point: GridPoint) -> None:
        study._storage.set_trial_system_attr(
            trial._trial_id,
            _POINT_KEY,
            {"pass": point.pass_id, "index": point.index, "lr": point.lr},
        )

    @staticmethod
    def _free_points(
        search: AutoHyperSearch, state: SearchState, book: _Book, limit: int
    ) -> list[GridPoint]:
        free: list[GridPoint] = []
        for point in upcoming(search, state):
            if book.held(point) or book.decided(point, search.max_retries):
                continue
            free.append(point)
            if len(free) == limit:
                break
        return free

    def _final(self, study: Study, trial: FrozenTrial, state: SearchState) -> float:
        lr = state.lr if state.converged and state.lr is not None else state.grid[-1]
        study._storage.set_trial_system_attr(
            trial._trial_id, _POINT_KEY, {"pass": state.pass_id, "index": None, "lr": lr}
        )
        self._log_once(
            study,
            "final",
            logging.WARNING if state.reason == MAX_TRIALS else logging.INFO,
            "AutoHyperSampler: the search has finished (%s); trial %d gets lr=%.6g.",
            state.reason,
            trial.number,
            lr,
        )
        if self._publish_result(study, state) and self._save_plot:
            self._save_figure(study, state)
        _try_stop(study)
        return lr

    def _publish(self, study: Study, state: SearchState) -> None:
        storage, study_id = study._storage, study._study_id
        current = storage.get_study_user_attrs(study_id)
        bounds = list(state.bounds_reached)
        if bounds and current.get(USER_ATTR_BOUNDS) != bounds:
            # Every worker writes the same derived values here, often at the same time.
            retry_on_write_conflict(
                lambda: storage.set_study_user_attr(study_id, USER_ATTR_BOUNDS, bounds),
                what=f"the study user attr {USER_ATTR_BOUNDS!r}",
            )
            _logger.warning(
                "AutoHyperSampler: the search reached the %s bound(s) of the distribution of "
                "`%s`; it does not go past them.",
                " and ".join(bounds),
                self._param_name,
            )
        if state.finished:
            self._publish_result(study, state, current)
        if self._save_plot:
            self._save_figure(study, state)
        if state.finished:
            _try_stop(study)

    def _publish_result(
        self, study: Study, state: SearchState, current: dict[str, Any] | None = None
    ) -> bool:
        """Write the finished search's result to the study user attrs; whether they changed.

        Called by the trial that finishes the search, and again by every trial that finds it
        finished: two workers whose trials finish the search at the same time each see the
        other's still running, so neither may see the search finished in ``after_trial``.
        """
        storage, study_id = study._storage, study._study_id
        if current is None:
            current = storage.get_study_user_attrs(study_id)
        result = _to_result(state)
        attrs = {
            USER_ATTR_BEST_LR: result.lr,
            USER_ATTR_CONVERGED: result.converged,
            USER_ATTR_REASON: result.reason,
            USER_ATTR_N_TRIALS: result.n_trials,
        }
        if any(current.get(k, _UNSET) != v for k, v in attrs.items()):
            for k, v in attrs.items():
                retry_on_write_conflict(
                    functools.partial(storage.set_study_user_attr, study_id, k, v),
                    what=f"the study user attr {k!r}",
                )
            if result.converged:
                _logger.info(
                    "AutoHyperSampler converged after %d evaluations (%s): %s=%.6g.",
                    result.n_trials,
                    result.reason,
                    self._param_name,
                    result.lr,
                )
            else:
                _logger.warning(
                    "AutoHyperSampler stopped after %d evaluations without converging (%s).",
                    result.n_trials,
                    result.reason,
                )
            return True
        return False

    def _save_figure(self, study: Study, state: SearchState) -> None:
        try:
            import optuna_dashboard  # noqa: F401
            import plotly.graph_objects as go
        except ImportError:  # pragma: no cover - both are dependencies of optuna-ext
            self._log_once(
                study, "plot", logging.WARNING, "AutoHyperSampler: no plotly/optuna-dashboard."
            )
            return
        evals = state.evaluations
        fig = go.Figure()
        fig.add_trace(
            go.Scatter(
                x=[e.lr for e in evals],
                y=[e.z for e in evals],
                mode="markers",
                name="Z(lr)",
                text=[f"pass {e.pass_id}, point {e.index}" for e in evals],
                marker=dict(
                    color=[e.pass_id for e in evals],
                    colorscale="Viridis",
                    showscale=True,
                    colorbar=dict(title="pass"),
                ),
            )
        )
        title = "autoHyper: Z(lr)"
        if state.converged and state.lr is not None:
            fig.add_trace(
                go.Scatter(
                    x=[state.lr, state.lr],
                    y=[0.0, 1.0],
                    mode="lines",
                    name=f"chosen {self._param_name}={state.lr:.4g}",
                    line=dict(color="red", dash="dash"),
                )
            )
            title += f", chosen {self._param_name}={state.lr:.4g} ({state.reason})"
        fig.update_layout(
            title=title,
            xaxis=dict(type="log", title=self._param_name),
            yaxis=dict(title="Z", range=[-0.02, 1.02]),
            showlegend=True,
            # One row above the plot: on the right it would cover the colorbar.
            legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0),
        )
        try:
            # Safe against the other workers rewriting the figure at the same time.
            save_dashboard_figure(study, fig, graph_object_id=PLOT_ID)
        except Exception as e:  # a figure must never break the study
            self._log_once(
                study, "plot", logging.WARNING, "AutoHyperSampler: cannot save the figure: %s", e
            )

    def _log_once(self, study: Study, what: str, level: int, msg: str, *args: Any) -> None:
        key = (study._study_id, what)
        if key in self._logged:
            return
        self._logged.add(key)
        _logger.log(level, msg, *args)
