"""Every sampler on every storage of Optuna's matrix, with objectives that raise or return NaN.

For each sampler and each mode of ``StorageSupplier`` (in-memory, SQLite, cached SQLite,
journal file), a study runs an objective that raises at one trial and returns NaN at another;
the run is then stopped and resumed by a *fresh* sampler loaded on the same storage. The
trials (numbers, states, parameters, values and the sampler's user attrs) must equal those of
an uninterrupted in-memory run of the same objective: the failing trials are FAIL, the study
kept working after them, and the sampler's state survived both the failures and the restart
because it lives in the storage. (The contract suites of each sampler run against the same
matrix, see ``_storage_matrix.py``.)
"""

from __future__ import annotations

from collections.abc import Callable
import math
from typing import Any

import optuna
from optuna.testing.storages import StorageSupplier
from optuna.trial import TrialState
import pytest

from optuna_ext.metrics import KNOWLEDGE_GAIN_Z_KEY
from optuna_ext.samplers import AutoHyperSampler
from optuna_ext.samplers import HyperdynSampler
from optuna_ext.samplers import PBTSampler
from tests.samplers_tests._storage_matrix import STORAGE_MODES
from tests.samplers_tests.autohyper_tests._synthetic import knee_z


optuna.logging.set_verbosity(optuna.logging.WARNING)

RAISE_AT = 2
NAN_AT = 4


class Diverged(RuntimeError):
    """What the objective raises at trial ``RAISE_AT``."""


def _failing(
    objective: Callable[[optuna.Trial], float],
) -> Callable[[optuna.Trial], float]:
    def wrapped(trial: optuna.Trial) -> float:
        value = objective(trial)
        if trial.number == RAISE_AT:
            raise Diverged(f"trial {trial.number} diverged")
        if trial.number == NAN_AT:
            return math.nan  # Optuna marks the trial FAIL
        return value

    return wrapped


def _autohyper_objective(trial: optuna.Trial) -> float:
    lr = trial.suggest_float("lr", 1e-6, 1.0, log=True)
    trial.set_user_attr(KNOWLEDGE_GAIN_Z_KEY, knee_z(lr))
    return 1.0 - knee_z(lr)


def _pbt_objective(trial: optuna.Trial) -> float:
    lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
    width = trial.suggest_int("width", 8, 64, log=True)
    act = trial.suggest_categorical("act", ["relu", "tanh", "gelu"])
    return -((math.log10(lr) + 2.0) ** 2) - abs(width - 32) / 32 - (act != "gelu")


def _hyperdyn_objective(trial: optuna.Trial) -> float:
    epoch = trial.number // 2
    trial.suggest_float("epoch", epoch, epoch)
    lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
    momentum = trial.suggest_float("momentum", 0.0, 0.99)
    return -((math.log10(lr) + 1.5) ** 2) - 3.0 * (momentum - 0.6) ** 2 - 0.01 * epoch


SCENARIOS: dict[str, tuple[Callable[[], optuna.samplers.BaseSampler], Any, int, int]] = {
    # name: (a fresh sampler, objective, trials before the restart, trials in all)
    "autohyper": (
        lambda: AutoHyperSampler(seed=0, save_plot=False),
        _autohyper_objective,
        7,
        500,  # the search stops the study when it converges
    ),
    "pbt": (lambda: PBTSampler(population_size=3, seed=0), _pbt_objective, 7, 15),
    "hyperdyn": (
        lambda: HyperdynSampler(
            seed=0, n_startup_trials=2, n_candidates=16, n_local_search=0, n_gp_starts=1
        ),
        _hyperdyn_objective,
        7,
        12,
    ),
}


def _fingerprint(study: optuna.Study) -> list[tuple[Any, ...]]:
    return [
        (t.number, t.state, t.params, t.value, sorted(t.user_attrs.items()))
        for t in study.get_trials(deepcopy=False)
    ]


def _run(study: optuna.Study, objective: Any, n_trials: int) -> None:
    study.optimize(_failing(objective), n_trials=n_trials, catch=(Diverged,))


@pytest.mark.parametrize("mode", STORAGE_MODES)
@pytest.mark.parametrize("name", SCENARIOS)
def test_failures_and_a_restart_keep_the_decisions(name: str, mode: str) -> None:
    make_sampler, objective, split, total = SCENARIOS[name]
    reference = optuna.create_study(sampler=make_sampler(), direction="maximize")
    _run(reference, objective, total)
    expected = _fingerprint(reference)
    assert expected[RAISE_AT][1] == expected[NAN_AT][1] == TrialState.FAIL
    assert len(expected) > NAN_AT + 2  # the study kept working after the failures

    with StorageSupplier(mode) as storage:
        first = optuna.create_study(storage=storage, sampler=make_sampler(), direction="maximize")
        _run(first, objective, split)
        resumed = optuna.load_study(
            study_name=first.study_name, storage=storage, sampler=make_sampler()
        )
        _run(resumed, objective, total - split)
        assert _fingerprint(resumed) == expected


def test_an_objective_that_raises_without_catch_fails_its_trial_only() -> None:
    """Without ``catch`` the error reaches the caller; the trial is FAIL, the sampler's state
    is intact, and the next ``optimize`` continues the search where it was."""
    make_sampler, objective, _, _ = SCENARIOS["autohyper"]
    study = optuna.create_study(sampler=make_sampler(), direction="maximize")
    with pytest.raises(Diverged):
        study.optimize(_failing(objective), n_trials=10)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL]
    study.optimize(objective, n_trials=500)
    reference = optuna.create_study(sampler=make_sampler(), direction="maximize")
    reference.optimize(objective, n_trials=500)  # no failure at all
    assert AutoHyperSampler.best_lr(study) == AutoHyperSampler.best_lr(reference) is not None
    completed = [t.params["lr"] for t in study.trials if t.state == TrialState.COMPLETE]
    assert completed == [t.params["lr"] for t in reference.trials]
    # The failed point was measured again: same evaluations, one trial later.
    lrs = [t.params["lr"] for t in study.trials]
    assert lrs[RAISE_AT + 1] == lrs[RAISE_AT]
