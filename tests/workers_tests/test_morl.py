"""MORLPruner and MORLHyperbandPruner with four workers pruning one study."""

from __future__ import annotations

from collections.abc import Callable

from optuna.trial import FrozenTrial
from optuna.trial import TrialState
import pytest

from optuna_ext.pruners import MORLHyperbandPruner
from optuna_ext.pruners._morl import BOUNDARIES_KEY
from optuna_ext.pruners._morl_hyperband import BRACKET_KEY
from optuna_ext.pruners._morl_hyperband import BRACKETS_KEY
from optuna_ext.pruners._rungs import completed_rung_key
from tests.workers_tests._checks import check_workers
from tests.workers_tests._run import WorkerRun
from tests.workers_tests._worker import curve
from tests.workers_tests._worker import MORL_MAX_RESOURCE
from tests.workers_tests.conftest import BACKENDS


pytestmark = pytest.mark.slow


def _check_rungs(
    trials: list[FrozenTrial], prefix: str, ends: Callable[[FrozenTrial], list[int]]
) -> None:
    """Pruned only at a rung end; each rung end reached is recorded with its value."""
    for t in trials:
        boundaries = ends(t)
        assert t.state in (TrialState.PRUNED, TrialState.COMPLETE), t.state
        last = max(t.intermediate_values)
        lr = t.params["lr"]
        assert t.intermediate_values == {s: curve(lr, s) for s in range(1, last + 1)}
        if t.state == TrialState.PRUNED:
            assert last in boundaries and last < MORL_MAX_RESOURCE, (t.number, last)
        else:
            assert last == MORL_MAX_RESOURCE
        reached = [b for b in boundaries if b <= last]
        for k, end in enumerate(reached):
            assert t.system_attrs[completed_rung_key(prefix, k)] == curve(lr, end)
        assert completed_rung_key(prefix, len(reached)) not in t.system_attrs


@pytest.mark.parametrize("backend", BACKENDS)
def test_morl_pruner_records_every_rung_of_every_worker(
    worker_runs: Callable[[str], WorkerRun], backend: str
) -> None:
    run = worker_runs(backend)
    trials = check_workers(run, "morl")
    assert run.study_system_attrs["workers-morl"][BOUNDARIES_KEY] == [1, 2, 4]
    _check_rungs(trials, "MORLPruner", lambda t: [1, 2, 4])
    states = {t.state for t in trials}
    assert states == {TrialState.PRUNED, TrialState.COMPLETE}


@pytest.mark.parametrize("backend", BACKENDS)
def test_morl_hyperband_workers_agree_on_every_trials_bracket(
    worker_runs: Callable[[str], WorkerRun], backend: str
) -> None:
    run = worker_runs(backend)
    trials = check_workers(run, "morl-hyperband")
    pruner = MORLHyperbandPruner(
        max_resource=MORL_MAX_RESOURCE, min_resource=1, reduction_factor=2
    )
    stored = run.study_system_attrs["workers-morl-hyperband"][BRACKETS_KEY]
    assert stored == [list(b) for b in pruner.brackets]
    for t in trials:
        # The bracket is a hash of the study name and trial number: every process agrees.
        assert t.system_attrs[BRACKET_KEY] == pruner._hash_bracket(
            "workers-morl-hyperband", t.number
        )
    _check_rungs(
        trials,
        "MORLHyperbandPruner",
        lambda t: list(pruner.brackets[t.system_attrs[BRACKET_KEY]]),
    )
    assert len({t.system_attrs[BRACKET_KEY] for t in trials}) >= 2
