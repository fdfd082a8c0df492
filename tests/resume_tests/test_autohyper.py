"""AutoHyperSampler killed with SIGKILL and restarted: the rates tried are those of one run.

The worker optimizes the synthetic Z(lr) of ``tests/samplers_tests/autohyper_tests`` under
``study.optimize`` on a storage with heartbeats and Optuna's retry callback. It is killed three
times, at seeded points: inside a trial's objective (the trial is left RUNNING, then failed as
stale and retried), between two trials, and from outside at a random moment.
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

from optuna_ext.metrics._keys import KNOWLEDGE_GAIN_Z_KEY
from optuna_ext.samplers import AutoHyperSampler
from optuna_ext.samplers._autohyper._search import replay
from optuna_ext.samplers._autohyper._search import SearchState
from optuna_ext.samplers._autohyper.sampler import _Book
from optuna_ext.samplers._autohyper.sampler import _load_stored
from optuna_ext.samplers._autohyper.sampler import _POINT_KEY
from tests.resume_tests import _harness
from tests.resume_tests import _workers


pytestmark = pytest.mark.slow
optuna.logging.set_verbosity(optuna.logging.ERROR)


@functools.cache
def reference() -> optuna.Study:
    with tempfile.TemporaryDirectory() as tmp:
        return _workers.autohyper(optuna.storages.InMemoryStorage(), Path(tmp))


def plans(name: str) -> list[_harness.Plan]:
    n = len(reference().trials)
    rng = _harness.kill_rng("autohyper", name)
    inside, between = sorted(rng.sample(range(2, n - 8), 2))
    return [
        _harness.Hook(f"objective:{inside}"),
        _harness.Hook(f"after:{between}"),
        _harness.External(finished=rng.randint(between + 3, n - 4), delay=rng.uniform(0, 0.03)),
    ]


def search_state(study: optuna.Study) -> SearchState:
    stored = _load_stored(study)
    assert stored is not None
    _, z_source, search = stored
    return replay(search, _Book.read(study.get_trials(deepcopy=False), z_source).attempts)


def decisions(trials: list[FrozenTrial]) -> list[tuple[Any, ...]]:
    return [
        (t.state, t.params["lr"], t.params["x"], t.user_attrs[KNOWLEDGE_GAIN_Z_KEY], t.value)
        for t in trials
    ]


def test_autohyper_resumes_after_kills(storage: tuple[str, str], tmp_path: Path) -> None:
    name, url = storage
    ref = reference()
    outcome = _harness.run_with_kills(
        ["autohyper", url, str(tmp_path / "artifacts")],
        url,
        plans(name),
        tmp_path,
        consistent=_harness.no_running_trial_without_heartbeat,
        heartbeat=True,
    )
    _harness.assert_no_finished_trial_lost(outcome)
    # The objective kill left one RUNNING trial; the outside kill may have left another.
    assert outcome.kills[0].stale and not outcome.kills[1].running
    assert _harness.assert_stale_trials_retried(outcome) >= 1

    # The rates tried, in order (a killed trial counted once, by its retry), with the other
    # parameter and the measured Z: those of the uninterrupted run.
    logical = _harness.logical_trials(outcome.trials)
    assert decisions(logical) == decisions(ref.trials)
    assert all(t.state == TrialState.COMPLETE for t in logical)
    # The search read back from the storage: the same measurements, rules and answer. (Its
    # evaluation count includes the killed trials that had got a grid point: failed attempts.)
    study = optuna.load_study(study_name=_workers.STUDY, storage=url)
    resumed, whole = search_state(study), search_state(ref)
    assert resumed.evaluations == whole.evaluations
    assert [(e.kind, e.pass_id, e.index, e.lr) for e in resumed.events] == [
        (e.kind, e.pass_id, e.index, e.lr) for e in whole.events
    ]
    killed = [t for t in outcome.trials if t.state == TrialState.FAIL]
    assert resumed.n_trials == whole.n_trials + len(
        [t for t in killed if _POINT_KEY in t.system_attrs]
    )
    assert AutoHyperSampler.result(study).lr == AutoHyperSampler.result(ref).lr is not None
    assert AutoHyperSampler.result(study).reason == AutoHyperSampler.result(ref).reason
