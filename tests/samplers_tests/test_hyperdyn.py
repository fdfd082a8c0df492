from __future__ import annotations

from collections.abc import Callable
import math

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution
from optuna.distributions import FloatDistribution
from optuna.distributions import IntDistribution
from optuna.samplers import BaseSampler
from optuna.testing.pytest_samplers import BasicSamplerTestCase
from optuna.testing.pytest_samplers import RelativeSamplerTestCase
from optuna.testing.pytest_samplers import SingleOnlySamplerTestCase
from optuna.trial import TrialState
import pytest

from optuna_ext.samplers._hyperdyn import HyperdynSampler
from optuna_ext.samplers._hyperdyn.sampler import PROPOSAL_KEY
from tests.samplers_tests._storage_matrix import StorageMatrix


optuna.logging.set_verbosity(optuna.logging.WARNING)

LR = FloatDistribution(1e-4, 1.0, log=True)
MOMENTUM = FloatDistribution(0.0, 0.99)


def _cheap(**kwargs: object) -> HyperdynSampler:
    """A sampler whose GP proposals cost a few milliseconds (tiny acquisition search)."""
    settings: dict[str, object] = dict(
        n_startup_trials=2, n_candidates=16, n_local_search=0, n_gp_starts=1
    )
    settings.update(kwargs)
    return HyperdynSampler(**settings)  # type: ignore[arg-type]


class TestHyperdynSamplerSuites(
    StorageMatrix, BasicSamplerTestCase, RelativeSamplerTestCase, SingleOnlySamplerTestCase
):
    @pytest.fixture
    def sampler(self) -> Callable[[], BaseSampler]:
        return lambda: _cheap(seed=0)


def _objective(lr: float, momentum: float, epoch: float) -> float:
    # Best near lr = 0.03 and momentum = 0.6, a little worse each epoch.
    return -((math.log10(lr) + 1.5) ** 2) - 3.0 * (momentum - 0.6) ** 2 - 0.01 * epoch


def _run_epochs(
    study: optuna.Study, epochs: range, per_epoch: int = 2, time_param: str = "epoch"
) -> None:
    for epoch in epochs:
        trials = []
        for _ in range(per_epoch):
            trial = study.ask()
            trial.suggest_float(time_param, epoch, epoch)
            trial.suggest_float("lr", LR.low, LR.high, log=True)
            trial.suggest_float("momentum", MOMENTUM.low, MOMENTUM.high)
            trials.append(trial)
        for trial in trials:
            p = trial.params
            study.tell(trial, _objective(p["lr"], p["momentum"], p[time_param]))


def _propose(study: optuna.Study, epoch: float) -> dict[str, float]:
    trial = study.ask()
    trial.suggest_float("epoch", epoch, epoch)
    params = {
        "lr": trial.suggest_float("lr", LR.low, LR.high, log=True),
        "momentum": trial.suggest_float("momentum", MOMENTUM.low, MOMENTUM.high),
    }
    study.tell(trial, state=TrialState.FAIL)
    return params


def test_startup_trials_are_random_then_gp() -> None:
    study = optuna.create_study(direction="maximize", sampler=_cheap(seed=1, n_startup_trials=4))
    _run_epochs(study, range(2))  # 4 observations at epochs 0 and 1
    assert all(PROPOSAL_KEY not in t.system_attrs for t in study.trials)
    for t in study.trials:
        assert LR.low <= t.params["lr"] <= LR.high
    trial = study.ask()
    trial.suggest_float("epoch", 1.0, 1.0)  # only the 2 observations of epoch 0 are older
    trial.suggest_float("lr", LR.low, LR.high, log=True)
    trial.suggest_float("momentum", MOMENTUM.low, MOMENTUM.high)
    assert PROPOSAL_KEY not in study.trials[-1].system_attrs
    study.tell(trial, 0.0)
    trial = study.ask()
    trial.suggest_float("epoch", 2.0, 2.0)
    trial.suggest_float("lr", LR.low, LR.high, log=True)
    trial.suggest_float("momentum", MOMENTUM.low, MOMENTUM.high)
    proposal = study.trials[-1].system_attrs[PROPOSAL_KEY]
    assert proposal["epoch"] == 2.0
    assert proposal["n_observations"] == 5


def test_observations_are_only_earlier_epochs() -> None:
    """Finished trials of the proposal's own epoch are not observations (the paper's D_{t-1})."""
    proposals = []
    for lr, value in [(1.0, 100.0), (1e-4, -100.0)]:
        study = optuna.create_study(direction="maximize", sampler=_cheap(seed=3))
        _run_epochs(study, range(3))
        study.add_trial(
            optuna.trial.create_trial(
                params={"epoch": 3.0, "lr": lr, "momentum": 0.0},
                distributions={
                    "epoch": FloatDistribution(3.0, 3.0),
                    "lr": LR,
                    "momentum": MOMENTUM,
                },
                value=value,
            )
        )
        proposals.append(_propose(study, 3.0))
        assert study.trials[-1].system_attrs[PROPOSAL_KEY]["n_observations"] == 6
    assert proposals[0] == proposals[1]


def test_same_seed_and_storage_give_same_proposal_in_a_new_sampler() -> None:
    study = optuna.create_study(direction="maximize", sampler=_cheap(seed=7))
    _run_epochs(study, range(4))
    first = _propose(study, 4.0)
    # A restarted process: a new sampler object with the same seed, the same storage.
    study.sampler = _cheap(seed=7)
    study_trials = study.trials
    # Remove the effect of the failed proposal trial: it is not RUNNING, so it is not counted.
    assert study_trials[-1].state == TrialState.FAIL
    second = _propose(study, 4.0)
    assert first == second


def test_random_stream_of_concurrent_candidates_differs() -> None:
    study = optuna.create_study(direction="maximize", sampler=_cheap(seed=0, n_startup_trials=10))
    trials = [study.ask() for _ in range(5)]
    values = []
    for trial in trials:
        trial.suggest_float("epoch", 0.0, 0.0)
        values.append(trial.suggest_float("lr", LR.low, LR.high, log=True))
    assert len(set(values)) == 5


def test_reseed_rng_changes_the_stream() -> None:
    sampler = _cheap(seed=0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    trial = study.ask()
    trial.suggest_float("epoch", 0.0, 0.0)
    before = trial.suggest_float("lr", LR.low, LR.high, log=True)
    study.tell(trial, state=TrialState.FAIL)
    sampler.reseed_rng()
    trial = study.ask()
    trial.suggest_float("epoch", 0.0, 0.0)
    after = trial.suggest_float("lr", LR.low, LR.high, log=True)
    assert before != after


def test_gp_proposal_moves_toward_the_better_region() -> None:
    sampler = HyperdynSampler(seed=0, n_startup_trials=5)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    _run_epochs(study, range(1), per_epoch=5)
    _run_epochs(study, range(1, 8), per_epoch=1)
    late = [t for t in study.trials if t.params["epoch"] >= 4]
    assert all(abs(math.log10(t.params["lr"]) + 1.5) < 1.0 for t in late)
    random_values = [float(t.values[0]) for t in study.trials if t.params["epoch"] == 0]
    gp_values = [float(t.values[0]) for t in late]
    assert np.mean(gp_values) > np.mean(random_values)


@pytest.mark.parametrize("value", ["a", True])
@pytest.mark.parametrize("n_trials_before", [0, 3])
def test_non_numeric_time_param_raises(value: str | bool, n_trials_before: int) -> None:
    study = optuna.create_study(direction="maximize", sampler=_cheap(seed=0))
    for i in range(n_trials_before):
        study.add_trial(
            optuna.trial.create_trial(
                params={"epoch": value, "lr": 10.0 ** -(i + 1)},
                distributions={"epoch": CategoricalDistribution([value]), "lr": LR},
                value=float(i),
            )
        )
    trial = study.ask()
    trial.suggest_categorical("epoch", [value])
    with pytest.raises(ValueError, match="time parameter `epoch`.*must be an int or a float"):
        trial.suggest_float("lr", LR.low, LR.high, log=True)


def test_time_param_name_is_configurable() -> None:
    study = optuna.create_study(
        direction="maximize", sampler=_cheap(seed=0, time_param="step", n_startup_trials=2)
    )
    _run_epochs(study, range(3), time_param="step")
    proposal = study.trials[-1].system_attrs[PROPOSAL_KEY]
    assert proposal["epoch"] == 2.0


def test_int_and_stepped_params_are_on_their_grid() -> None:
    study = optuna.create_study(sampler=_cheap(seed=0))

    def objective(trial: optuna.Trial) -> float:
        a = trial.suggest_int("a", 1, 64, log=True)
        b = trial.suggest_int("b", 0, 9, step=3)
        c = trial.suggest_float("c", -1.0, 1.0, step=0.25)
        return (a - 8) ** 2 + b + c

    study.optimize(objective, n_trials=8)
    for t in study.trials:
        assert isinstance(t.params["a"], int) and 1 <= t.params["a"] <= 64
        assert t.params["b"] in (0, 3, 6, 9)
        assert t.params["c"] * 4 == pytest.approx(round(t.params["c"] * 4))
    assert any(PROPOSAL_KEY in t.system_attrs for t in study.trials)


def test_infinite_values_are_clipped() -> None:
    study = optuna.create_study(direction="maximize", sampler=_cheap(seed=0))
    for i, value in enumerate([1.0, -math.inf, 2.0, math.inf]):
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": 10.0 ** -(i + 1)}, distributions={"lr": LR}, value=value
            )
        )
    trial = study.ask()
    lr = trial.suggest_float("lr", LR.low, LR.high, log=True)
    assert LR.low <= lr <= LR.high
    assert PROPOSAL_KEY in study.trials[-1].system_attrs


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_startup_trials": 0}, "n_startup_trials"),
        ({"kernel": "linear"}, "kernel"),
        ({"alpha": 0.0}, "alpha"),
        ({"beta": -1.0}, "beta"),
        ({"time_param": ""}, "time_param"),
        ({"n_gp_starts": 4}, "n_gp_starts"),
        ({"n_candidates": 0}, "n_candidates"),
        ({"n_candidates": float("nan")}, "`n_candidates` is nan, but must be an int"),
        ({"n_candidates": 64.0}, "`n_candidates` is 64.0, but must be an int"),
        ({"n_local_search": -1}, "`n_local_search >= 0`"),
        ({"n_local_search": 0.5}, "`n_local_search` is 0.5, but must be an int"),
        ({"n_local_search": float("inf")}, "`n_local_search` is inf, but must be an int"),
        ({"n_gp_starts": True}, "`n_gp_starts` is True, but must be an int"),
        ({"n_startup_trials": 2.0}, "`n_startup_trials` is 2.0, but must be an int"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        HyperdynSampler(**kwargs)  # type: ignore[arg-type]


def test_int_search_space_distribution_is_supported() -> None:
    # An IntDistribution time parameter (e.g. suggested with suggest_int) is accepted.
    study = optuna.create_study(direction="maximize", sampler=_cheap(seed=0))
    for epoch in range(3):
        for _ in range(2):
            trial = study.ask()
            trial.suggest_int("epoch", epoch, epoch)
            lr = trial.suggest_float("lr", LR.low, LR.high, log=True)
            study.tell(trial, -abs(math.log10(lr) + 2))
    assert study.trials[-1].system_attrs[PROPOSAL_KEY]["epoch"] == 2.0
    assert isinstance(study.trials[-1].distributions["epoch"], IntDistribution)
