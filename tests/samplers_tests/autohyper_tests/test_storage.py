"""AutoHyperSampler across processes: resume from SQLite/PostgreSQL, and two workers.

Each run of the synthetic objective happens in a separate Python process
(``_synthetic.py``'s ``main``), so nothing but the storage connects them.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
import subprocess
import sys

import optuna
from optuna.trial import TrialState
import pytest

from optuna_ext.samplers import AutoHyperSampler
from optuna_ext.samplers._autohyper import sampler as sampler_module
from optuna_ext.samplers._autohyper._search import AutoHyperSearch
from optuna_ext.samplers._autohyper._search import replay
from optuna_ext.samplers._autohyper._search import simulate
from optuna_ext.samplers._autohyper.sampler import _Book
from optuna_ext.samplers._autohyper.sampler import _POINT_KEY
from tests.samplers_tests.autohyper_tests._synthetic import knee_z
from tests.samplers_tests.autohyper_tests._synthetic import make_objective


optuna.logging.set_verbosity(optuna.logging.WARNING)

ROOT = Path(__file__).resolve().parents[3]
SINGLE = simulate(AutoHyperSearch(lower_bound=1e-6, upper_bound=1.0), knee_z)


def start_worker(storage: str, study: str, n_trials: int, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.samplers_tests.autohyper_tests._synthetic",
            storage,
            study,
            str(n_trials),
            *args,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_worker(storage: str, study: str, n_trials: int, *args: str) -> None:
    proc = start_worker(storage, study, n_trials, *args)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err


def span(trial: optuna.trial.FrozenTrial) -> tuple[datetime.datetime, datetime.datetime]:
    assert trial.datetime_start is not None and trial.datetime_complete is not None
    return trial.datetime_start, trial.datetime_complete


def uninterrupted() -> optuna.Study:
    study = optuna.create_study(sampler=AutoHyperSampler(), direction="maximize")
    study.optimize(make_objective(), n_trials=500)
    return study


def check_resumed(storage: str, split: int) -> None:
    reference = uninterrupted()
    run_worker(storage, "resnet-adam", split)
    partial = optuna.load_study(study_name="resnet-adam", storage=storage)
    assert len(partial.trials) == split
    assert AutoHyperSampler.best_lr(partial) is None
    run_worker(storage, "resnet-adam", 500)
    # Read back in this (third) process, with no sampler instance.
    study = optuna.load_study(study_name="resnet-adam", storage=storage)
    assert [t.params["lr"] for t in study.trials] == [t.params["lr"] for t in reference.trials]
    best = AutoHyperSampler.best_lr(study)
    assert best is not None and best == AutoHyperSampler.best_lr(reference) == SINGLE.lr
    assert study.user_attrs["autohyper:best_lr"] == best
    assert AutoHyperSampler.result(study) == AutoHyperSampler.result(reference)


def test_resume_in_a_new_process_sqlite(sqlite_url: str) -> None:
    check_resumed(sqlite_url, split=13)


@pytest.mark.postgres
def test_resume_in_a_new_process_postgres(postgres_url: str) -> None:
    check_resumed(postgres_url, split=21)


def test_a_fresh_process_gives_the_same_sequence(sqlite_url: str) -> None:
    run_worker(sqlite_url, "seeded", 8, "--seed", "11")
    stored = optuna.load_study(study_name="seeded", storage=sqlite_url)
    here = optuna.create_study(sampler=AutoHyperSampler(seed=11), direction="maximize")
    here.optimize(make_objective(), n_trials=8)
    assert [t.params for t in stored.trials] == [t.params for t in here.trials]


@pytest.mark.postgres
def test_two_workers_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    optuna.create_study(storage=postgres_url, study_name="shared", direction="maximize")
    barrier = ["--barrier", str(tmp_path), "--n-workers", "2"]
    workers = [
        start_worker(postgres_url, "shared", 500, "--sleep", "0.05", "--worker", name, *barrier)
        for name in ("a", "b")
    ]
    for proc in workers:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) < 500  # both workers were stopped at convergence
    assert {t.user_attrs["worker"] for t in trials} == {"a", "b"}, [
        (t.number, t.user_attrs["worker"], t.state.name) for t in trials
    ]
    # The workers really ran at the same time.
    a = [t for t in trials if t.user_attrs["worker"] == "a"]
    b = [t for t in trials if t.user_attrs["worker"] == "b"]
    spans_a, spans_b = [span(t) for t in a], [span(t) for t in b]
    assert any(s0 < t1 and t0 < s1 for s0, s1 in spans_a for t0, t1 in spans_b)
    # No grid point was evaluated twice in one pass.
    done = [
        (t.system_attrs[_POINT_KEY]["pass"], t.system_attrs[_POINT_KEY]["index"])
        for t in trials
        if t.state == TrialState.COMPLETE and t.system_attrs[_POINT_KEY]["index"] is not None
    ]
    assert len(done) == len(set(done)), done
    # The decisions are those of one worker.
    stored = sampler_module._load_stored(study)
    assert stored is not None
    state = replay(stored[2], _Book.read(trials, stored[1]).attempts)
    assert state.evaluations == SINGLE.evaluations
    assert state.events == SINGLE.events
    assert AutoHyperSampler.best_lr(study) == SINGLE.lr
