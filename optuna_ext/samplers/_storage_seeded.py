"""A random sampler whose draws depend only on the seed and on what the storage holds.

Optuna's :class:`~optuna.samplers.RandomSampler` draws from one random stream per sampler
object, so a study resumed in a new process (a new sampler, the same seed) starts that stream
again and gives the trials after the restart other parameters than an uninterrupted run.
Here each value is drawn from a stream seeded by ``(seed, draw index, parameter name)``,
where the draw index is read from the storage, so a restarted process, or another worker,
draws exactly what one uninterrupted process would have.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from typing import TYPE_CHECKING
import zlib

import numpy as np
from optuna.samplers import BaseSampler
from optuna.samplers import RandomSampler


if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.study import Study
    from optuna.trial import FrozenTrial


RETRIED_FROM_KEY = "failed_trial"
"""Trial system attr written by Optuna's ``RetryHeartbeatStaleTrialCallback``: the number of
the original trial that this trial retries."""
RETRY_HISTORY_KEY = "retry_history"
"""Trial system attr written by Optuna's ``RetryHeartbeatStaleTrialCallback``: the numbers of
the trials that this trial retries, the last one the trial it copies."""

_MAX_SEED = 2**31 - 1


def seed_from(entropy: Sequence[int]) -> int:
    """A seed for Optuna's samplers (in ``[0, 2**31 - 1)``) derived from ``entropy``."""
    return int(np.random.SeedSequence(list(entropy)).generate_state(1)[0] % _MAX_SEED)


def seeded_random_draw(
    study: Study,
    trial: FrozenTrial,
    name: str,
    distribution: BaseDistribution,
    entropy: Sequence[int],
) -> Any:
    """What :class:`~optuna.samplers.RandomSampler` draws for ``name`` with the seed derived from
    ``entropy`` and the parameter's name: the same value for the same entropy, in any process."""
    seed = seed_from([*entropy, zlib.crc32(name.encode())])
    return RandomSampler(seed=seed).sample_independent(study, trial, name, distribution)


def _fresh_seed() -> int:
    """A random 32-bit seed from the operating system's entropy."""
    return int(np.random.SeedSequence().generate_state(1)[0])


def draw_index(trials: Sequence[FrozenTrial], trial: FrozenTrial) -> int:
    """The index of ``trial`` among the trials that draw fresh parameters, from 0.

    A trial that retries another (Optuna's ``RetryHeartbeatStaleTrialCallback`` copies the
    original's parameters and marks the copy with the system attr ``"failed_trial"``) takes
    the index of the original; every other trial is numbered by the count of earlier trials
    that are not such copies. The index is fixed once the trial exists (trials are numbered
    in order of creation, and a copy carries its mark from creation), so concurrent workers
    get distinct indices, and a run whose killed trial was retried gives its later trials
    the indices, hence the parameters, they had in an uninterrupted run.

    Args:
        trials:
            The study's trials, ordered by number (as ``study.get_trials`` returns them).
        trial:
            The trial to index.
    """
    original = trial.system_attrs.get(RETRIED_FROM_KEY)
    number = int(original) if isinstance(original, int) else trial.number
    return sum(1 for t in trials if t.number < number and RETRIED_FROM_KEY not in t.system_attrs)


class StorageSeededRandomSampler(BaseSampler):
    """Sample every parameter uniformly, with draws that a restarted process repeats.

    **Why it exists.** Optuna's :class:`~optuna.samplers.RandomSampler` draws from one random
    stream per sampler object. A study stopped and resumed in a new process (a new sampler
    with the same seed) starts that stream again, so the trials after the restart repeat the
    first run's parameters instead of drawing the ones an uninterrupted run would have drawn,
    and several workers seeded alike draw the same parameters. This sampler keeps no stream:
    the value of parameter ``name`` in a trial is what :class:`~optuna.samplers.RandomSampler`
    draws for ``name`` with the seed derived from ``(seed, index, name)``, where ``index`` is
    the trial's draw index, read from the storage (its number among the trials that are not
    Optuna's retries of a killed trial; a retry takes the index of the trial it retries).

    So a study resumed with a new sampler goes on with the values an uninterrupted run would
    have drawn; workers on one storage draw distinct values; a trial retried by Optuna's
    ``RetryHeartbeatStaleTrialCallback`` gets the parameters the original would have got and
    does not shift the draws of later trials. Use it as the independent sampler of a method
    that must survive restarts (autoHyper's default), or on its own as a restart-stable random
    search. Multi-objective studies are supported, as by
    :class:`~optuna.samplers.RandomSampler`. Several threads (``optimize(n_jobs=...)``) make
    Optuna call :meth:`reseed_rng`, which forgets the seed, as for Optuna's samplers.

    Example:

        .. testcode::

            import optuna

            from optuna_ext.samplers import StorageSeededRandomSampler


            def objective(trial):
                return trial.suggest_float("x", -1.0, 1.0) ** 2


            whole = optuna.create_study(sampler=StorageSeededRandomSampler(seed=3))
            whole.optimize(objective, n_trials=4)

            storage = optuna.storages.InMemoryStorage()
            for _ in range(2):  # two processes, one after the other, on one storage
                study = optuna.create_study(
                    storage=storage,
                    study_name="resumed",
                    load_if_exists=True,
                    sampler=StorageSeededRandomSampler(seed=3),
                )
                study.optimize(objective, n_trials=2)
            assert [t.params for t in study.trials] == [t.params for t in whole.trials]

            # Optuna's RandomSampler would start its stream again in the second process.
            storage = optuna.storages.InMemoryStorage()
            for _ in range(2):
                study = optuna.create_study(
                    storage=storage,
                    study_name="restarted",
                    load_if_exists=True,
                    sampler=optuna.samplers.RandomSampler(seed=3),
                )
                study.optimize(objective, n_trials=2)
            assert study.trials[2].params == study.trials[0].params

    Args:
        seed:
            The seed of every draw, an int (taken modulo ``2**32``); :obj:`None` picks one at
            random (once per sampler, so only that sampler object and its copies repeat its
            draws).
    """

    def __init__(self, *, seed: int | None = None) -> None:
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"The value of `seed` is {seed!r}, but must be an int or None.")
        self._base_seed = _fresh_seed() if seed is None else int(seed) & 0xFFFFFFFF

    def reseed_rng(self) -> None:
        """Forget the seed: later draws use a new random base seed.

        Optuna calls this when ``optimize`` runs several threads (``n_jobs``); as with its own
        samplers, such a run is then not reproducible.
        """
        self._base_seed = _fresh_seed()

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        index = draw_index(study._get_trials(deepcopy=False, use_cache=True), trial)
        return seeded_random_draw(
            study, trial, param_name, param_distribution, [self._base_seed, index]
        )
