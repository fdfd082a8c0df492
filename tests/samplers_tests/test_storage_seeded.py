"""StorageSeededRandomSampler: draws that a restart (or a retried trial) does not change."""

from __future__ import annotations

from collections.abc import Callable
import copy
import pickle

import optuna
from optuna.samplers import BaseSampler
from optuna.testing.pytest_samplers import BasicSamplerTestCase
from optuna.testing.pytest_samplers import MultiObjectiveSamplerTestCase
from optuna.trial import TrialState
import pytest

from optuna_ext.samplers import StorageSeededRandomSampler
from optuna_ext.samplers._storage_seeded import draw_index
from tests.samplers_tests._storage_matrix import StorageMatrix


optuna.logging.set_verbosity(optuna.logging.WARNING)


class TestOptunaContract(StorageMatrix, BasicSamplerTestCase, MultiObjectiveSamplerTestCase):
    """Optuna's suites for a sampler without relative sampling that allows several objectives
    (as for its RandomSampler), on every storage mode of the matrix."""

    @pytest.fixture
    def sampler(self) -> Callable[[], BaseSampler]:
        return lambda: StorageSeededRandomSampler(seed=0)


def objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -1.0, 1.0)
    n = trial.suggest_int("n", 1, 100, log=True)
    c = trial.suggest_categorical("c", ["a", "b", "c"])
    return x * n + (c == "a")


def _params(study: optuna.Study) -> list[dict[str, object]]:
    return [t.params for t in study.trials]


def _kill_and_retry(study: optuna.Study, trial: optuna.Trial) -> None:
    """What a SIGKILL then Optuna's heartbeat and retry callback do to a RUNNING trial."""
    study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    callback = optuna.storages.RetryHeartbeatStaleTrialCallback()
    callback(study, study._storage.get_trial(trial._trial_id))


def test_a_new_sampler_on_the_same_storage_goes_on_with_the_same_draws() -> None:
    whole = optuna.create_study(sampler=StorageSeededRandomSampler(seed=5))
    whole.optimize(objective, n_trials=9)
    storage = optuna.storages.InMemoryStorage()
    for _ in range(3):  # three "processes", each with a fresh sampler
        study = optuna.create_study(
            storage=storage,
            study_name="s",
            load_if_exists=True,
            sampler=StorageSeededRandomSampler(seed=5),
        )
        study.optimize(objective, n_trials=3)
    assert _params(study) == _params(whole)
    # Optuna's RandomSampler restarts its stream in each new process: the draws differ.
    storage = optuna.storages.InMemoryStorage()
    for _ in range(3):
        study = optuna.create_study(
            storage=storage,
            study_name="r",
            load_if_exists=True,
            sampler=optuna.samplers.RandomSampler(seed=5),
        )
        study.optimize(objective, n_trials=3)
    assert _params(study)[3:6] == _params(study)[0:3]


def test_a_retried_trial_does_not_shift_the_draws_of_later_trials() -> None:
    whole = optuna.create_study(sampler=StorageSeededRandomSampler(seed=1))
    whole.optimize(objective, n_trials=6)

    study = optuna.create_study(sampler=StorageSeededRandomSampler(seed=1))
    study.optimize(objective, n_trials=2)
    trial = study.ask()
    trial.suggest_float("x", -1.0, 1.0)  # killed before it suggested "n" and "c"
    _kill_and_retry(study, trial)
    study.optimize(objective, n_trials=4)  # the retry first, then three new trials

    trials = study.trials
    assert trials[2].state == TrialState.FAIL
    assert trials[3].system_attrs["failed_trial"] == 2
    # The retry has what the original drew, and what it would have drawn next.
    assert trials[3].params == whole.trials[2].params
    assert [t.params for t in trials[4:]] == _params(whole)[3:]
    assert [draw_index(trials, t) for t in trials] == [0, 1, 2, 2, 3, 4, 5]


def test_the_draw_index_of_a_retry_of_a_retry_is_the_original_one() -> None:
    study = optuna.create_study(sampler=StorageSeededRandomSampler(seed=0))
    study.optimize(objective, n_trials=1)
    for _ in range(2):
        trial = study.ask()
        _kill_and_retry(study, trial)
    # trials: 0 done, 1 killed, 2 WAITING retry of 1 popped and killed, 3 retry of 2
    study.optimize(objective, n_trials=2)
    trials = study.trials
    assert trials[3].system_attrs["retry_history"] == [1, 2]
    assert [draw_index(trials, t) for t in trials] == [0, 1, 1, 1, 2]


def test_seeds_and_names_give_other_values_and_reseed_forgets_the_seed() -> None:
    a = optuna.create_study(sampler=StorageSeededRandomSampler(seed=2))
    a.optimize(objective, n_trials=5)
    b = optuna.create_study(sampler=StorageSeededRandomSampler(seed=3))
    b.optimize(objective, n_trials=5)
    assert [t.params["x"] for t in a.trials] != [t.params["x"] for t in b.trials]
    assert len({t.params["x"] for t in a.trials}) == 5
    reseeded = StorageSeededRandomSampler(seed=2)
    reseeded.reseed_rng()
    c = optuna.create_study(sampler=reseeded)
    c.optimize(objective, n_trials=5)
    assert [t.params["x"] for t in c.trials] != [t.params["x"] for t in a.trials]
    for t in a.trials:
        assert -1.0 <= t.params["x"] <= 1.0 and 1 <= t.params["n"] <= 100


def test_copies_and_pickles_draw_the_same() -> None:
    sampler = StorageSeededRandomSampler(seed=None)
    runs = []
    for s in (sampler, copy.deepcopy(sampler), pickle.loads(pickle.dumps(sampler))):
        study = optuna.create_study(sampler=s)
        study.optimize(objective, n_trials=3)
        runs.append(_params(study))
    assert runs[0] == runs[1] == runs[2]


@pytest.mark.parametrize("seed", [1.5, "1", True])
def test_bad_seed_raises(seed: object) -> None:
    with pytest.raises(ValueError, match="`seed`"):
        StorageSeededRandomSampler(seed=seed)  # type: ignore[arg-type]


def test_the_constructor_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        StorageSeededRandomSampler(3)  # type: ignore[call-arg]
