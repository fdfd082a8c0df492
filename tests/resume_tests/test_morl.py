"""MORLPruner killed with SIGKILL and restarted: the trials promoted are those of one run.

The worker runs 30 trials of a synthetic learning curve (9 epochs, rung ends 1, 3, 9) under
``study.optimize`` with a sampler whose draws depend only on the seed and the trial's draw index
(``StorageSeededRandomSampler``: Optuna's RandomSampler restarts its stream in a new process, so
the parameters after a restart would differ). It is killed inside a trial that was promoted at
a rung end, inside a trial right after the pruner told it to stop (before it raised
``TrialPruned``), and from outside at a random moment. Killed trials are failed as stale and
retried by Optuna's callback.
"""

from __future__ import annotations

import functools
from pathlib import Path
import tempfile
from typing import Any

import optuna
from optuna.trial import FrozenTrial
from optuna.trial import TrialState
import pytest

from tests.resume_tests import _harness
from tests.resume_tests import _workers


pytestmark = pytest.mark.slow
optuna.logging.set_verbosity(optuna.logging.ERROR)


@functools.cache
def reference() -> optuna.Study:
    with tempfile.TemporaryDirectory() as tmp:
        return _workers.morl(optuna.storages.InMemoryStorage(), Path(tmp))


def plans(name: str) -> list[_harness.Plan]:
    trials = reference().trials
    rng = _harness.kill_rng("morl", name)
    n = len(trials)
    # A trial that went on after a rung end (killed after a later epoch, before the next
    # report), then a later trial that was pruned.
    promoted = [
        (t.number, epoch)
        for t in trials[2 : n // 2]
        for epoch in range(1, (t.last_step or 0) + 1)
        if t.state == TrialState.COMPLETE or epoch < (t.last_step or 0)
    ]
    first, epoch = rng.choice(promoted)
    pruned = [t.number for t in trials[first + 1 : n - 6] if t.state == TrialState.PRUNED]
    second = rng.choice(pruned)
    return [
        _harness.Hook(f"epoch:{first}:{epoch}"),
        _harness.Hook(f"pruned:{second}"),
        _harness.External(finished=rng.randint(second + 2, n - 4), delay=rng.uniform(0, 0.03)),
    ]


def decisions(trials: list[FrozenTrial]) -> list[tuple[Any, ...]]:
    """Per trial: its parameters, how far it went (rung records, reports) and its end."""
    return [
        (
            t.params,
            t.state,
            t.value,
            t.intermediate_values,
            {k: v for k, v in t.system_attrs.items() if ":completed_rung_" in k},
        )
        for t in trials
    ]


def test_morl_resumes_after_kills(storage: tuple[str, str], tmp_path: Path) -> None:
    name, url = storage
    ref = reference()
    plan = plans(name)
    outcome = _harness.run_with_kills(
        ["morl", url, str(tmp_path / "artifacts")],
        url,
        plan,
        tmp_path,
        consistent=_harness.no_running_trial_without_heartbeat,
        heartbeat=True,
    )
    _harness.assert_no_finished_trial_lost(outcome)
    assert outcome.kills[0].stale and outcome.kills[1].stale
    assert _harness.assert_stale_trials_retried(outcome) >= 2
    logical = _harness.logical_trials(outcome.trials)
    assert decisions(logical) == decisions(ref.trials)
    # The trial killed as it was pruned: its retry was pruned at the same rung end.
    pruned_index = int(plan[1].point.split(":")[1])  # type: ignore[union-attr]
    assert logical[pruned_index].state == TrialState.PRUNED
    assert logical[pruned_index].system_attrs["failed_trial"] is not None
