"""SynchronousMORL killed with SIGKILL and restarted: the same rounds, promotions and values.

Two brackets of 9 configurations (rounds of 9, 3 and 1 ending at epochs 1, 3 and 9), states in
a file-system artifact store, a sampler seeded per draw (``StorageSeededRandomSampler``), a
storage with heartbeats and Optuna's retry of stale trials, as a user's with several workers
would have. Between rounds a configuration's trial is WAITING, so a kill there leaves nothing
behind; the trial being trained is left RUNNING, failed once its heartbeat is stale, and its
configuration goes on from its last round in a retry (a copy with the same parameters and
checkpoints). Killed inside ``train_fn`` at two seeded (bracket, round, configuration) points
and once from outside at a random moment.
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

from optuna_ext.pruners._synchronous import BRACKET_KEY
from optuna_ext.pruners._synchronous import CONFIG_KEY
from optuna_ext.pruners._synchronous import rung_value_key
from tests.resume_tests import _harness
from tests.resume_tests import _workers


pytestmark = pytest.mark.slow
optuna.logging.set_verbosity(optuna.logging.ERROR)


@functools.cache
def reference() -> optuna.Study:
    with tempfile.TemporaryDirectory() as tmp:
        return _workers.synchronous_morl(optuna.storages.InMemoryStorage(), Path(tmp))


def training_calls(study: optuna.Study) -> list[tuple[int, int, int]]:
    """Every ``train_fn`` call of the run, in order: (bracket, round, configuration)."""
    calls = []
    for bracket in range(_workers.SYNC_BRACKETS):
        trials = [t for t in study.trials if t.system_attrs[BRACKET_KEY] == bracket]
        for rung in range(3):
            configs = sorted(
                int(t.system_attrs[CONFIG_KEY])
                for t in trials
                if rung_value_key(rung) in t.system_attrs
            )
            calls += [(bracket, rung, c) for c in configs]
    return calls


def plans(name: str) -> list[_harness.Plan]:
    calls = training_calls(reference())
    rng = _harness.kill_rng("synchronous_morl", name)
    # One kill in round 0 of the first bracket, one in a later round (the trials promoted to
    # it wait RUNNING, suspended), in order.
    first = rng.randrange(1, 8)
    second = rng.choice([i for i, call in enumerate(calls[:-2]) if call[1] >= 1])
    # A trial is told at the end of the last round it trained in: count those told before the
    # second kill, so that the outside kill comes after it.
    round_end = {(b, k): i for i, (b, k, _) in enumerate(calls)}
    told_at = sorted(
        round_end[(t.system_attrs[BRACKET_KEY], _last_round(t))] for t in reference().trials
    )
    told_before = sum(1 for i in told_at if i < second)
    return [
        _harness.Hook("train:{}:{}:{}".format(*calls[first])),
        _harness.Hook("train:{}:{}:{}".format(*calls[second])),
        _harness.External(
            finished=rng.randint(told_before + 1, len(told_at) - 2), delay=rng.uniform(0, 0.05)
        ),
    ]


def _last_round(trial: FrozenTrial) -> int:
    return max(k for k in range(3) if rung_value_key(k) in trial.system_attrs)


def decisions(trials: list[FrozenTrial]) -> dict[tuple[int, int], tuple[Any, ...]]:
    """Each configuration's outcome, by (bracket, configuration): the trials that did not fail."""
    out = {}
    for t in trials:
        if t.state == TrialState.FAIL:
            continue
        key = (t.system_attrs[BRACKET_KEY], t.system_attrs[CONFIG_KEY])
        assert key not in out, f"configuration {key} has two live trials"
        out[key] = (
            t.params,
            t.state,
            t.value,
            t.intermediate_values,
            {k: v for k, v in t.system_attrs.items() if ":completed_rung_" in k},
        )
    return out


def test_synchronous_morl_resumes_after_kills(storage: tuple[str, str], tmp_path: Path) -> None:
    name, url = storage
    ref = reference()
    outcome = _harness.run_with_kills(
        ["synchronous_morl", url, str(tmp_path / "artifacts")],
        url,
        plans(name),
        tmp_path,
        consistent=None,
        heartbeat=True,
    )
    _harness.assert_no_finished_trial_lost(outcome)
    # Every configuration has the parameters, promotions and values of the uninterrupted run.
    assert decisions(outcome.trials) == decisions(ref.trials)
    # The two kills inside train_fn left the trial being trained RUNNING, and nothing else
    # (the configurations between rounds wait as WAITING): each was failed as stale and its
    # configuration finished in a retry with its parameters.
    for kill in outcome.kills[:2]:
        assert len(kill.running) == 1 and kill.stale == [kill.running[0].number]
    retried = _harness.assert_stale_trials_retried(outcome)
    failed = [t for t in outcome.trials if t.state == TrialState.FAIL]
    assert retried == len(failed) >= 2
    assert len(outcome.trials) == len(ref.trials) + len(failed)
