"""PBT with several worker processes on one database, and resuming after a kill.

The workers are real processes (``python -m tests.pbt_tests._worker``) sharing the storage and
a file-system artifact store. The storage has heartbeats (1 s, grace 2 s), so a killed
worker's RUNNING segment becomes stale and is run again.
"""

from __future__ import annotations

from collections import Counter
import os
from pathlib import Path
import signal
import subprocess
import sys
import time

import optuna
from optuna.trial import FrozenTrial
from optuna.trial import TrialState
import pytest

from optuna_ext.samplers._pbt._population import DECISION_KEY
from optuna_ext.samplers._pbt._population import GENERATION_KEY
from optuna_ext.samplers._pbt._population import is_member_trial
from optuna_ext.samplers._pbt._population import MEMBER_KEY
from tests.pbt_tests._worker import POPULATION_SIZE


optuna.logging.set_verbosity(optuna.logging.ERROR)

_ROOT = Path(__file__).resolve().parents[2]
_STUDY = "pbt-workers"


def _create(url: str) -> None:
    # Create the tables and the study here, so that the workers only load it.
    optuna.create_study(storage=url, study_name=_STUDY, direction="maximize")


def _start(
    url: str, artifacts: Path, n_generations: int, seconds: float, retry: bool = False
) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.pbt_tests._worker",
            url,
            _STUDY,
            str(artifacts),
            str(n_generations),
            str(seconds),
            "retry" if retry else "-",
        ],
        cwd=_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process: subprocess.Popen[str], timeout: float = 120) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return output


def _trials(url: str) -> list[FrozenTrial]:
    storage = optuna.storages.RDBStorage(url)
    study = optuna.load_study(study_name=_STUDY, storage=storage)
    return study.get_trials(deepcopy=False)


def _slot(trial: FrozenTrial) -> tuple[int, int]:
    return int(trial.system_attrs[GENERATION_KEY]), int(trial.system_attrs[MEMBER_KEY])


def _check_population(trials: list[FrozenTrial], n_generations: int) -> list[FrozenTrial]:
    """Each generation has exactly one COMPLETE trial per member, chained by checkpoints."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and is_member_trial(t)]
    counts = Counter(_slot(t) for t in complete)
    assert all(n == 1 for n in counts.values()), counts
    assert set(counts) == {(g, m) for g in range(n_generations) for m in range(POPULATION_SIZE)}
    for t in complete:
        # The worker counts segments in the checkpoint: g + 1 means an unbroken chain.
        assert t.user_attrs["steps"] == _slot(t)[0] + 1
    # No member trial is left waiting or running.
    assert not [t for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)]
    return complete


@pytest.mark.postgres
@pytest.mark.slow
def test_two_workers_on_postgres_keep_the_population(postgres_url: str, tmp_path: Path) -> None:
    n_generations = 4
    _create(postgres_url)
    workers = [_start(postgres_url, tmp_path, n_generations, 0.15) for _ in range(2)]
    outputs = [_finish(w) for w in workers]
    complete = _check_population(_trials(postgres_url), n_generations)
    # Both workers trained segments.
    assert len({t.user_attrs["pid"] for t in complete}) == 2, outputs


def _kill_and_resume(url: str, tmp_path: Path, retry: bool) -> None:
    n_generations = 4
    _create(url)
    worker = _start(url, tmp_path, n_generations, 0.3, retry)

    def ready() -> bool:
        trials = _trials(url)
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        # A segment that has started training (its checkpoint has been loaded).
        running = [
            t
            for t in trials
            if t.state == TrialState.RUNNING and "pbt:restored_from" in t.user_attrs
        ]
        return len(done) >= 6 and bool(running)

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and worker.poll() is None:
        if ready():
            # Freeze the worker and look again: the segment may have ended in between.
            worker.send_signal(signal.SIGSTOP)
            if ready():
                break
            worker.send_signal(signal.SIGCONT)
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    before = {t.number: t for t in _trials(url) if t.state == TrialState.COMPLETE}
    killed = [t for t in _trials(url) if t.state == TrialState.RUNNING]
    assert len(before) >= 6 and killed
    # Let the killed worker's heartbeat go stale, then resume with a fresh worker.
    time.sleep(2.5)
    _finish(_start(url, tmp_path, n_generations, 0.0, retry))
    trials = _trials(url)
    complete = _check_population(trials, n_generations)
    by_number = {t.number: t for t in trials}
    # No finished segment was lost or run again.
    for number, t in before.items():
        assert by_number[number].state == TrialState.COMPLETE
        assert by_number[number].value == t.value
    assert {t.number for t in complete} >= set(before)
    # The killed segment failed as stale and its slot was run again with the same decision.
    for t in killed:
        assert by_number[t.number].state == TrialState.FAIL
        rerun = next(c for c in complete if _slot(c) == _slot(t))
        assert rerun.number > t.number
        assert rerun.system_attrs[DECISION_KEY] == t.system_attrs[DECISION_KEY]


@pytest.mark.slow
def test_kill_and_resume_on_sqlite(sqlite_url: str, tmp_path: Path) -> None:
    _kill_and_resume(sqlite_url, tmp_path, retry=False)


@pytest.mark.postgres
@pytest.mark.slow
def test_kill_and_resume_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    # With Optuna's retry callback as well: it re-enqueues the stale trial while the harness
    # materializes the lost slot again; only one of the two may run.
    _kill_and_resume(postgres_url, tmp_path, retry=True)
