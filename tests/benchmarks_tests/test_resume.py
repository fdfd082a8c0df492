from __future__ import annotations

import os
import signal
import subprocess
import sys

import optuna
from optuna.trial import TrialState
import pytest

from benchmarks.context import INTERRUPTED_ATTR
from benchmarks.context import RunContext
from benchmarks.runner import load_summaries
from benchmarks.runner import make_jobs
from benchmarks.runner import RunConfig
from benchmarks.runner import work


def _config(url: str, method: str, problem: str, budget: str) -> RunConfig:
    return RunConfig(
        storage=url,
        jobs=tuple(make_jobs([method], [problem], [0])),
        budget=budget,
        progress=False,
        heartbeat=1.0,
        stale_after=60.0,
    )


def _trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)


def test_an_interrupted_search_resumes_without_losing_or_repeating_a_trial(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # tiny: 3 trials of 2 epochs. Ctrl-C in the first epoch of the second trial.
    config = _config(sqlite_url, "random", "linear", "tiny")
    name = config.jobs[0].study_name()
    original = RunContext._add
    calls = []

    def interrupting(self: RunContext, event: object) -> None:
        calls.append(event)
        if len(calls) == 3:
            raise KeyboardInterrupt
        original(self, event)  # type: ignore[arg-type]

    monkeypatch.setattr(RunContext, "_add", interrupting)
    with pytest.raises(KeyboardInterrupt):
        work(config)
    monkeypatch.setattr(RunContext, "_add", original)
    trials = _trials(sqlite_url, name)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL]
    assert trials[1].user_attrs[INTERRUPTED_ATTR] is True
    assert load_summaries(sqlite_url) == []

    report = work(config)  # the released job is claimed again at once
    assert report.ran == [name]
    trials = _trials(sqlite_url, name)
    states = [t.state for t in trials]
    assert states == [
        TrialState.COMPLETE,
        TrialState.FAIL,
        TrialState.COMPLETE,
        TrialState.COMPLETE,
    ]
    # The interrupted configuration is run again (not skipped), and only once.
    assert trials[2].params == trials[1].params
    assert trials[3].params != trials[0].params  # the resumed sampler does not start over
    (summary,) = load_summaries(sqlite_url)
    assert summary["sessions"] == 2
    assert summary["trials"] == 3 and summary["epochs_spent"] == 6  # the failed epoch not counted


_KILLED_WORKER = """
import os, signal, sys
from benchmarks.context import RunContext
from benchmarks.runner import make_jobs, RunConfig, work

original, calls = RunContext._add, []

def add(self, event):
    calls.append(event)
    if len(calls) == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)  # dies mid-trial, leaving it RUNNING
    original(self, event)

RunContext._add = add
jobs = tuple(make_jobs(["random"], ["linear"], [0]))
work(RunConfig(storage=sys.argv[1], jobs=jobs, budget="tiny", progress=False, heartbeat=1.0))
"""


@pytest.mark.slow
def test_a_killed_worker_s_job_is_taken_over_and_finished(sqlite_url: str) -> None:
    # tiny: 3 trials of 2 epochs; the worker is killed in the first epoch of the second.
    config = _config(sqlite_url, "random", "linear", "tiny")
    name = config.jobs[0].study_name()
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_WORKER, sqlite_url, "3"], env=env, capture_output=True
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    trials = _trials(sqlite_url, name)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.RUNNING]

    # Same host, its process gone: the job is stale at once, not after `stale_after`.
    report = work(config)
    assert report.ran == [name]
    trials = _trials(sqlite_url, name)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL] + 2 * [
        TrialState.COMPLETE
    ]
    assert trials[1].user_attrs[INTERRUPTED_ATTR] is True
    assert trials[2].params == trials[1].params  # the killed trial is run again, once
    (summary,) = load_summaries(sqlite_url)
    assert summary["sessions"] == 2 and summary["epochs_spent"] == 6 and summary["trials"] == 3
    names = {s.study_name for s in optuna.storages.RDBStorage(sqlite_url).get_all_studies()}
    assert names == {name}  # the take-over's lease study is gone once the job is finished
