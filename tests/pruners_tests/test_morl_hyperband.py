from __future__ import annotations

import math
from unittest import mock

import optuna
from optuna.trial import TrialState
import pytest
import torch

from optuna_ext.pruners import MORLHyperbandPruner
from optuna_ext.pruners._morl_hyperband import BRACKET_KEY
from optuna_ext.pruners._morl_hyperband import BRACKETS_KEY


def _key(rung: int) -> str:
    return f"MORLHyperbandPruner:completed_rung_{rung}"


def _in_bracket(study: optuna.Study, bracket: int) -> optuna.trial.Trial:
    trial = study.ask()
    study._storage.set_trial_system_attr(trial._trial_id, BRACKET_KEY, bracket)
    return trial


def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (
            {"max_resource": 164},
            (
                (1, 3, 9, 27, 81, 164),
                (3, 9, 27, 81, 164),
                (9, 27, 81, 164),
                (27, 81, 164),
                (81, 164),
            ),
        ),
        (
            {"max_resource": 164, "last_rung": "stretched"},
            ((1, 3, 9, 27, 164), (3, 9, 27, 164), (9, 27, 164), (27, 164), (164,)),
        ),
        ({"max_resource": 27, "min_resource": 3}, ((3, 9, 27), (9, 27), (27,))),
        (
            {"max_resource": 20, "min_resource": 2, "reduction_factor": 2},
            ((2, 4, 8, 16, 20), (4, 8, 16, 20), (8, 16, 20), (16, 20)),
        ),
    ],
)
def test_brackets_run_over_the_minimum_exponent(kwargs: dict, expected: tuple) -> None:
    pruner = MORLHyperbandPruner(**kwargs)
    assert pruner.brackets == expected
    # As many brackets as Optuna's Hyperband: floor(log_eta(max / min)) + 1.
    eta = kwargs.get("reduction_factor", 3)
    ratio = kwargs["max_resource"] / kwargs.get("min_resource", 1)
    assert len(pruner.brackets) == math.floor(math.log(ratio, eta) + 1e-9) + 1


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"max_resource": 164, "reduction_factor": 1}, "`reduction_factor`"),
        ({"max_resource": 164, "min_resource": 0}, "`min_resource`"),
        ({"max_resource": 2, "min_resource": 3}, "`max_resource`"),
        ({"max_resource": 164, "bootstrap_count": -2}, "`bootstrap_count`"),
        ({"max_resource": 164, "last_rung": "x"}, "`last_rung`"),
    ],
)
def test_invalid_arguments(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        MORLHyperbandPruner(**kwargs)


def test_is_a_hyperband_pruner() -> None:
    assert isinstance(MORLHyperbandPruner(max_resource=9), optuna.pruners.HyperbandPruner)


def test_bracket_assignment_matches_optuna_hyperband() -> None:
    ours = MORLHyperbandPruner(max_resource=164, min_resource=1, reduction_factor=3)
    theirs = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=164, reduction_factor=3)
    study = optuna.create_study(study_name="brackets", pruner=theirs)
    theirs._try_initialization(study)
    counts = [0] * len(ours.brackets)
    for trial in (study.ask() for _ in range(60)):
        frozen = study._storage.get_trial(trial._trial_id)
        bracket = ours._get_bracket_id(study, frozen)
        assert bracket == theirs._get_bracket_id(study, frozen)
        counts[bracket] += 1
    assert counts[0] > counts[-1]  # the aggressive bracket gets more trials


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_retry_does_not_shift_the_brackets_of_later_trials() -> None:
    # Trial 3 is killed and retried (Optuna's retry copy, trial 4, takes its draw): trial 5 of
    # the resumed run is the fifth draw, trial 4 of an uninterrupted run, and gets its bracket,
    # as StorageSeededRandomSampler gives it its parameters.
    def brackets(study: optuna.Study) -> list[int]:
        out = []
        for t in study.trials:
            if t.state == TrialState.FAIL:
                continue
            out.append(int(t.system_attrs["MORLHyperbandPruner:bracket"]))
        return out

    def pruner() -> MORLHyperbandPruner:
        return MORLHyperbandPruner(max_resource=81, min_resource=1, reduction_factor=3)

    def report(study: optuna.Study, trial: optuna.Trial) -> None:
        trial.report(0.5, 1)
        trial.should_prune()
        study.tell(trial, 0.5)

    uninterrupted = optuna.create_study(study_name="s", pruner=pruner())
    for _ in range(8):
        report(uninterrupted, uninterrupted.ask())

    storage = optuna.storages.InMemoryStorage()
    resumed = optuna.create_study(study_name="s", storage=storage, pruner=pruner())
    for _ in range(3):
        report(resumed, resumed.ask())
    killed = resumed.ask()  # killed before it reported: no bracket stored yet
    resumed.tell(killed, state=TrialState.FAIL)
    callback = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
    callback(resumed, resumed._storage.get_trial(killed._trial_id))
    for _ in range(8 - 3):
        report(resumed, resumed.ask())
    assert resumed.trials[4].system_attrs["failed_trial"] == 3
    assert brackets(resumed) == brackets(uninterrupted)
    assert len(set(brackets(uninterrupted))) > 1  # the test tells brackets apart


def test_schedule_follows_the_trials_bracket() -> None:
    pruner = MORLHyperbandPruner(max_resource=164)
    study = optuna.create_study(pruner=pruner)
    seen = set()
    for _ in range(20):
        trial = study.ask()
        scheduler = pruner.schedule(_optimizer(), trial=trial, steps_per_epoch=2)
        stored = trial.storage.get_trial_system_attrs(trial._trial_id)[BRACKET_KEY]
        frozen = study._storage.get_trial(trial._trial_id)
        assert stored == pruner._get_bracket_id(study, frozen)
        assert scheduler.boundaries == pruner.brackets[stored]
        seen.add(stored)
    assert len(seen) > 1
    attrs = study._storage.get_study_system_attrs(study._study_id)
    assert attrs[BRACKETS_KEY] == [list(b) for b in pruner.brackets]


def test_trials_compete_within_their_bracket_only() -> None:
    pruner = MORLHyperbandPruner(max_resource=9)  # brackets (1, 3, 9), (3, 9), (9,)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    # Bracket 0: three strong trials go through rung ends 1 and 3.
    for value in (0.9, 0.95, 0.99):
        trial = _in_bracket(study, 0)
        for step in (1, 2, 3):
            trial.report(value, step)
            trial.should_prune()
    # Bracket 1: the first trial at its first rung end (3) is alone there and promoted.
    weak = _in_bracket(study, 1)
    for step in (1, 2, 3):
        weak.report(0.1, step)
        assert not weak.should_prune()
    assert set(weak.storage.get_trial_system_attrs(weak._trial_id)) >= {_key(0)}
    # A second, weaker one in bracket 1: the worse of two, pruned.
    weaker = _in_bracket(study, 1)
    for step in (1, 2):
        weaker.report(0.05, step)
        assert not weaker.should_prune()
    weaker.report(0.05, 3)
    assert weaker.should_prune()
    # Bracket 2 has a single rung ending at max_resource: nothing is pruned there.
    last = _in_bracket(study, 2)
    for step in range(1, 10):
        last.report(0.0, step)
        assert not last.should_prune()


def test_filter_study_restricts_samplers_to_the_bracket() -> None:
    pruner = MORLHyperbandPruner(max_resource=27)
    study = optuna.create_study(pruner=pruner, sampler=optuna.samplers.RandomSampler(seed=0))
    for i in range(12):
        trial = _in_bracket(study, i % 3)
        trial.suggest_float("x", 0.0, 1.0)
        study.tell(trial, 0.0)
    frozen = study.ask()
    study._storage.set_trial_system_attr(frozen._trial_id, BRACKET_KEY, 1)
    filtered = optuna.pruners._filter_study(study, study._storage.get_trial(frozen._trial_id))
    trials = filtered.get_trials()
    assert len(trials) == 5  # four complete ones of bracket 1, and this one
    assert {t.system_attrs[BRACKET_KEY] for t in trials} == {1}


def test_samplers_see_the_bracket_study() -> None:
    """Mirrors Optuna's test_hyperband_filter_study (RandomSampler.sample_independent)."""
    n_brackets = 3
    pruner = MORLHyperbandPruner(max_resource=9)
    assert len(pruner.brackets) == n_brackets
    sampler = optuna.samplers.RandomSampler(seed=0)
    with (
        mock.patch.object(
            MORLHyperbandPruner,
            "_get_bracket_id",
            new=lambda self, study, trial: trial.number % n_brackets,
        ),
        mock.patch.object(sampler, "sample_independent", wraps=sampler.sample_independent) as m,
    ):
        study = optuna.create_study(sampler=sampler, pruner=pruner)
        study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=9)
        bracket_study = m.call_args[0][0]
        assert len(bracket_study.get_trials()) == 9 // n_brackets


def test_layout_mismatch_raises() -> None:
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(
        storage=storage, study_name="s", pruner=MORLHyperbandPruner(max_resource=27)
    )
    trial = study.ask()
    trial.report(1.0, 1)
    trial.should_prune()
    other = optuna.load_study(
        storage=storage, study_name="s", pruner=MORLHyperbandPruner(max_resource=81)
    )
    trial = other.ask()
    trial.report(1.0, 1)
    with pytest.raises(ValueError, match="rung layout"):
        trial.should_prune()


def test_step_past_max_resource_and_multi_objective() -> None:
    study = optuna.create_study(pruner=MORLHyperbandPruner(max_resource=9))
    trial = study.ask()
    trial.report(1.0, 10)
    with pytest.raises(ValueError, match="step 10.*max_resource=9"):
        trial.should_prune()

    pruner = MORLHyperbandPruner(max_resource=9)
    study = optuna.create_study(directions=["minimize", "minimize"], pruner=pruner)
    trial = study.ask()
    with pytest.raises(NotImplementedError):
        pruner.prune(study, study._storage.get_trial(trial._trial_id))


def test_optimize_end_to_end() -> None:
    pruner = MORLHyperbandPruner(max_resource=9, reduction_factor=3)

    def objective(trial: optuna.trial.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        optimizer = _optimizer()
        scheduler = pruner.schedule(optimizer, trial=trial, steps_per_epoch=1)
        for epoch in range(9):
            optimizer.step()
            scheduler.step()
            trial.report(x, step=epoch + 1)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return x

    study = optuna.create_study(pruner=pruner, sampler=optuna.samplers.RandomSampler(seed=1))
    study.optimize(objective, n_trials=30)
    for t in study.trials:
        bracket = pruner.brackets[t.system_attrs[BRACKET_KEY]]
        if t.state == TrialState.PRUNED:
            assert t.last_step in bracket[:-1]
        else:
            assert t.state == TrialState.COMPLETE and t.last_step == 9
    assert any(t.state == TrialState.PRUNED for t in study.trials)
