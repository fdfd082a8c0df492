from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
import dataclasses
import math
import struct
import threading
from typing import Any
from typing import TYPE_CHECKING

import numpy as np
from optuna.distributions import FloatDistribution
from optuna.distributions import IntDistribution
from optuna.logging import get_logger
from optuna.samplers import BaseSampler
from optuna.samplers._lazy_random_state import LazyRandomState
from optuna.search_space import IntersectionSearchSpace
from optuna.study import StudyDirection
from optuna.trial import TrialState
import torch

from optuna_ext._gp.acqf import incumbent_threshold
from optuna_ext._gp.acqf import maximize_log_ei
from optuna_ext._gp.box import UnitBox
from optuna_ext._gp.gp import fit_gp
from optuna_ext._gp.gp import GPRegressor
from optuna_ext._gp.gp import KernelParams
from optuna_ext._gp.gp import single_thread
from optuna_ext._gp.kernels import check_time_kernel_params
from optuna_ext._gp.kernels import KERNEL_NAMES
from optuna_ext.samplers._storage_seeded import _MAX_SEED
from optuna_ext.samplers._storage_seeded import seed_from
from optuna_ext.samplers._storage_seeded import seeded_random_draw


if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.study import Study
    from optuna.trial import FrozenTrial


_logger = get_logger(__name__)

PROPOSAL_KEY = "HyperdynSampler:proposal"
"""Trial system attr written by a GP proposal: epoch, number of observations, threshold and
log EI (standardized units), the fitted length scales, and the numbers of the other running
candidates of the epoch it treated as pending (``"pending"``)."""

_STREAM_RELATIVE = 0
_STREAM_INDEPENDENT = 1
_STREAM_ACQF = 2
_NUMERIC = (FloatDistribution, IntDistribution)
_PEER_STATES = (TrialState.RUNNING, TrialState.WAITING, TrialState.COMPLETE)


def _time_value(trial: FrozenTrial, time_param: str) -> float | None:
    """The trial's value of the time parameter, or :obj:`None` when it has not suggested it.

    Raises:
        ValueError: The value is not an int or a float (a bool or a string, e.g.).
    """
    if time_param not in trial.params:
        return None
    value = trial.params[time_param]
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(
            f"The value of the time parameter `{time_param}` of trial {trial.number} is "
            f"{value!r}, but must be an int or a float (the epoch index)."
        )
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(
            f"The value of the time parameter `{time_param}` of trial {trial.number} is "
            f"{value}, but must be finite."
        )
    return value


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    """Raise a ``ValueError`` unless ``value`` is an int (not a bool) in ``[low, high]``."""
    rule = f"`{name} >= {low}`" if high is None else f"`{low} <= {name} <= {high}`"
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"The value of `{name}` is {value!r}, but must be an int {rule}.")
    if value < low or (high is not None and value > high):
        raise ValueError(f"The value of `{name}` is {value}, but must be {rule}.")


def _at_or_after(value: object, t: float) -> bool:
    """Whether a stored epoch ``value`` is a number ``>= t``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    return float(value) >= t


def _float_key(value: float | None) -> int:
    """A non-negative integer that identifies a float (its IEEE bits), or 0 for None."""
    if value is None:
        return 0
    return 1 + int.from_bytes(struct.pack("<d", value), "little")


def _snap(value: float, distribution: FloatDistribution | IntDistribution) -> float | int:
    """Round a value of the continuous box onto the distribution's grid, within bounds."""
    low, high = distribution.low, distribution.high
    if isinstance(distribution, IntDistribution):
        step = distribution.step
        k = round((value - low) / step)
        return int(min(max(low + k * step, low), high - (high - low) % step))
    if distribution.step is not None:
        float_step = distribution.step
        n_steps = math.floor((high - low) / float_step + 1e-9)
        n = min(max(round((value - low) / float_step), 0), n_steps)
        return float(min(max(low + n * float_step, low), high))
    return float(min(max(value, low), high))


class HyperdynSampler(BaseSampler):
    """Sampler of Hyperdyn's per-epoch Bayesian optimization over (hyper-parameters, epoch).

    Paper: `Dynamically Learning the Learning Rates: Online Hyperparameter Optimization
    <https://openreview.net/forum?id=HJtPtdqQG>`__ (ICLR 2018 submission), Algorithms 1, 2
    and 4. Each trial is one candidate for one epoch: its parameters are the tuned
    hyper-parameters (e.g. the learning rate and momentum) plus the epoch index in the fixed
    parameter ``time_param``, and its value is what the candidate achieved in that epoch (in
    :class:`~optuna_ext.hyperdyn.HyperdynTuner`, the change in validation accuracy over the
    incumbent weights, the paper's ``acc_diff``).

    The objective must suggest the time parameter *first*, as a fixed value:
    ``trial.suggest_float("epoch", t, t)`` (the paper's search space ``S x [t, t]``), or
    ``study.ask(fixed_distributions={"epoch": FloatDistribution(t, t), ...})`` with it as the
    first entry. Its value must be an int or a float; anything else raises
    :class:`ValueError`. The other float and int parameters are sampled together
    (relative sampling):

    - The observations are the COMPLETE trials whose epoch is *smaller* than the current
      trial's: the paper's ``D_{t-1}`` (Algorithm 4, line 5), of the epochs whose time-kernel
      weight is at least ``min_time_weight`` (the last 49 epochs by default) and at most
      ``max_observations`` of them, of the latest epochs, so that a proposal's cost stops
      growing with the study. Candidates of the same epoch do not see each other, so a
      resumed run that had finished some candidates of an unfinished epoch proposes the same
      as an uninterrupted one.
    - While fewer than ``n_startup_trials`` observations exist, the parameters are drawn
      uniformly at random (the paper's Random-Start, 5 points).
    - Then a GP with the product kernel ``K1(eta1, eta2) * K2(t1, t2)`` (``K1`` Matern-5/2 or
      RBF on the parameters scaled to ``[0, 1]``, log scale for log parameters, one length
      scale each; ``K2 = beta**alpha / (|t1 - t2| + beta)**alpha``) is fitted to the
      standardized values by maximizing the marginal likelihood (with weak priors), and
      the expected improvement is maximized over the box at the fixed epoch ``t``. The
      threshold of EI is the best posterior mean over the observed parameter values at epoch
      ``t`` (the paper names the best observation; with the time kernel that one is stale,
      see :func:`optuna_ext._gp.acqf.incumbent_threshold`). Int and stepped parameters are
      modelled as continuous and rounded onto their grid.

    Without a time parameter (e.g. in Optuna's generic sampler tests, or an ordinary
    objective) the sampler is a plain GP-EI sampler over all COMPLETE trials (``K2 = 1``).
    Categorical parameters and parameters outside the intersection search space are drawn
    uniformly at random.

    The sampler keeps no state in memory. All randomness is derived from ``seed`` and what the
    storage holds when a trial samples (the number of observations, the epoch, and the
    trial's rank among the earlier trials still running or waiting and the finished ones of
    its epoch). Each GP proposal writes the trial system attr ``"HyperdynSampler:proposal"``
    (epoch, number of observations, EI threshold and log EI, the fitted kernel), and the next
    fit starts from the kernel of the latest observed proposal (a warm start read from the
    storage). So a process that restarts with the same seed and the same storage proposes
    the same values.

    The GP is a small float64 torch implementation (:mod:`optuna_ext._gp`) rather than
    scikit-learn's or Optuna's: the time kernel and the fixed epoch of the acquisition are
    not expressible through ``GPSampler``, and one proposal costs less than ``GPSampler``'s at
    50, 200 and 500 trials (``benchmarks/bench_hyperdyn_overhead.py``).

    Example:

        .. testcode::

            import optuna
            from optuna_ext.samplers._hyperdyn import HyperdynSampler

            sampler = HyperdynSampler(seed=0, n_startup_trials=3)
            study = optuna.create_study(direction="maximize", sampler=sampler)
            for epoch in range(4):
                for _ in range(2):
                    trial = study.ask()
                    trial.suggest_float("epoch", epoch, epoch)
                    lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
                    study.tell(trial, -abs(lr - 0.05))

    Args:
        time_param:
            The name of the epoch parameter.
        n_startup_trials:
            The number of observations below which proposals are random (paper: 5).
        kernel:
            ``"matern52"`` or ``"rbf"``: the kernel ``K1`` on the tuned parameters.
        alpha:
            The time kernel's ``alpha > 0`` (paper: 1).
        beta:
            The time kernel's ``beta > 0`` in epochs (paper: 1/2).
        seed:
            The seed of all random draws; :obj:`None` picks one at random.
        deterministic_objective:
            Fix the GP's noise at its minimum (for noiseless objectives).
        independent_sampler:
            A sampler for parameters outside the relative search space. :obj:`None` (the
            default) draws them uniformly from the trial's derived random stream, keeping
            the sampler stateless.
        n_candidates:
            The number of Sobol candidates scored for EI.
        n_local_search:
            The number of L-BFGS-B polishes of the best candidates.
        n_gp_starts:
            The number of starting points of the GP fit (1 to 3); with a warm start it
            replaces the first.
        max_observations:
            The most observations the GP is fitted to: past it, those of the latest epochs
            (nearest to the proposal's epoch; then the latest trials) are kept. The time
            kernel gives an observation ``Delta`` epochs back the weight
            ``(beta / (Delta + beta))**alpha`` (0.003 at 150 epochs with the paper's values),
            so the oldest ones change little, while the fit's cost grows with the cube of
            their number (``benchmarks/bench_decision_time.py``). :obj:`None` keeps them all.
        min_time_weight:
            Observations whose time-kernel weight to the proposal's epoch,
            ``(beta / (Delta + beta))**alpha``, is below this are left out of the GP. The
            default 0.01 drops, with the paper's ``alpha`` and ``beta``, the epochs more than
            49.5 epochs before the proposal's, so that in a long run a proposal's cost does not
            grow with the run (at two candidates per epoch the GP sees about 100
            observations). **Differs from the paper**, which fits the GP to all of
            ``D_{t-1}``; runs of up to 50 epochs are not affected. :obj:`None` follows the
            paper (``max_observations`` still applies).
    """

    def __init__(
        self,
        *,
        time_param: str = "epoch",
        n_startup_trials: int = 5,
        kernel: str = "matern52",
        alpha: float = 1.0,
        beta: float = 0.5,
        seed: int | None = None,
        deterministic_objective: bool = False,
        independent_sampler: BaseSampler | None = None,
        n_candidates: int = 1024,
        n_local_search: int = 4,
        n_gp_starts: int = 1,
        max_observations: int | None = 300,
        min_time_weight: float | None = 0.01,
    ) -> None:
        if not isinstance(time_param, str) or not time_param:
            raise ValueError(
                f"The value of `time_param` is {time_param!r}, but must be a non-empty string."
            )
        _check_int("n_startup_trials", n_startup_trials, 1)
        if kernel not in KERNEL_NAMES:
            raise ValueError(
                f"The value of `kernel` is {kernel!r}, but must be one of {KERNEL_NAMES}."
            )
        check_time_kernel_params(alpha, beta)
        _check_int("n_candidates", n_candidates, 1)
        _check_int("n_local_search", n_local_search, 0)
        _check_int("n_gp_starts", n_gp_starts, 1, 3)
        if max_observations is not None and (
            isinstance(max_observations, bool)
            or not isinstance(max_observations, int)
            or max_observations < n_startup_trials
        ):
            raise ValueError(
                f"The value of `max_observations` is {max_observations!r}, but must be None or "
                f"an int `max_observations >= n_startup_trials` ({n_startup_trials})."
            )
        if min_time_weight is not None and not (
            isinstance(min_time_weight, (int, float))
            and not isinstance(min_time_weight, bool)
            and 0.0 <= min_time_weight < 1.0
        ):
            raise ValueError(
                f"The value of `min_time_weight` is {min_time_weight!r}, but must be None or a "
                "float `0 <= min_time_weight < 1`."
            )
        self._max_observations = max_observations
        self._min_time_weight = None if min_time_weight is None else float(min_time_weight)
        self._time_param = time_param
        self._n_startup_trials = n_startup_trials
        self._kernel = kernel
        self._alpha = float(alpha)
        self._beta = float(beta)
        self._deterministic = deterministic_objective
        self._independent_sampler = independent_sampler
        self._n_candidates = n_candidates
        self._n_local_search = n_local_search
        self._n_gp_starts = n_gp_starts
        self._rng = LazyRandomState(seed)
        self._base_seed: int | None = None
        self._lock = threading.Lock()
        self._search_space = IntersectionSearchSpace()

    @property
    def time_param(self) -> str:
        """The name of the epoch parameter."""
        return self._time_param

    def reseed_rng(self) -> None:
        with self._lock:
            self._rng.rng.seed()
            self._base_seed = None
        if self._independent_sampler is not None:
            self._independent_sampler.reseed_rng()

    def _seed(self) -> int:
        with self._lock:
            if self._base_seed is None:
                self._base_seed = int(self._rng.rng.randint(0, _MAX_SEED))
            return self._base_seed

    def _stream_key(
        self,
        trial: FrozenTrial,
        n_observations: int,
        t: float | None,
        trials: Sequence[FrozenTrial],
    ) -> list[int]:
        """The entropy of the trial's random stream.

        It is the seed, the number of observations, the epoch, and the trial's rank among
        its peers: the earlier trials still running or waiting, plus the finished trials of
        the same or a later epoch. Concurrent or successive candidates of one epoch thus draw
        different values, and everything is read from the storage. (A later epoch counts:
        with several workers, a trial of a later epoch that was running when one candidate
        sampled may have finished when the next one samples; the number of observations of
        the epoch is the same for both, so without it the two would share their rank. In a
        run of one process the epochs never decrease, and the rank is the number of earlier
        candidates of the epoch.)
        """
        rank = 0
        for other in trials:
            if other.number >= trial.number or other.state not in _PEER_STATES:
                continue
            if other.state != TrialState.COMPLETE:
                rank += 1
            elif t is not None and _at_or_after(other.params.get(self._time_param), t):
                rank += 1
        return [self._seed(), n_observations, _float_key(t), rank]

    def _random_value(
        self,
        study: Study,
        trial: FrozenTrial,
        key: Sequence[int],
        stream: int,
        name: str,
        distribution: BaseDistribution,
    ) -> Any:
        return seeded_random_draw(study, trial, name, distribution, [*key, stream])

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {
            name: distribution
            for name, distribution in self._search_space.calculate(study).items()
            if name != self._time_param
            and isinstance(distribution, _NUMERIC)
            and not distribution.single()
        }

    def _observations(
        self, names: Sequence[str], t: float | None, trials: Sequence[FrozenTrial]
    ) -> tuple[list[FrozenTrial], list[float] | None]:
        observed: list[FrozenTrial] = []
        times: list[float] = []
        for other in trials:
            if other.state != TrialState.COMPLETE:
                continue
            if not all(name in other.params for name in names):
                continue
            if t is not None:
                other_t = _time_value(other, self._time_param)
                if other_t is None or not other_t < t:
                    continue
                if (
                    self._min_time_weight is not None
                    and (self._beta / (t - other_t + self._beta)) ** self._alpha
                    < self._min_time_weight
                ):
                    continue  # too long ago to matter to the proposal's epoch
                times.append(other_t)
            observed.append(other)
        if self._max_observations is not None and len(observed) > self._max_observations:
            # Keep the latest epochs (then the latest trials), in the order read.
            order = sorted(
                range(len(observed)),
                key=lambda i: (times[i] if t is not None else 0.0, observed[i].number),
                reverse=True,
            )
            kept = sorted(order[: self._max_observations])
            observed = [observed[i] for i in kept]
            times = [times[i] for i in kept] if t is not None else times
        return observed, (times if t is not None else None)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        self._raise_error_if_multi_objective(study)
        if not search_space:
            return {}
        t = _time_value(trial, self._time_param)
        numeric = {
            name: d
            for name, d in search_space.items()
            if isinstance(d, _NUMERIC) and not d.single() and name != self._time_param
        }
        names = list(numeric)
        # One read of the trials for the whole proposal (a worker's cost grows with it).
        trials = study._get_trials(deepcopy=False, use_cache=False)
        observed, times = self._observations(names, t, trials)
        key = self._stream_key(trial, len(observed), t, trials)
        params: dict[str, Any] = {}
        if names and len(observed) >= self._n_startup_trials:
            # One thread: the GP's many small operations are slower with several threads, and
            # on a busy machine by far. (The GP makes its tensors on the CPU explicitly, whatever
            # torch's default device is.)
            with single_thread():
                params.update(
                    self._propose(study, trial, numeric, observed, times, t, key, trials)
                )
        for name, distribution in search_space.items():
            if name not in params:
                params[name] = self._random_value(
                    study, trial, key, _STREAM_RELATIVE, name, distribution
                )
        return params

    def _propose(
        self,
        study: Study,
        trial: FrozenTrial,
        numeric: Mapping[str, FloatDistribution | IntDistribution],
        observed: Sequence[FrozenTrial],
        times: Sequence[float] | None,
        t: float | None,
        key: Sequence[int],
        trials: Sequence[FrozenTrial],
    ) -> dict[str, Any]:
        distributions = list(numeric.values())
        box = UnitBox(
            lows=[float(d.low) for d in distributions],
            highs=[float(d.high) for d in distributions],
            logs=[d.log for d in distributions],
        )
        X = box.to_unit(np.array([[float(o.params[n]) for n in numeric] for o in observed]))
        sign = 1.0 if study.direction == StudyDirection.MAXIMIZE else -1.0
        y = sign * np.array([float(o.values[0]) for o in observed])
        y = _clip_infinite(y)
        gp = fit_gp(
            X,
            y,
            None if times is None else np.asarray(times, dtype=np.float64),
            kernel=self._kernel,
            alpha=self._alpha,
            beta=self._beta,
            deterministic=self._deterministic,
            n_starts=self._n_gp_starts,
            initial=_previous_fit(observed, list(numeric)),
        )
        query_t = t if times is not None else None
        threshold = incumbent_threshold(gp, query_t)
        pending = self._pending(trial, list(numeric), box, query_t, trials)
        search_gp = gp if pending is None else _believer(gp, pending[0], pending[1])
        acqf_seed = seed_from([*key, _STREAM_ACQF])
        best_unit, log_ei = maximize_log_ei(
            search_gp,
            t=query_t,
            seed=acqf_seed,
            threshold=threshold,
            n_candidates=self._n_candidates,
            n_local_search=self._n_local_search,
        )
        values = box.from_unit(best_unit[None, :])[0]
        study._storage.set_trial_system_attr(
            trial._trial_id,
            PROPOSAL_KEY,
            {
                "epoch": query_t,
                "n_observations": len(observed),
                "threshold": threshold,
                "log_ei": log_ei,
                "params": list(numeric),
                "lengthscales": [float(v) for v in gp.lengthscales],
                "kernel": dataclasses.asdict(KernelParams.of(gp)),
                "pending": [] if pending is None else pending[2],
            },
        )
        return {
            name: _snap(float(v), d) for (name, d), v in zip(numeric.items(), values, strict=True)
        }

    def _pending(
        self,
        trial: FrozenTrial,
        names: list[str],
        box: UnitBox,
        t: float | None,
        trials: Sequence[FrozenTrial],
    ) -> tuple[np.ndarray, np.ndarray | None, list[int]] | None:
        """The other running candidates of the same epoch: parameters in the box, epochs and
        trial numbers (recorded in the proposal as ``"pending"``).

        Several workers proposing for one epoch from the same observations would all find
        the same maximum of EI; each proposal treats the candidates still running as
        observed at the GP's mean there (the "kriging believer"), so the next one goes
        elsewhere. A single process (:class:`~optuna_ext.hyperdyn.HyperdynTuner` asks for
        the proposal before the incumbent of an epoch) has none.
        """
        rows = []
        numbers = []
        for other in trials:
            if other.state not in (TrialState.RUNNING, TrialState.WAITING):
                continue
            if other.number == trial.number or not all(n in other.params for n in names):
                continue
            if t is not None and _time_value(other, self._time_param) != t:
                continue
            rows.append([float(other.params[n]) for n in names])
            numbers.append(other.number)
        if not rows:
            return None
        X = box.to_unit(np.array(rows))
        return X, (None if t is None else np.full(len(rows), float(t))), numbers

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        self._raise_error_if_multi_objective(study)
        if self._independent_sampler is not None:
            return self._independent_sampler.sample_independent(
                study, trial, param_name, param_distribution
            )
        t = None if param_name == self._time_param else _time_value(trial, self._time_param)
        trials = study._get_trials(deepcopy=False, use_cache=False)
        n_complete = sum(1 for other in trials if other.state == TrialState.COMPLETE)
        key = self._stream_key(trial, n_complete, t, trials)
        return self._random_value(
            study, trial, key, _STREAM_INDEPENDENT, param_name, param_distribution
        )

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        if self._independent_sampler is not None:
            self._independent_sampler.before_trial(study, trial)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        if self._independent_sampler is not None:
            self._independent_sampler.after_trial(study, trial, state, values)


def _cpu(values: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float64), device=torch.device("cpu"))


def _believer(gp: GPRegressor, X: np.ndarray, t: np.ndarray | None) -> GPRegressor:
    """``gp`` with the points ``X`` (at epochs ``t``) added at its posterior mean, same kernel."""
    with torch.no_grad():
        mean, _ = gp.posterior(
            _cpu(X),
            None if t is None else _cpu(t),
        )
    times = None
    if gp.t is not None:
        assert t is not None
        times = torch.cat([gp.t, _cpu(t)])
    return GPRegressor(
        X=torch.cat([gp.X, _cpu(X)]),
        y=torch.cat([gp.y, mean]),
        t=times,
        inverse_squared_lengthscales=gp.inverse_squared_lengthscales,
        kernel_scale=gp.kernel_scale,
        noise_var=gp.noise_var,
        kernel=gp.kernel_name,
        alpha=gp.alpha,
        beta=gp.beta,
        y_mean=gp.y_mean,
        y_std=gp.y_std,
    )


def _previous_fit(observed: Sequence[FrozenTrial], names: list[str]) -> KernelParams | None:
    """The kernel fitted by the latest observed GP proposal over the same parameters.

    It starts the next fit (a warm start, about 3 times fewer L-BFGS-B steps); it is read
    from the storage, so a restarted process starts from the same point.
    """
    for trial in reversed(observed):
        stored = trial.system_attrs.get(PROPOSAL_KEY)
        if not isinstance(stored, dict) or stored.get("params") != names:
            continue
        kernel = stored.get("kernel")
        if not isinstance(kernel, dict):
            continue
        try:
            return KernelParams(
                inverse_squared_lengthscales=tuple(
                    float(v) for v in kernel["inverse_squared_lengthscales"]
                ),
                kernel_scale=float(kernel["kernel_scale"]),
                noise_var=float(kernel["noise_var"]),
            )
        except (KeyError, TypeError, ValueError):
            continue
    return None


def _clip_infinite(values: np.ndarray) -> np.ndarray:
    """Replace infinite values by the most extreme finite ones (0 when none is finite)."""
    finite = np.isfinite(values)
    if finite.all():
        return values
    if not finite.any():
        return np.zeros_like(values)
    low, high = values[finite].min(), values[finite].max()
    return np.clip(np.nan_to_num(values, nan=low, posinf=high, neginf=low), low, high)
