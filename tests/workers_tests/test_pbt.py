"""PBT with four workers on one population: the harness and plain ``study.optimize``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
import tempfile

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import TrialState
import pytest

import optuna_ext.pbt
from optuna_ext.samplers import PBTSampler
from optuna_ext.samplers._pbt._population import DECISION_KEY
from optuna_ext.samplers._pbt._population import DUPLICATE_KEY
from optuna_ext.samplers._pbt._population import GENERATION_KEY
from optuna_ext.samplers._pbt._population import is_member_trial
from optuna_ext.samplers._pbt._population import MEMBER_KEY
from tests.workers_tests._checks import check_workers
from tests.workers_tests._checks import workers_of
from tests.workers_tests._run import WorkerRun
from tests.workers_tests._worker import PBT_GENERATIONS
from tests.workers_tests._worker import PBT_POPULATION
from tests.workers_tests._worker import pbt_segment
from tests.workers_tests.conftest import BACKENDS


pytestmark = pytest.mark.slow


def _slot(t: optuna.trial.FrozenTrial) -> tuple[int, int]:
    return int(t.system_attrs[GENERATION_KEY]), int(t.system_attrs[MEMBER_KEY])


def _decisions(trials: list[optuna.trial.FrozenTrial]) -> dict[tuple[int, int], dict]:
    """The decision of each slot, its parent named by slot (trial numbers differ between runs)."""
    slot_of = {t.number: _slot(t) for t in trials if is_member_trial(t)}
    out = {}
    for t in trials:
        if t.state == TrialState.COMPLETE and is_member_trial(t):
            decision = dict(t.system_attrs[DECISION_KEY])
            parent = decision.pop("parent")
            decision["parent_slot"] = None if parent is None else slot_of[parent]
            out[_slot(t)] = decision
    return out


def _one_worker_decisions() -> dict[tuple[int, int], dict]:
    study = optuna.create_study(
        direction="maximize", sampler=PBTSampler(population_size=PBT_POPULATION, seed=0)
    )
    with tempfile.TemporaryDirectory() as tmp:
        optuna_ext.pbt.run(
            study,
            pbt_segment,
            n_generations=PBT_GENERATIONS,
            artifact_store=FileSystemArtifactStore(tmp),
            save_plots=False,
        )
    return _decisions(study.trials)


@pytest.mark.parametrize("backend", BACKENDS)
def test_harness_trains_each_member_once_per_generation(
    worker_runs: Callable[[str], WorkerRun], backend: str
) -> None:
    run = worker_runs(backend)
    trials = check_workers(run, "pbt", every_finished_trial_told=False)
    assert all(r["finished"] for r in run.method_reports("pbt"))
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert all(is_member_trial(t) for t in complete)
    slots = Counter(_slot(t) for t in complete)
    expected = {(g, m) for g in range(PBT_GENERATIONS) for m in range(PBT_POPULATION)}
    assert set(slots) == expected and all(n == 1 for n in slots.values()), slots
    # Only the COMPLETE trials trained (the segment writes `steps`): the second trial of a
    # slot, opened by two workers at once, was cancelled before it ran.
    trained = [t for t in trials if "steps" in t.user_attrs]
    assert sorted(t.number for t in trained) == sorted(t.number for t in complete)
    for t in trials:
        if t.state == TrialState.FAIL:
            assert t.system_attrs.get(DUPLICATE_KEY) is True, (t.number, t.system_attrs)
    # Every segment continued from its parent's checkpoint: g + 1 steps after generation g.
    for t in complete:
        assert t.user_attrs["steps"] == _slot(t)[0] + 1
    assert len(workers_of(trials)) >= 2
    # Synchronous PBT decides from the scores alone: the same decisions as one worker.
    assert _decisions(trials) == _one_worker_decisions()


@pytest.mark.parametrize("backend", BACKENDS)
def test_plain_optimize_never_completes_a_slot_twice(
    worker_runs: Callable[[str], WorkerRun], backend: str
) -> None:
    run = worker_runs(backend)
    trials = check_workers(run, "pbt-optimize")
    members = [t for t in trials if t.state == TrialState.COMPLETE and is_member_trial(t)]
    slots = Counter(_slot(t) for t in members)
    assert all(n == 1 for n in slots.values()), slots
    # The population went on: generation 0 is complete, generation 1 has begun. (Under plain
    # optimize a trial that finds no free slot is surplus: the harness avoids that work.)
    assert {(0, m) for m in range(4)} <= set(slots), sorted(slots)
    assert any(g == 1 for g, _ in slots), sorted(slots)
