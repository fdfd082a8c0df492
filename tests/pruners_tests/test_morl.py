"""Tests of MORLPruner.

The tests marked "Mirrors Optuna's ..." restate a test of Optuna's
``tests/pruners_tests/test_successive_halving.py`` (not shipped with the package) for
MORLPruner, where it keeps successive halving's semantics: ``SuccessiveHalvingPruner(
min_resource=m, reduction_factor=eta, min_early_stopping_rate=s)`` corresponds to
``MORLPruner(min_resource=m * eta**s, reduction_factor=eta)`` with a ``max_resource`` past the
steps reported, and the rung keys carry the ``"MORLPruner:"`` prefix.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from typing import Literal

import numpy as np
import optuna
from optuna.trial import TrialState
import pytest
import torch

from optuna_ext.pruners import MORLPruner
from optuna_ext.pruners._morl import BOUNDARIES_KEY
from optuna_ext.schedules import RecurringLR


Direction = Literal["minimize", "maximize"]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _rung_attrs(trial: optuna.trial.Trial) -> dict[str, float]:
    attrs = trial.storage.get_trial_system_attrs(trial._trial_id)
    return {k: v for k, v in attrs.items() if ":completed_rung_" in k}


def _key(rung: int) -> str:
    return f"MORLPruner:completed_rung_{rung}"


def _frozen(study: optuna.Study, trial: optuna.trial.Trial) -> optuna.trial.FrozenTrial:
    return study._storage.get_trial(trial._trial_id)


# --- rung layout ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        # The example: r = 164, eta = 3, s_min = 2.
        ({"max_resource": 164}, (9, 27, 81, 164)),
        ({"max_resource": 164, "last_rung": "stretched"}, (9, 27, 164)),
        # r a power of eta: both layouts agree.
        ({"max_resource": 81}, (9, 27, 81)),
        ({"max_resource": 81, "last_rung": "stretched"}, (9, 27, 81)),
        # A single rung.
        ({"max_resource": 9}, (9,)),
        ({"max_resource": 10}, (9, 10)),
        ({"max_resource": 10, "last_rung": "stretched"}, (10,)),
        (
            {"max_resource": 100, "reduction_factor": 2, "min_exponent": 0},
            (1, 2, 4, 8, 16, 32, 64, 100),
        ),
        ({"max_resource": 50, "reduction_factor": 4, "min_exponent": 1}, (4, 16, 50)),
        ({"max_resource": 400, "reduction_factor": 3, "min_exponent": 3}, (27, 81, 243, 400)),
        ({"max_resource": 40, "reduction_factor": 2, "min_resource": 5}, (5, 10, 20, 40)),
        ({"max_resource": 45, "reduction_factor": 3, "min_resource": 5}, (5, 15, 45)),
        ({"max_resource": 7, "min_resource": 7}, (7,)),
    ],
)
def test_rung_ends(kwargs: dict, expected: tuple[int, ...]) -> None:
    assert MORLPruner(**kwargs).boundaries == expected


@pytest.mark.parametrize("eta", [2, 3, 4])
@pytest.mark.parametrize("s_min", [0, 1, 2])
@pytest.mark.parametrize("r", [16, 30, 81, 100, 164, 400])
def test_stretched_layout_has_the_papers_number_of_rounds(eta: int, s_min: int, r: int) -> None:
    """Algorithm 1: rounds s = s_min .. floor(log_eta r), ending at eta**s, the last at r."""
    s_max = 0
    while eta ** (s_max + 1) <= r:
        s_max += 1
    if s_max < s_min:
        pytest.skip("max_resource below the first rung")
    expected = tuple(eta**s for s in range(s_min, s_max)) + (r,)
    pruner = MORLPruner(
        max_resource=r, reduction_factor=eta, min_exponent=s_min, last_rung="stretched"
    )
    assert pruner.boundaries == expected
    assert len(pruner.boundaries) == s_max - s_min + 1


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"max_resource": 164, "reduction_factor": 1}, "`reduction_factor`"),
        ({"max_resource": 164, "reduction_factor": 2.5}, "`reduction_factor`"),
        ({"max_resource": 164, "min_exponent": -1}, "`min_exponent`"),
        ({"max_resource": 164, "min_resource": 0}, "`min_resource`"),
        ({"max_resource": 164, "min_resource": 3, "min_exponent": 1}, "`min_exponent`"),
        ({"max_resource": 8}, "`max_resource`"),  # below the first rung end 9
        ({"max_resource": 4, "min_resource": 5}, "`max_resource`"),
        ({"max_resource": 0}, "`max_resource`"),
        ({"max_resource": 164, "bootstrap_count": -1}, "`bootstrap_count`"),
        ({"max_resource": 164, "last_rung": "merged"}, "`last_rung`"),
        ({"max_resource": 164, "schedule_kind": "exponential"}, "`schedule_kind`"),
        ({"max_resource": 164, "min_lr": -1.0}, "`min_lr`"),
    ],
)
def test_invalid_arguments(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        MORLPruner(**kwargs)


@pytest.mark.parametrize(
    "kwargs, largest",
    [
        ({"max_resource": 10, "min_exponent": 10**9}, 2),  # used to hang computing 3**10**9
        ({"max_resource": 10**6, "reduction_factor": 10**6, "min_exponent": 2**62}, 1),
        ({"max_resource": 26, "min_exponent": 3}, 2),
        ({"max_resource": 1, "min_exponent": 1}, 0),
    ],
)
def test_a_first_rung_past_max_resource_is_refused_at_once(kwargs: dict, largest: int) -> None:
    exponent = kwargs["min_exponent"]
    with pytest.raises(
        ValueError,
        match=rf"`min_exponent` is {exponent}, .*past `max_resource` \({kwargs['max_resource']}\)"
        rf".*`reduction_factor\*\*min_exponent <= max_resource`.*`min_exponent <= {largest}`",
    ):
        MORLPruner(**kwargs)
    # The largest exponent allowed is accepted, its first rung within max_resource.
    pruner = MORLPruner(**{**kwargs, "min_exponent": largest})
    assert pruner.boundaries[0] == kwargs.get("reduction_factor", 3) ** largest
    assert pruner.boundaries[-1] == kwargs["max_resource"]


def test_the_default_exponent_names_itself_when_the_first_rung_is_too_long() -> None:
    with pytest.raises(ValueError, match=r"`min_exponent` is 2 \(the default\).*`max_resource`"):
        MORLPruner(max_resource=8)


def test_step_past_max_resource_raises() -> None:
    study = optuna.create_study(pruner=MORLPruner(max_resource=10, min_exponent=1))
    trial = study.ask()
    trial.report(1.0, step=10)
    assert not trial.should_prune()
    trial.report(1.0, step=11)
    with pytest.raises(ValueError, match="step 11.*max_resource=10"):
        trial.should_prune()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_non_finite_values_are_pruned_and_never_compete(bad: float, direction: Direction) -> None:
    study = optuna.create_study(
        direction=direction, pruner=MORLPruner(max_resource=8, reduction_factor=2, min_exponent=1)
    )
    trial = study.ask()
    trial.report(bad, step=1)
    assert not trial.should_prune()  # not a rung end yet
    trial.report(bad, step=2)
    assert trial.should_prune()
    assert _rung_attrs(trial) == {}
    # With eta = 2 a second trial at the rung would need to be the best of two; as the
    # non-finite value did not compete, it is alone and promoted whatever its value.
    other = study.ask()
    other.report(-1e9 if direction == "maximize" else 1e9, step=2)
    assert not other.should_prune()


def test_multi_objective_study_is_rejected() -> None:
    pruner = MORLPruner(max_resource=9, min_exponent=1)
    study = optuna.create_study(directions=["minimize", "maximize"], pruner=pruner)
    trial = study.ask()
    with pytest.raises(NotImplementedError, match="multi-objective"):
        pruner.prune(study, _frozen(study, trial))
    with pytest.raises(NotImplementedError):
        trial.should_prune()


# --- Optuna's successive-halving tests, for MORLPruner -----------------------------------------


@pytest.mark.parametrize("direction_value", [("minimize", 2), ("maximize", 0.5)])
def test_intermediate_values(direction_value: tuple[Direction, float]) -> None:
    """Mirrors Optuna's test_successive_halving_pruner_intermediate_values."""
    direction, intermediate_value = direction_value
    pruner = MORLPruner(max_resource=64, min_resource=1, reduction_factor=2)
    study = optuna.create_study(direction=direction, pruner=pruner)

    trial = study.ask()
    trial.report(1, 1)
    assert not trial.should_prune()  # the first trial is promoted

    trial = study.ask()
    assert not trial.should_prune()  # no intermediate value yet
    trial.report(intermediate_value, 1)
    assert trial.should_prune()


def test_rung_check() -> None:
    """Mirrors Optuna's test_successive_halving_pruner_rung_check."""
    pruner = MORLPruner(max_resource=64, min_resource=1, reduction_factor=2)
    study = optuna.create_study(pruner=pruner)

    for i in range(7):
        trial = study.ask()
        trial.report(0.1 * (i + 1), step=7)
        pruner.prune(study=study, trial=_frozen(study, trial))

    # The 7th value from the bottom of 8 is not in the top half of rung 0.
    trial = study.ask()
    trial.report(0.75, step=7)
    pruner.prune(study=study, trial=_frozen(study, trial))
    assert set(_rung_attrs(trial)) == {_key(0)}

    # The third value from the bottom goes through rung 0, not rung 1.
    trial = study.ask()
    trial.report(0.25, step=7)
    trial.should_prune()
    assert set(_rung_attrs(trial)) == {_key(0), _key(1)}

    # The lowest value goes through rungs 0 and 1 and stops at rung 2 (ends 1, 2, 4 <= 7 < 8).
    trial = study.ask()
    trial.report(0.05, step=7)
    trial.should_prune()
    assert set(_rung_attrs(trial)) == {_key(0), _key(1), _key(2)}


def test_first_trial_is_not_pruned() -> None:
    """Mirrors Optuna's test_successive_halving_pruner_first_trial_is_not_pruned."""
    pruner = MORLPruner(max_resource=16, min_resource=1, reduction_factor=2)
    study = optuna.create_study(pruner=pruner)
    trial = study.ask()
    for i in range(10):
        trial.report(1, step=i)
        assert not trial.should_prune()
    # Rung ends 1, 2, 4, 8 reached; 16 not.
    assert set(_rung_attrs(trial)) == {_key(0), _key(1), _key(2), _key(3)}


def test_with_nan() -> None:
    """Mirrors Optuna's test_successive_halving_pruner_with_nan."""
    pruner = MORLPruner(max_resource=16, min_resource=2, reduction_factor=2)
    study = optuna.create_study(pruner=pruner)
    trial = study.ask()
    trial.report(float("nan"), step=1)
    assert not trial.should_prune()
    trial.report(float("nan"), step=2)
    assert trial.should_prune()


def test_min_resource_parameter() -> None:
    """Mirrors Optuna's test_successive_halving_pruner_min_resource_parameter."""
    study = optuna.create_study(pruner=MORLPruner(max_resource=16, min_resource=1))
    trial = study.ask()
    trial.report(1, step=1)
    assert not trial.should_prune()
    assert set(_rung_attrs(trial)) == {_key(0)}

    study = optuna.create_study(pruner=MORLPruner(max_resource=16, min_resource=2))
    trial = study.ask()
    trial.report(1, step=1)
    assert not trial.should_prune()
    assert _rung_attrs(trial) == {}
    trial.report(1, step=2)
    assert not trial.should_prune()
    assert set(_rung_attrs(trial)) == {_key(0)}


def test_reduction_factor_parameter() -> None:
    """Mirrors Optuna's test_successive_halving_pruner_reduction_factor_parameter."""
    pruner = MORLPruner(max_resource=27, min_resource=1, reduction_factor=2)
    study = optuna.create_study(pruner=pruner)
    trial = study.ask()
    trial.report(1, step=1)
    assert not trial.should_prune()
    assert set(_rung_attrs(trial)) == {_key(0)}

    # reduction_factor=3: rung 1 ends at step 3.
    pruner = MORLPruner(max_resource=27, min_resource=1, reduction_factor=3)
    study = optuna.create_study(pruner=pruner)
    trial = study.ask()
    trial.report(1, step=1)
    assert not trial.should_prune()
    assert set(_rung_attrs(trial)) == {_key(0)}
    trial.report(1, step=2)
    assert not trial.should_prune()
    assert set(_rung_attrs(trial)) == {_key(0)}
    trial.report(1, step=3)
    assert not trial.should_prune()
    assert set(_rung_attrs(trial)) == {_key(0), _key(1)}


def test_min_exponent_parameter() -> None:
    """Mirrors Optuna's test_successive_halving_pruner_min_early_stopping_rate_parameter."""
    study = optuna.create_study(
        pruner=MORLPruner(max_resource=16, reduction_factor=2, min_exponent=0)
    )
    trial = study.ask()
    trial.report(1, step=1)
    assert not trial.should_prune()
    assert set(_rung_attrs(trial)) == {_key(0)}

    study = optuna.create_study(
        pruner=MORLPruner(max_resource=16, reduction_factor=2, min_exponent=1)
    )
    trial = study.ask()
    trial.report(1, step=1)
    assert not trial.should_prune()
    assert _rung_attrs(trial) == {}
    trial.report(1, step=2)
    assert not trial.should_prune()
    assert set(_rung_attrs(trial)) == {_key(0)}


def test_bootstrap_count() -> None:
    """Mirrors Optuna's test_successive_halving_pruner_bootstrap_parameter."""
    pruner = MORLPruner(max_resource=16, min_resource=1, reduction_factor=2, bootstrap_count=1)
    study = optuna.create_study(pruner=pruner)
    trial1 = study.ask()
    trial2 = study.ask()
    trial1.report(1, step=1)
    assert trial1.should_prune()
    trial2.report(1, step=1)
    assert not trial2.should_prune()


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
@pytest.mark.parametrize(
    "min_resource, reduction_factor, min_early_stopping_rate", [(1, 2, 0), (1, 3, 1), (2, 2, 1)]
)
def test_same_decisions_as_optuna_successive_halving(
    direction: Direction, min_resource: int, reduction_factor: int, min_early_stopping_rate: int
) -> None:
    """Scripted, interleaved trials get the decisions of Optuna's SuccessiveHalvingPruner."""
    rng = np.random.RandomState(min_resource + 10 * reduction_factor + min_early_stopping_rate)
    n_trials, n_steps, n_parallel = 24, 20, 4
    # One decimal, so that ties happen; a few NaNs.
    values = np.round(rng.rand(n_trials, n_steps), 1)
    values[rng.rand(n_trials, n_steps) < 0.03] = np.nan

    theirs = optuna.create_study(
        direction=direction,
        pruner=optuna.pruners.SuccessiveHalvingPruner(
            min_resource=min_resource,
            reduction_factor=reduction_factor,
            min_early_stopping_rate=min_early_stopping_rate,
        ),
    )
    ours = optuna.create_study(
        direction=direction,
        pruner=MORLPruner(
            max_resource=1000,
            min_resource=min_resource * reduction_factor**min_early_stopping_rate,
            reduction_factor=reduction_factor,
        ),
    )
    n_pruned = 0
    for start in range(0, n_trials, n_parallel):
        running = {i: (theirs.ask(), ours.ask()) for i in range(start, start + n_parallel)}
        for step in range(1, n_steps + 1):
            for i, (their_trial, our_trial) in list(running.items()):
                their_trial.report(values[i, step - 1], step)
                our_trial.report(values[i, step - 1], step)
                decision = their_trial.should_prune()
                assert our_trial.should_prune() == decision, (i, step)
                if decision:
                    n_pruned += 1
                    theirs.tell(their_trial, state=TrialState.PRUNED)
                    ours.tell(our_trial, state=TrialState.PRUNED)
                    del running[i]
        for their_trial, our_trial in running.values():
            theirs.tell(their_trial, 0.0)
            ours.tell(our_trial, 0.0)
    assert 0 < n_pruned < n_trials  # the comparison exercised both outcomes


# --- promotion decisions ----------------------------------------------------------------------


def _complete_rung(study: optuna.Study, value: float, rung_end: int) -> bool:
    trial = study.ask()
    for step in range(1, rung_end + 1):
        trial.report(value, step)
    return trial.should_prune()


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_top_third_is_promoted(direction: Direction) -> None:
    sign = 1.0 if direction == "maximize" else -1.0
    study = optuna.create_study(direction=direction, pruner=MORLPruner(max_resource=27))
    # Eight trials complete rung 0 (ends at 9), best last so that each is promoted on arrival.
    for v in range(1, 9):
        assert not _complete_rung(study, sign * v, 9)
    # A ninth: 9 // 3 = 3 promoted, so the cut-off is the third best value (6, 7, 8, new).
    assert _complete_rung(study, sign * 5.5, 9)  # 10 competitors: top 3 are 8, 7, 6
    assert not _complete_rung(study, sign * 7.5, 9)  # 11 competitors: top 3 are 8, 7.5, 7


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_ties_at_the_cut_off_are_promoted(direction: Direction) -> None:
    sign = 1.0 if direction == "maximize" else -1.0
    study = optuna.create_study(direction=direction, pruner=MORLPruner(max_resource=27))
    for v in (1, 2, 4, 4, 4):
        _complete_rung(study, sign * v, 9)
    # Six competitors, two promoted: values (4, 4, 4, 4) tie at the cut-off and all go on.
    assert not _complete_rung(study, sign * 4, 9)
    assert _complete_rung(study, sign * 3.9, 9)


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_with_fewer_trials_than_eta_only_the_best_is_promoted(direction: Direction) -> None:
    sign = 1.0 if direction == "maximize" else -1.0
    study = optuna.create_study(direction=direction, pruner=MORLPruner(max_resource=27))
    assert not _complete_rung(study, sign * 5, 9)  # alone: promoted
    assert _complete_rung(study, sign * 4, 9)  # worse of two: pruned
    assert not _complete_rung(study, sign * 5, 9)  # tie with the best of three: promoted


def test_the_last_rung_end_never_prunes() -> None:
    study = optuna.create_study(
        direction="maximize", pruner=MORLPruner(max_resource=3, reduction_factor=3, min_exponent=0)
    )
    # Rung ends 1 and 3; the first trial goes through both.
    assert not _complete_rung(study, 10.0, 3)
    trial = study.ask()
    trial.report(10.0, 1)
    assert not trial.should_prune()  # ties with the best
    trial.report(-5.0, 2)
    assert not trial.should_prune()
    trial.report(-5.0, 3)
    assert not trial.should_prune()  # the worst value, but the run is done
    assert _rung_attrs(trial) == {_key(0): 10.0, _key(1): -5.0}


def test_compared_value_is_the_one_at_the_rung_end() -> None:
    """A trial that reports past a rung end before asking is judged on the rung end's value."""
    study = optuna.create_study(
        direction="maximize", pruner=MORLPruner(max_resource=27, min_exponent=1)
    )
    assert not _complete_rung(study, 0.5, 3)
    trial = study.ask()
    trial.report(0.1, 2)
    trial.report(0.4, 3)  # annealed value at the rung end
    trial.report(0.9, 4)  # after the restart: not the value to compare
    assert trial.should_prune()
    assert _rung_attrs(trial) == {_key(0): 0.4}

    # Without a report at the rung end itself, the first report past it counts.
    trial = study.ask()
    trial.report(0.1, 2)
    trial.report(0.6, 5)
    trial.report(0.0, 6)
    assert not trial.should_prune()
    assert _rung_attrs(trial) == {_key(0): 0.6}


# --- the stored layout ------------------------------------------------------------------------


def test_layout_is_stored_and_checked(sqlite_url: str) -> None:
    pruner = MORLPruner(max_resource=164)
    study = optuna.create_study(storage=sqlite_url, study_name="s", pruner=pruner)
    trial = study.ask()
    trial.report(0.0, 1)
    trial.should_prune()
    attrs = study._storage.get_study_system_attrs(study._study_id)
    assert attrs[BOUNDARIES_KEY] == [9, 27, 81, 164]

    # A resumed run with the same arguments goes on.
    resumed = optuna.load_study(
        storage=sqlite_url, study_name="s", pruner=MORLPruner(max_resource=164)
    )
    trial = resumed.ask()
    trial.report(0.0, 1)
    assert not trial.should_prune()

    # Other arguments: a clear error, at the first should_prune or already at schedule(trial=).
    changed = MORLPruner(max_resource=100)
    other = optuna.load_study(storage=sqlite_url, study_name="s", pruner=changed)
    trial = other.ask()
    trial.report(0.0, 1)
    with pytest.raises(ValueError, match=r"\[9, 27, 81, 164\].*\[9, 27, 81, 100\]"):
        trial.should_prune()
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="rung layout"):
        changed.schedule(optimizer, steps_per_epoch=1, trial=trial)


def test_layout_check_is_cached_per_study() -> None:
    pruner = MORLPruner(max_resource=27)
    study = optuna.create_study(pruner=pruner)
    trial = study.ask()
    trial.report(0.0, 1)
    trial.should_prune()
    # Tampering with the stored layout goes unnoticed by the same pruner on the same study
    # (cached), but a fresh study in a fresh storage is checked and written anew.
    study._storage.set_study_system_attr(study._study_id, BOUNDARIES_KEY, [1, 2])
    trial.should_prune()
    fresh = optuna.create_study(pruner=pruner)
    trial = fresh.ask()
    trial.report(0.0, 1)
    trial.should_prune()
    assert fresh._storage.get_study_system_attrs(fresh._study_id)[BOUNDARIES_KEY] == [9, 27]


# --- the schedule -----------------------------------------------------------------------------


def test_schedule_uses_the_rung_ends() -> None:
    pruner = MORLPruner(max_resource=164, schedule_kind="linear", min_lr=0.001)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = pruner.schedule(optimizer, steps_per_epoch=3)
    assert isinstance(scheduler, RecurringLR)
    assert scheduler.boundaries == (9, 27, 81, 164)
    assert scheduler.kind == "linear"
    assert scheduler.min_lrs == [0.001]
    assert scheduler.lr_at(27) == pytest.approx([0.1])
    override = pruner.schedule(optimizer, steps_per_epoch=3, kind="cosine", min_lr=0.0)
    assert override.kind == "cosine"
    assert override.min_lrs == [0.0]


def test_slow_starter_survives_with_the_recurring_schedule() -> None:
    """The user story: a configuration that looks bad until its rate anneals is not killed.

    A synthetic "accuracy" after an epoch is the configuration's quality minus the rate used
    in the epoch's last iteration: the high-rate configuration is better once annealed but
    worse while its rate is high. It competes at the first rung end (9) after a low-rate one.
    """
    quality = {1.0: 0.9, 0.1: 0.8}

    def run(study: optuna.Study, lr0: float, recurring: bool) -> bool:
        trial = study.ask()
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr0)
        boundaries = pruner.boundaries if recurring else (pruner.boundaries[-1],)
        scheduler = RecurringLR(optimizer, boundaries=boundaries, steps_per_epoch=2)
        for epoch in range(9):
            for _ in range(2):
                used = float(optimizer.param_groups[0]["lr"])
                optimizer.step()
                scheduler.step()
            trial.report(quality[lr0] - used, step=epoch + 1)
            if trial.should_prune():
                return True
        return False

    pruner = MORLPruner(max_resource=164)
    # One schedule over the whole run: at epoch 9 the high rate has hardly decayed.
    study = optuna.create_study(direction="maximize", pruner=pruner)
    assert not run(study, 0.1, recurring=False)
    assert run(study, 1.0, recurring=False)
    # The recurring schedule has annealed at the rung end: the better configuration goes on.
    study = optuna.create_study(direction="maximize", pruner=MORLPruner(max_resource=164))
    assert not run(study, 0.1, recurring=True)
    assert not run(study, 1.0, recurring=True)


def test_optimize_with_a_torch_model_prunes_only_at_rung_ends() -> None:
    torch.manual_seed(0)
    x = torch.randn(32, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    pruner = MORLPruner(max_resource=12, min_exponent=1, reduction_factor=3)

    def objective(trial: optuna.trial.Trial) -> float:
        model = torch.nn.Linear(3, 1)
        optimizer = torch.optim.SGD(
            model.parameters(), lr=trial.suggest_float("lr", 1e-4, 0.5, log=True)
        )
        scheduler = pruner.schedule(optimizer, steps_per_epoch=2, trial=trial)
        for epoch in range(pruner.boundaries[-1]):
            for xb, yb in zip(x.split(16), y.split(16), strict=True):
                optimizer.zero_grad()
                torch.nn.functional.mse_loss(model(xb), yb).backward()
                optimizer.step()
                scheduler.step()
            with torch.no_grad():
                loss = torch.nn.functional.mse_loss(model(x), y).item()
            trial.report(loss, step=epoch + 1)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return loss

    study = optuna.create_study(pruner=pruner, sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=12)
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert pruned and complete
    assert {t.last_step for t in pruned} <= {3, 9}
    assert {t.last_step for t in complete} == {12}


# --- two processes on one storage -------------------------------------------------------------

_PROCESS_A = textwrap.dedent(
    """
    import sys

    import optuna
    from optuna.trial import TrialState

    from optuna_ext.pruners import MORLPruner

    url, name = sys.argv[1], sys.argv[2]
    study = optuna.create_study(
        storage=url, study_name=name, direction="maximize",
        pruner=MORLPruner(max_resource=9, min_exponent=1),
    )
    for value in (0.1, 0.2, 0.3, 0.4, 0.5):
        trial = study.ask()
        for step in (1, 2, 3):
            trial.report(value, step)
        if trial.should_prune():
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, value)
    """
)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"{request.param}_url")


def test_two_processes_see_each_others_rungs(storage_url: str) -> None:
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run(
        [sys.executable, "-c", _PROCESS_A, storage_url, "shared"],
        check=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=300,
    )

    # This process, a fresh pruner with the same arguments.
    study = optuna.load_study(
        storage=storage_url, study_name="shared", pruner=MORLPruner(max_resource=9, min_exponent=1)
    )
    layout = study._storage.get_study_system_attrs(study._study_id)[BOUNDARIES_KEY]
    assert layout == [3, 9]
    recorded = sorted(t.system_attrs[_key(0)] for t in study.trials if _key(0) in t.system_attrs)
    assert recorded == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])

    # Six trials at rung 0 with process A's five: the top two (0.5 and this one) go on.
    trial = study.ask()
    for step in (1, 2, 3):
        trial.report(0.45, step)
    assert not trial.should_prune()
    # Alone, 0.35 would be promoted; against A's values (7 in all, top 2) it is pruned.
    trial = study.ask()
    for step in (1, 2, 3):
        trial.report(0.35, step)
    assert trial.should_prune()

    # A pruner with another layout is refused on this study.
    other = optuna.load_study(
        storage=storage_url,
        study_name="shared",
        pruner=MORLPruner(max_resource=27, min_exponent=1),
    )
    trial = other.ask()
    trial.report(0.0, 1)
    with pytest.raises(ValueError, match="rung layout"):
        trial.should_prune()


# --- retries of killed trials (Optuna's RetryHeartbeatStaleTrialCallback) -------------------


def _constant_objective(trial: optuna.Trial) -> float:
    """Report the enqueued value ``v`` after every epoch (of 9), pruning at rung ends."""
    v = trial.suggest_float("v", 0.0, 1.0)
    for step in range(1, 10):
        trial.report(v, step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return v


def _kill_and_retry(study: optuna.Study, trial: optuna.Trial) -> None:
    """What a SIGKILL then Optuna's heartbeat and retry callback do to a RUNNING trial."""
    study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    callback = optuna.storages.RetryHeartbeatStaleTrialCallback()
    callback(study, study._storage.get_trial(trial._trial_id))


def _decisions(study: optuna.Study) -> list[tuple[float, str, int | None]]:
    """(v, state, last step) of every trial, a retried trial replaced by its retry."""
    retried = {n for t in study.trials for n in t.system_attrs.get("retry_history", ())}
    return [
        (t.params["v"], t.state.name, t.last_step) for t in study.trials if t.number not in retried
    ]


def _run_values(values: list[float], kill: int | None, *, steps_before_kill: int) -> optuna.Study:
    """Run trials reporting ``values``; the trial ``kill`` is killed after ``steps`` reports."""
    pruner = MORLPruner(max_resource=9, min_resource=1, reduction_factor=3)  # rungs 1, 3, 9
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for i, v in enumerate(values):
        study.enqueue_trial({"v": v})
        if i != kill:
            study.optimize(_constant_objective, n_trials=1)
            continue
        trial = study.ask()
        trial.suggest_float("v", 0.0, 1.0)
        for step in range(1, steps_before_kill + 1):
            trial.report(v, step)
            trial.should_prune()  # the decision is taken (and recorded), then the process dies
        _kill_and_retry(study, trial)
        study.optimize(_constant_objective, n_trials=1)  # runs the retry copy
    return study


def test_retry_of_a_trial_killed_as_it_was_pruned_is_pruned_at_the_same_rung() -> None:
    # Trial 3 is pruned at rung end 1 and killed between the decision and raising TrialPruned:
    # its copy inherits the rung record and must be judged at rung 1 again, not skip it.
    values = [0.9, 0.8, 0.7, 0.3, 0.5]
    reference = _run_values(values, kill=None, steps_before_kill=0)
    resumed = _run_values(values, kill=3, steps_before_kill=1)
    assert _decisions(reference)[3] == (0.3, "PRUNED", 1)
    assert _decisions(resumed) == _decisions(reference)
    retry = resumed.trials[4]
    assert retry.system_attrs["failed_trial"] == 3
    assert retry.system_attrs["MORLPruner:rungs_recorded_by"] == [retry.number, 1]


def test_retry_of_a_trial_killed_as_it_was_pruned_at_a_later_rung_is_pruned_there() -> None:
    # Trial 6 is promoted at rung end 1 (top 2 of 7), pruned at rung end 3 (behind 0.9) and
    # killed before it raised: its copy inherited both records, records rung 1 again, and must
    # not skip rung 3.
    values = [0.9, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5, 0.8]
    reference = _run_values(values, kill=None, steps_before_kill=0)
    resumed = _run_values(values, kill=6, steps_before_kill=3)
    assert _decisions(reference)[6] == (0.5, "PRUNED", 3)
    assert _decisions(resumed) == _decisions(reference)
    assert resumed.trials[7].system_attrs["MORLPruner:rungs_recorded_by"] == [7, 2]


def test_retried_trial_competes_once_at_its_rungs() -> None:
    # Trial 0 records 0.6 at rung end 1 and is killed in rung 2; its retry records it again.
    # Counted twice, six values would compete for the trial of 0.7 and two be promoted (0.7
    # with them); counted once there are five and only the best (0.9) goes on.
    values = [0.6, 0.9, 0.5, 0.4, 0.7]
    reference = _run_values(values, kill=None, steps_before_kill=0)
    resumed = _run_values(values, kill=0, steps_before_kill=2)
    assert _decisions(reference)[4] == (0.7, "PRUNED", 1)
    assert _decisions(resumed) == _decisions(reference)
    assert resumed.trials[0].state == TrialState.FAIL
    assert resumed.trials[1].system_attrs["failed_trial"] == 0
