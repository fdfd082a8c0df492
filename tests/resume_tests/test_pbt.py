"""PBTSampler with its harness killed with SIGKILL and restarted: the same members exploited.

A population of 4 for 4 synchronous generations (synthetic segments whose score depends on the
rate, the momentum and the checkpoint's progress), checkpoints in a file-system artifact store,
storage with heartbeats and Optuna's retry callback. The harness records the heartbeat of each
segment it claims, so a killed worker's segment is failed as stale and its retry (the callback's
WAITING copy, which keeps the slot) is run with the same decision. Killed inside a segment, after
a segment (between two claims), and from outside at a random moment.
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

from optuna_ext.samplers._pbt._population import DECISION_KEY
from optuna_ext.samplers._pbt._population import GENERATION_KEY
from optuna_ext.samplers._pbt._population import MEMBER_KEY
from tests.resume_tests import _harness
from tests.resume_tests import _workers


pytestmark = pytest.mark.slow
optuna.logging.set_verbosity(optuna.logging.ERROR)


@functools.cache
def reference() -> optuna.Study:
    with tempfile.TemporaryDirectory() as tmp:
        return _workers.pbt(optuna.storages.InMemoryStorage(), Path(tmp))


def _slot(trial: FrozenTrial) -> tuple[int, int]:
    return int(trial.system_attrs[GENERATION_KEY]), int(trial.system_attrs[MEMBER_KEY])


def plans(name: str) -> list[_harness.Plan]:
    rng = _harness.kill_rng("pbt", name)
    n = _workers.PBT_POPULATION
    slots = [(g, m) for g in range(_workers.PBT_GENERATIONS) for m in range(n)]
    inside, after = sorted(rng.sample(range(1, len(slots) - 6), 2))
    return [
        _harness.Hook("segment:{}:{}".format(*slots[inside])),
        _harness.Hook("after:{}:{}".format(*slots[after])),
        _harness.External(
            finished=rng.randint(after + 3, len(slots) - 3), delay=rng.uniform(0, 0.03)
        ),
    ]


def decisions(trials: list[FrozenTrial]) -> dict[tuple[int, int], tuple[Any, ...]]:
    """Per slot (generation, member): the decision (action, parent's slot, member cloned,
    parameters, explore operations), the parameters used, the score and the segments trained."""
    by_number = {t.number: t for t in trials}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    out = {}
    for t in complete:
        decision = dict(t.system_attrs[DECISION_KEY])
        parent = decision.pop("parent")
        decision["parent_slot"] = None if parent is None else _slot(by_number[parent])
        out[_slot(t)] = (decision, t.params, t.value, t.user_attrs["steps"])
    return out


def test_pbt_resumes_after_kills(storage: tuple[str, str], tmp_path: Path) -> None:
    name, url = storage
    ref = reference()
    outcome = _harness.run_with_kills(
        ["pbt", url, str(tmp_path / "artifacts")],
        url,
        plans(name),
        tmp_path,
        consistent=_harness.no_running_trial_without_heartbeat,
        heartbeat=True,
    )
    _harness.assert_no_finished_trial_lost(outcome)
    assert outcome.kills[0].stale and not outcome.kills[1].running
    assert _harness.assert_stale_trials_retried(outcome) >= 1
    expected = decisions(ref.trials)
    assert len(expected) == _workers.PBT_POPULATION * _workers.PBT_GENERATIONS
    assert any(d["action"] == "exploit" for d, *_ in expected.values())  # members exploited
    assert decisions(outcome.trials) == expected
    # Exactly one COMPLETE segment per slot; the killed ones FAIL (their retries ran).
    complete = [_slot(t) for t in outcome.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == len(set(complete)) == len(expected)
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in outcome.trials), [
        (t.number, t.state) for t in outcome.trials
    ]
