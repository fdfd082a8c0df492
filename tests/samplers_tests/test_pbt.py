"""Tests of PBTSampler and of its pure exploit/explore arithmetic.

The quantile tests compare against Ray Tune's ``_quantiles`` as written out here from its
description (sort ascending, ``q_n = ceil(n * q)`` capped at ``n // 2``), apart from the two
documented differences (``q = 0`` and float noise in ``n * q``). The scripted-population tests
build studies whose member trials have known scores and check every decision.
"""

from __future__ import annotations

from collections.abc import Callable
import math
from typing import Any
from typing import Literal

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution
from optuna.distributions import FloatDistribution
from optuna.distributions import IntDistribution
from optuna.samplers import BaseSampler
from optuna.testing.pytest_samplers import BasicSamplerTestCase
from optuna.testing.pytest_samplers import SingleOnlySamplerTestCase
from optuna.trial import create_trial
from optuna.trial import TrialState
import pytest

from optuna_ext.samplers._pbt import _explore
from optuna_ext.samplers._pbt import _pb2
from optuna_ext.samplers._pbt import PBTSampler
from optuna_ext.samplers._pbt._population import DECISION_KEY
from optuna_ext.samplers._pbt._population import DUPLICATE_KEY
from optuna_ext.samplers._pbt._population import FAILED_KEY
from optuna_ext.samplers._pbt._population import GENERATION_KEY
from optuna_ext.samplers._pbt._population import MEMBER_KEY
from optuna_ext.samplers._pbt._population import needed_checkpoint_trials
from optuna_ext.samplers._pbt._population import Population
from optuna_ext.samplers._pbt._population import SURPLUS_KEY
from optuna_ext.samplers._pbt.sampler import _spec
from tests.samplers_tests._storage_matrix import StorageMatrix


optuna.logging.set_verbosity(optuna.logging.WARNING)


class TestOptunaContract(StorageMatrix, BasicSamplerTestCase, SingleOnlySamplerTestCase):
    @pytest.fixture
    def sampler(self) -> Callable[[], BaseSampler]:
        return lambda: PBTSampler(population_size=3, seed=0)


# ----------------------------------------------------------------------------------------------
# Quantiles.


def _ray_quantiles(scores: list[float], q: float) -> tuple[list[int], list[int]]:
    order = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    if len(order) <= 1:
        return [], []
    q_n = min(math.ceil(len(order) * q), len(order) // 2)
    return order[:q_n], order[len(order) - q_n :]


@given(
    scores=st.lists(st.floats(-1e6, 1e6), min_size=0, max_size=40),
    q=st.sampled_from([0.05, 0.1, 0.2, 0.25, 0.4, 0.5]),
)
def test_quantiles_match_ray(scores: list[float], q: float) -> None:
    # These fractions give exact products n * q (no float noise), where Ray and we agree.
    lower, upper = _explore.quantiles(scores, q)
    ray_lower, ray_upper = _ray_quantiles(scores, q)
    assert lower == ray_lower
    assert upper == ray_upper
    assert not set(lower) & set(upper)
    if lower:
        assert max(scores[i] for i in lower) <= min(scores[i] for i in upper)


def test_quantile_count_cases() -> None:
    assert _explore.quantile_count(8, 0.25) == 2
    assert _explore.quantile_count(4, 0.25) == 1
    assert _explore.quantile_count(5, 0.25) == 2
    assert _explore.quantile_count(3, 0.5) == 1
    assert _explore.quantile_count(1, 0.5) == 0
    assert _explore.quantile_count(0, 0.25) == 0
    # 10 * 0.3 is 3.0000000000000004 in floats: Ray's ceil gives 4, the documented fix 3.
    assert _explore.quantile_count(10, 0.3) == 3


def test_quantile_zero_exploits_nobody() -> None:
    # Ray's trials[-0:] would make every member "upper"; here both quantiles are empty.
    assert _explore.quantiles([0.1, 0.5, 0.3], 0.0) == ([], [])


def test_quantiles_rank_nan_lowest() -> None:
    lower, upper = _explore.quantiles([0.2, float("nan"), 0.9, 0.5], 0.25)
    assert lower == [1]
    assert upper == [2]


@pytest.mark.parametrize("fraction", [-0.1, 0.51, 1.0])
def test_quantile_fraction_out_of_range(fraction: float) -> None:
    with pytest.raises(ValueError, match="quantile_fraction"):
        _explore.quantile_count(4, fraction)


# ----------------------------------------------------------------------------------------------
# Explore.

DISTRIBUTIONS = [
    FloatDistribution(0.0, 1.0),
    FloatDistribution(-5.0, 5.0),
    FloatDistribution(1e-5, 1.0, log=True),
    FloatDistribution(-1.0, 1.0, step=0.1),
    FloatDistribution(0.0, 0.95, step=0.05),
    FloatDistribution(0.3, 0.3),
    IntDistribution(1, 10),
    IntDistribution(0, 100, step=5),
    IntDistribution(-7, 3),
    IntDistribution(1, 1024, log=True),
    IntDistribution(2, 2),
    CategoricalDistribution(["a", "b", "c", "d"]),
    CategoricalDistribution([1, 2.5, None, True]),
    CategoricalDistribution(["only"]),
]


@pytest.mark.parametrize("distribution", DISTRIBUTIONS, ids=str)
@pytest.mark.parametrize("resample_probability", [0.0, 0.25, 1.0])
@pytest.mark.parametrize("factors", [(1.2, 0.8), (3.0, 0.1), (1.0,)])
def test_explore_stays_inside_distribution(
    distribution: optuna.distributions.BaseDistribution,
    resample_probability: float,
    factors: tuple[float, ...],
) -> None:
    spec = _spec(distribution)
    assert spec is not None
    rng = np.random.RandomState(0)
    value = _explore.sample(spec, rng)
    for _ in range(300):
        value, op = _explore.explore(
            value,
            spec,
            rng,
            resample_probability=resample_probability,
            perturbation_factors=factors,
        )
        internal = distribution.to_internal_repr(value)
        assert distribution._contains(internal), (value, op)
        if isinstance(distribution, IntDistribution):
            assert type(value) is int
        if isinstance(distribution, FloatDistribution):
            assert type(value) is float


@pytest.mark.filterwarnings("ignore:The distribution is specified by")
@settings(max_examples=200, deadline=None)
@given(
    low=st.floats(-100, 100),
    width=st.floats(0, 100),
    log=st.booleans(),
    step=st.sampled_from([None, 0.01, 0.25, 1.0]),
    factor=st.floats(0.01, 10),
    seed=st.integers(0, 2**31 - 1),
)
def test_explore_float_in_range_property(
    low: float, width: float, log: bool, step: float | None, factor: float, seed: int
) -> None:
    if log:
        low = abs(low) + 1e-3
        step = None
    high = low + width
    if step is not None:
        high = low + math.floor(width / step) * step
    distribution = FloatDistribution(low, high, log=log, step=step)
    spec = _spec(distribution)
    assert spec is not None
    rng = np.random.RandomState(seed)
    value = _explore.sample(spec, rng)
    for _ in range(20):
        value, _ = _explore.explore(
            value, spec, rng, resample_probability=0.1, perturbation_factors=(factor,)
        )
        assert distribution._contains(distribution.to_internal_repr(value))


def test_explore_perturbs_by_factor_without_resampling() -> None:
    spec = _explore.NumericSpec(0.0, 10.0)
    rng = np.random.RandomState(1)
    seen = set()
    for _ in range(100):
        new, op = _explore.explore(2.0, spec, rng, resample_probability=0.0)
        assert op in ("multiplied by 1.2", "multiplied by 0.8")
        assert new == pytest.approx(2.0 * float(op.split()[-1]))
        seen.add(op)
    assert seen == {"multiplied by 1.2", "multiplied by 0.8"}


def test_explore_resamples_with_probability_one() -> None:
    spec = _explore.NumericSpec(0.0, 10.0)
    rng = np.random.RandomState(2)
    values = [_explore.explore(2.0, spec, rng, resample_probability=1.0) for _ in range(200)]
    assert {op for _, op in values} == {"resampled"}
    # Uniform over [0, 10]: the mean of 200 draws lies near 5, far from 2.
    assert 4.0 < float(np.mean([v for v, _ in values])) < 6.0


def test_explore_resample_share_matches_probability() -> None:
    spec = _explore.NumericSpec(0.0, 10.0)
    rng = np.random.RandomState(3)
    ops = [_explore.explore(2.0, spec, rng, resample_probability=0.25)[1] for _ in range(4000)]
    share = ops.count("resampled") / len(ops)
    assert 0.22 < share < 0.28


def test_explore_clips_instead_of_drifting() -> None:
    spec = _explore.NumericSpec(0.0, 1.0)
    rng = np.random.RandomState(0)
    new, op = _explore.explore(
        0.95, spec, rng, resample_probability=0.0, perturbation_factors=(1.2,)
    )
    assert new == 1.0
    assert op == "multiplied by 1.2 (clipped)"


def test_explore_integer_moves_at_least_one_step() -> None:
    spec = _explore.NumericSpec(1, 10, is_int=True)
    rng = np.random.RandomState(0)
    up, op_up = _explore.explore(
        1, spec, rng, resample_probability=0.0, perturbation_factors=(1.2,)
    )
    down, _ = _explore.explore(3, spec, rng, resample_probability=0.0, perturbation_factors=(0.8,))
    assert (up, op_up) == (2, "multiplied by 1.2")
    assert down == 2
    assert isinstance(up, int) and isinstance(down, int)


def test_explore_categorical_moves_one_step() -> None:
    spec = _explore.CategoricalSpec(("a", "b", "c", "d"))
    rng = np.random.RandomState(0)
    for start in spec.choices:
        for _ in range(30):
            new, op = _explore.explore(start, spec, rng, resample_probability=0.0)
            assert op in ("shifted +1", "shifted -1")
            assert abs(spec.choices.index(new) - spec.choices.index(start)) == 1


def test_explore_categorical_unknown_value_is_resampled() -> None:
    spec = _explore.CategoricalSpec(("a", "b"))
    new, op = _explore.explore("z", spec, np.random.RandomState(0), resample_probability=0.0)
    assert op == "resampled" and new in ("a", "b")


def test_unit_mapping_round_trips() -> None:
    for spec in (
        _explore.NumericSpec(1e-4, 1.0, log=True),
        _explore.NumericSpec(-2.0, 3.0),
        _explore.NumericSpec(0, 10, is_int=True),
    ):
        for u in (0.0, 0.3, 1.0):
            value = _explore.from_unit(u, spec)
            assert _explore.contains(value, spec)
            if not spec.is_int:
                assert _explore.to_unit(value, spec) == pytest.approx(u)


# ----------------------------------------------------------------------------------------------
# Validation.


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"population_size": 1}, "population_size"),
        ({"population_size": 2.5}, "population_size"),
        ({"population_size": True}, "population_size"),
        ({"quantile_fraction": -0.01}, "quantile_fraction"),
        ({"quantile_fraction": 0.6}, "quantile_fraction"),
        ({"resample_probability": 1.5}, "resample_probability"),
        ({"perturbation_factors": ()}, "perturbation_factors"),
        ({"perturbation_factors": (1.2, 0.0)}, "perturbation_factors"),
        ({"perturbation_factors": (-0.8,)}, "perturbation_factors"),
        ({"perturbation_factors": (float("inf"),)}, "perturbation_factors"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PBTSampler(**kwargs)


def test_quantile_bounds_are_accepted() -> None:
    PBTSampler(quantile_fraction=0.0)
    PBTSampler(quantile_fraction=0.5, population_size=2)


# ----------------------------------------------------------------------------------------------
# Scripted populations.

LR = FloatDistribution(1e-4, 1.0, log=True)
MOMENTUM = FloatDistribution(0.0, 0.99)


def _member_trial(
    generation: int,
    member: int,
    value: float | None,
    params: dict[str, float],
    *,
    parent: int | None = None,
    state: TrialState = TrialState.COMPLETE,
    failed: bool = False,
) -> optuna.trial.FrozenTrial:
    system_attrs: dict[str, Any] = {
        GENERATION_KEY: generation,
        MEMBER_KEY: member,
        DECISION_KEY: {"action": "start", "parent": parent, "clone_member": None},
    }
    if failed:
        system_attrs[FAILED_KEY] = True
    return create_trial(
        state=state,
        value=value if state == TrialState.COMPLETE else None,
        params=params if state != TrialState.WAITING else None,
        distributions={"lr": LR, "momentum": MOMENTUM} if state != TrialState.WAITING else None,
        system_attrs=system_attrs,
    )


def _scripted_study(
    scores: list[float | None],
    sampler: PBTSampler,
    direction: Literal["minimize", "maximize"] = "maximize",
) -> optuna.Study:
    study = optuna.create_study(sampler=sampler, direction=direction)
    for m, score in enumerate(scores):
        params = {"lr": 10 ** -(1 + m * 0.3), "momentum": 0.1 * m}
        if score is None:
            study.add_trial(_member_trial(0, m, None, params, state=TrialState.FAIL, failed=True))
        else:
            study.add_trial(_member_trial(0, m, score, params))
    return study


def _decisions(study: optuna.Study, generation: int) -> dict[int, dict[str, Any]]:
    out = {}
    for t in study.get_trials(deepcopy=False):
        if t.system_attrs.get(GENERATION_KEY) == generation:
            out[int(t.system_attrs[MEMBER_KEY])] = t.system_attrs[DECISION_KEY]
    return out


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_bottom_quantile_clones_top_quantile(direction: Literal["minimize", "maximize"]) -> None:
    scores = [0.50, 0.91, 0.10, 0.72, 0.33, 0.88, 0.05, 0.60]
    sign = 1 if direction == "maximize" else -1
    ranked = sorted(range(8), key=lambda m: sign * scores[m])
    bottom, top = set(ranked[:2]), set(ranked[-2:])
    cloned = set()
    for seed in range(20):
        sampler = PBTSampler(population_size=8, seed=seed)
        study = _scripted_study(list(scores), sampler, direction)
        created = sampler.open_slots(study)
        assert len(created) == 8
        by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
        for member, decision in _decisions(study, 1).items():
            parent = by_number[decision["parent"]]
            if member in bottom:
                assert decision["action"] == "exploit"
                assert decision["clone_member"] in top
                assert int(parent.system_attrs[MEMBER_KEY]) == decision["clone_member"]
                assert set(decision["params"]) == {"lr", "momentum"}
                for name, value in decision["params"].items():
                    dist = parent.distributions[name]
                    assert dist._contains(dist.to_internal_repr(value))
                cloned.add(decision["clone_member"])
            else:
                assert decision["action"] == "continue"
                assert int(parent.system_attrs[MEMBER_KEY]) == member
                assert decision["params"] == parent.params
    # The clone is a random choice of the top quantile: both top members get chosen.
    assert cloned == top


def test_failed_member_clones_top_member() -> None:
    sampler = PBTSampler(population_size=4, seed=0)
    study = _scripted_study([0.5, None, 0.9, 0.7], sampler)
    sampler.open_slots(study)
    decisions = _decisions(study, 1)
    assert decisions[1]["action"] == "exploit"
    assert decisions[1]["clone_member"] == 2
    # q_n = 1 of 3 scored members: member 0 (0.5) is the bottom one.
    assert decisions[0]["action"] == "exploit"
    assert decisions[2]["action"] == decisions[3]["action"] == "continue"


def test_zero_quantile_keeps_everyone_but_replaces_failed() -> None:
    sampler = PBTSampler(population_size=4, quantile_fraction=0.0, seed=0)
    study = _scripted_study([0.5, None, 0.9, 0.7], sampler)
    sampler.open_slots(study)
    decisions = _decisions(study, 1)
    assert [decisions[m]["action"] for m in (0, 2, 3)] == ["continue"] * 3
    # With an empty top quantile a failed member clones the best member.
    assert decisions[1]["action"] == "exploit" and decisions[1]["clone_member"] == 2


def test_all_failed_generation_retries() -> None:
    sampler = PBTSampler(population_size=3, seed=0)
    study = _scripted_study([None, None, None], sampler)
    sampler.open_slots(study)
    assert {d["action"] for d in _decisions(study, 1).values()} == {"retry"}


def test_synchronous_generation_waits_for_every_member() -> None:
    sampler = PBTSampler(population_size=4, seed=0)
    study = _scripted_study([0.5, 0.9, 0.7], sampler)
    study.add_trial(_member_trial(0, 3, None, {}, state=TrialState.WAITING))
    assert sampler.open_slots(study) == []
    assert sampler.open_slots(study, n_generations=1) == []


def test_asynchronous_member_moves_on_when_half_reported() -> None:
    sampler = PBTSampler(population_size=4, synchronous=False, seed=0)
    assert sampler.async_min_reports == 2
    study = _scripted_study([0.5], sampler)
    for m in (1, 2, 3):
        study.add_trial(_member_trial(0, m, None, {}, state=TrialState.WAITING))
    # One report of four: member 0 must wait.
    assert sampler.open_slots(study) == []
    trial = study.ask()  # pops member 1's slot
    trial.suggest_float("lr", 1e-4, 1.0, log=True)
    trial.suggest_float("momentum", 0.0, 0.99)
    study.tell(trial, 0.9)
    created = sampler.open_slots(study)
    assert len(created) == 2
    decisions = _decisions(study, 1)
    assert set(decisions) == {0, 1}
    # Ranked among the two reports: member 0 (0.5) is the bottom one and clones member 1.
    assert decisions[0]["action"] == "exploit" and decisions[0]["clone_member"] == 1
    assert decisions[1]["action"] == "continue"


def test_lost_slot_is_materialized_again_with_the_same_decision() -> None:
    sampler = PBTSampler(population_size=2, seed=0)
    study = _scripted_study([0.5, 0.9], sampler)
    sampler.open_slots(study)
    first = _decisions(study, 1)
    # A worker claims member 0's slot and dies: the heartbeat fails the trial (no failed mark).
    trials = study.get_trials(deepcopy=False)
    slot = next(
        t
        for t in trials
        if t.system_attrs.get(GENERATION_KEY) == 1 and t.system_attrs[MEMBER_KEY] == 0
    )
    study._storage.set_trial_state_values(slot._trial_id, TrialState.RUNNING)
    study._storage.set_trial_state_values(slot._trial_id, TrialState.FAIL)
    created = sampler.open_slots(study)
    assert len(created) == 1
    again = study._storage.get_trial(created[0])
    assert again.system_attrs[MEMBER_KEY] == 0
    assert again.system_attrs[DECISION_KEY] == first[0]


def test_duplicate_waiting_slot_is_cancelled() -> None:
    sampler = PBTSampler(population_size=2, seed=0)
    study = _scripted_study([0.5, 0.9], sampler)
    sampler.open_slots(study)
    # A second worker materialized member 1's slot at the same time.
    template = create_trial(
        state=TrialState.WAITING,
        system_attrs={GENERATION_KEY: 1, MEMBER_KEY: 1, DECISION_KEY: _decisions(study, 1)[1]},
    )
    duplicate = study._storage.create_new_trial(study._study_id, template_trial=template)
    sampler._cancel_duplicates(study)
    frozen = study._storage.get_trial(duplicate)
    assert frozen.state == TrialState.FAIL
    assert frozen.system_attrs.get(DUPLICATE_KEY) is True
    population = Population(study.get_trials(deepcopy=False), 2)
    assert all(len(s.trials) == 1 for s in population.generation(1))


def test_claimed_duplicate_gives_its_slot_up() -> None:
    sampler = PBTSampler(population_size=2, seed=0)
    study = _scripted_study([0.5, 0.9], sampler)
    sampler.open_slots(study)
    decision = _decisions(study, 1)[1]
    template = create_trial(
        state=TrialState.WAITING,
        system_attrs={GENERATION_KEY: 1, MEMBER_KEY: 1, DECISION_KEY: decision},
    )
    duplicate = study._storage.create_new_trial(study._study_id, template_trial=template)
    # The higher-numbered copy is claimed first: it sees the lower WAITING one and yields.
    assert study._storage.set_trial_state_values(duplicate, TrialState.RUNNING)
    optuna.Trial(study, duplicate)
    assert study._storage.get_trial_system_attrs(duplicate).get(DUPLICATE_KEY) is True


def test_plain_optimize_assigns_generations_and_keeps_parents_params() -> None:
    sampler = PBTSampler(population_size=4, seed=1)
    study = optuna.create_study(sampler=sampler, direction="maximize")

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
        n = trial.suggest_int("n", 1, 8)
        return -abs(math.log10(lr) + 2) - 0.01 * n

    study.optimize(objective, n_trials=20)
    trials = study.trials
    assert len(trials) == 20
    assert all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:
        assert t.system_attrs[GENERATION_KEY] == t.number // 4
        assert t.system_attrs[MEMBER_KEY] == t.number % 4
        assert t.user_attrs["pbt:generation"] == t.number // 4
        decision = t.system_attrs[DECISION_KEY]
        if decision["action"] == "continue":
            assert t.params == trials[decision["parent"]].params
        if decision["action"] == "exploit":
            parent = trials[decision["parent"]]
            assert parent.system_attrs[GENERATION_KEY] == t.system_attrs[GENERATION_KEY] - 1
            assert set(t.user_attrs["pbt:explore"]) == {"lr", "n"}
    for g in range(1, 5):
        actions = [t.system_attrs[DECISION_KEY]["action"] for t in trials[4 * g : 4 * g + 4]]
        assert actions.count("exploit") == 1  # q_n = ceil(4 * 0.25)


def test_plain_optimize_is_reproducible_with_a_seed() -> None:
    def run(seed: int) -> list[dict[str, Any]]:
        study = optuna.create_study(sampler=PBTSampler(population_size=3, seed=seed))
        study.optimize(lambda t: t.suggest_float("x", -1, 1) ** 2, n_trials=9)
        return [t.params for t in study.trials]

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_surplus_trial_when_every_slot_is_taken() -> None:
    sampler = PBTSampler(population_size=2, seed=0)
    study = optuna.create_study(sampler=sampler)
    first, second = study.ask(), study.ask()
    third = study.ask()
    assert GENERATION_KEY in first.study._storage.get_trial_system_attrs(first._trial_id)
    assert second.study._storage.get_trial_system_attrs(second._trial_id)[MEMBER_KEY] == 1
    attrs = study._storage.get_trial_system_attrs(third._trial_id)
    assert attrs.get(SURPLUS_KEY) is True
    value = third.suggest_float("x", 0, 1)
    assert 0 <= value <= 1
    study.tell(third, value)
    population = Population(study.get_trials(deepcopy=False), 2)
    assert sorted(population.slots) == [(0, 0), (0, 1)]


def test_surplus_trials_draw_after_a_restart_what_an_uninterrupted_run_draws() -> None:
    def surplus_values(restart: bool) -> list[float]:
        storage = optuna.storages.InMemoryStorage()
        study = optuna.create_study(storage=storage, sampler=PBTSampler(population_size=2, seed=0))
        study.ask(), study.ask()  # the two members, still running
        values = []
        for _ in range(2):
            if restart:  # a new process: a new sampler with the same seed on the same storage
                study = optuna.load_study(
                    study_name=study.study_name,
                    storage=storage,
                    sampler=PBTSampler(population_size=2, seed=0),
                )
            trial = study.ask()
            assert storage.get_trial_system_attrs(trial._trial_id).get(SURPLUS_KEY) is True
            values.append(trial.suggest_float("x", 0, 1))
        return values

    uninterrupted = surplus_values(restart=False)
    assert uninterrupted[0] != uninterrupted[1]
    # Optuna's RandomSampler (the default before) restarted its stream: [v0, v0].
    assert surplus_values(restart=True) == uninterrupted


def test_failed_trial_is_marked_and_replaced() -> None:
    sampler = PBTSampler(population_size=2, seed=0)
    study = optuna.create_study(sampler=sampler)

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        if trial.number == 1:
            raise RuntimeError("boom")
        return x

    study.optimize(objective, n_trials=4, catch=(RuntimeError,))
    assert study.trials[1].system_attrs.get(FAILED_KEY) is True
    # Trial 0 is member 0 and trial 1 member 1 of generation 0; 2 and 3 form generation 1.
    assert study.trials[2].system_attrs[DECISION_KEY]["action"] == "continue"
    decision = study.trials[3].system_attrs[DECISION_KEY]
    assert study.trials[3].system_attrs[MEMBER_KEY] == 1
    assert decision["action"] == "exploit" and decision["parent"] == 0
    assert study.trials[3].params["x"] != study.trials[1].params["x"]


def test_needed_checkpoints_cover_clones_and_parents() -> None:
    sampler = PBTSampler(population_size=4, seed=0)
    study = _scripted_study([0.5, 0.9, 0.1, 0.7], sampler)
    population = Population(study.get_trials(deepcopy=False), 4)
    # Generation 0 has finished and nothing is planned yet: anyone may be cloned.
    assert needed_checkpoint_trials(population) == {0, 1, 2, 3}
    sampler.open_slots(study)
    population = Population(study.get_trials(deepcopy=False), 4)
    parents = {d["parent"] for d in _decisions(study, 1).values()}
    # Generation 1 is waiting: only its parents are needed; member 2 (0.1) was replaced.
    assert needed_checkpoint_trials(population) == parents == {0, 1, 3}
    # Member 0's generation-1 segment completes: generation 2 may clone it, while its parent
    # (trial 0, which member 0 continued from) can no longer be loaded by anyone.
    trial = study.ask()
    assert trial.study._storage.get_trial_system_attrs(trial._trial_id)[MEMBER_KEY] == 0
    trial.suggest_float("lr", 1e-4, 1.0, log=True)
    trial.suggest_float("momentum", 0.0, 0.99)
    study.tell(trial, 0.95)
    population = Population(study.get_trials(deepcopy=False), 4)
    assert needed_checkpoint_trials(population) == {1, 3, trial.number}


# ----------------------------------------------------------------------------------------------
# PB2.


def test_pb2_propose_finds_the_best_gain() -> None:
    rng = np.random.RandomState(0)
    xs, ys = [], []
    for t in range(6):
        for h in np.linspace(0.0, 1.0, 7):
            xs.append([float(t), 0.0, float(h)])
            ys.append(-((h - 0.7) ** 2))
    h = _pb2.propose(xs, ys, fixed=[6.0, 0.0], rng=rng)
    assert abs(float(h[0]) - 0.7) < 0.15


def test_pb2_pending_points_spread_a_batch() -> None:
    rng = np.random.RandomState(0)
    xs = [[0.0, 0.0, 0.5], [1.0, 0.0, 0.5]]
    ys = [0.0, 0.0]
    first = _pb2.propose(xs, ys, fixed=[2.0, 0.0], rng=rng)
    second = _pb2.propose(xs, ys, fixed=[2.0, 0.0], rng=rng, pending=[[2.0, 0.0, *first]])
    assert abs(float(first[0]) - float(second[0])) > 0.1


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_pb2_moves_a_log_scale_rate_toward_the_best_gain(
    direction: Literal["maximize", "minimize"],
) -> None:
    # Each segment adds a gain peaked at lr = 0.05 on the log scale of [1e-3, 1] (the middle
    # of the range, u* = 0.57 in PB2's unit cube): GP-UCB's proposals must find it, whatever
    # the direction (a minimized study gets the negated score).
    sign = 1.0 if direction == "maximize" else -1.0
    rng = np.random.default_rng(0)
    study = optuna.create_study(
        sampler=PBTSampler(population_size=4, pb2=True, seed=0), direction=direction
    )

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-3, 1.0, log=True)
        parent = trial.user_attrs.get("pbt:parent")
        before = sign * study.trials[parent].value if parent is not None else 0.0
        gain = math.exp(-((math.log10(lr / 0.05)) ** 2) / (2 * 0.5**2))
        return sign * (before + gain + 0.05 * float(rng.standard_normal()))

    study.optimize(objective, n_trials=4 * 9)
    proposed = [
        t.params["lr"]
        for t in study.trials
        if t.user_attrs.get("pbt:explore", {}).get("lr") == _explore.PROPOSED
    ]
    assert len(proposed) >= 6
    # The later proposals (once the GP has data) lie within a factor of 2 of 0.05.
    later = proposed[len(proposed) // 2 :]
    assert abs(float(np.median(np.log10(np.array(later) / 0.05)))) < math.log10(2.0)


def test_pb2_sampler_proposes_inside_distributions() -> None:
    sampler = PBTSampler(population_size=4, pb2=True, seed=0)
    study = optuna.create_study(sampler=sampler, direction="maximize")

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
        k = trial.suggest_int("k", 1, 5)
        c = trial.suggest_categorical("c", ["a", "b", "c"])
        return -abs(math.log10(lr) + 2) + 0.1 * k + (c == "b")

    study.optimize(objective, n_trials=24)
    ops = [
        op
        for t in study.trials
        if t.system_attrs[DECISION_KEY]["action"] == "exploit"
        for name, op in t.user_attrs["pbt:explore"].items()
        if name != "c"
    ]
    assert "proposed by GP-UCB" in ops
    for t in study.trials:
        assert 1e-4 <= t.params["lr"] <= 1.0 and t.params["k"] in range(1, 6)
        if t.system_attrs[DECISION_KEY]["action"] == "exploit":
            assert t.user_attrs["pbt:explore"]["c"] != "proposed by GP-UCB"


def test_needed_checkpoints_keep_the_parents_of_failed_slots() -> None:
    sampler = PBTSampler(population_size=2, seed=0)
    study = _scripted_study([0.5, 0.9], sampler)
    # Generation 1 failed entirely: its members will retry from their parents (trials 0, 1).
    for m, parent in ((0, 1), (1, 1)):
        trial = _member_trial(
            1,
            m,
            None,
            {"lr": 0.01, "momentum": 0.5},
            parent=parent,
            state=TrialState.FAIL,
            failed=True,
        )
        study.add_trial(trial)
    population = Population(study.get_trials(deepcopy=False), 2)
    assert needed_checkpoint_trials(population) == {1}
    sampler.open_slots(study)
    assert {d["action"] for d in _decisions(study, 2).values()} == {"retry"}
    assert {d["parent"] for d in _decisions(study, 2).values()} == {1}


def test_a_changed_search_space_gets_values_inside_it() -> None:
    """Planned values that the new distributions do not hold (narrower ranges, another int
    step) are resampled inside them; the population goes on. (Optuna itself refuses a change
    of distribution kind or of log scale under the same name.)"""
    study = optuna.create_study(
        sampler=PBTSampler(population_size=3, seed=0), direction="maximize"
    )

    def before(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
        return -abs(math.log10(lr) + 2.0) + trial.suggest_int("width", 1, 100) / 100

    def after(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 0.5, 1.0, log=True)
        return lr + trial.suggest_int("width", 200, 240, step=8) / 100

    study.optimize(before, n_trials=6)
    study.optimize(after, n_trials=6)
    later = study.trials[6:]
    assert all(t.state == TrialState.COMPLETE for t in later)
    assert all(0.5 <= t.params["lr"] <= 1.0 for t in later)
    assert all(t.params["width"] in range(200, 241, 8) for t in later)
    assert {t.system_attrs["PBTSampler:generation"] for t in later} == {2, 3}
