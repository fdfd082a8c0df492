"""A PostgreSQL server that goes away mid-run, and passwords in storage URLs.

The server is a private cluster (``tests/_private_postgres.py``) with password
authentication, stopped and started by the tests; the shared server on port 5432 is never
touched. What is checked: the run fails loudly (a storage error out of ``study.optimize``; one
``optuna-ext: error:`` line from the CLI), the URL's password appears in no error, traceback,
log record or output, every trial told before the stop is still there after the restart, and
the study resumes to the result of an uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Iterator
import logging
import os
import subprocess
import sys
import threading
import time
import traceback
from typing import Any

import optuna
from optuna.trial import TrialState
import pytest
import sqlalchemy

from optuna_ext._storage import describe_storage_failure
from optuna_ext._storage import find_storage_error
from optuna_ext._storage import open_storage
from optuna_ext._storage import StorageError
from optuna_ext.metrics import KNOWLEDGE_GAIN_Z_KEY
from optuna_ext.samplers import AutoHyperSampler
from optuna_ext.samplers._autohyper._search import AutoHyperSearch
from optuna_ext.samplers._autohyper._search import simulate
from tests._private_postgres import PASSWORD
from tests._private_postgres import private_pg  # noqa: F401 (a fixture)
from tests._private_postgres import PrivatePostgres
from tests.samplers_tests.autohyper_tests._synthetic import knee_z
from tests.samplers_tests.autohyper_tests._synthetic import make_objective


pytestmark = pytest.mark.postgres


@pytest.fixture
def pg(private_pg: PrivatePostgres) -> Iterator[PrivatePostgres]:  # noqa: F811
    """The module's private cluster, running, with a fresh database for each test."""
    if not private_pg.running:
        private_pg.start()
    private_pg.use_fresh_database()
    yield private_pg
    if not private_pg.running:
        private_pg.start()


@pytest.fixture
def thread_errors(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Tracebacks of exceptions that end threads (Optuna's heartbeat thread, when the server
    is down), collected instead of printed."""
    collected: list[str] = []

    def hook(args: threading.ExceptHookArgs) -> None:
        collected.append(
            "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))
        )

    monkeypatch.setattr(threading, "excepthook", hook)
    return collected


def _told(study: optuna.Study) -> list[tuple[int, TrialState, dict[str, Any], Any, Any]]:
    return [
        (t.number, t.state, t.params, t.value, t.user_attrs.get(KNOWLEDGE_GAIN_Z_KEY))
        for t in study.get_trials(deepcopy=False)
        if t.state.is_finished()
    ]


@pytest.mark.slow
def test_server_stopped_mid_run_fails_loudly_keeps_what_was_told_and_resumes(
    pg: PrivatePostgres,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    thread_errors: list[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    # Heartbeats, so that the trial the outage leaves RUNNING is failed (and its grid point
    # re-assigned) by the resumed run: the documented set-up for resuming after a crash.
    storage = open_storage(pg.url, heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(
        storage=storage,
        study_name="outage",
        direction="maximize",
        sampler=AutoHyperSampler(seed=0, save_plot=False),
    )
    objective = make_objective()
    stop_at = 6

    def stopping_objective(trial: optuna.Trial) -> float:
        value = objective(trial)  # writes Z to the trial's user attrs
        if trial.number == stop_at:
            pg.stop()  # the server goes away before this trial is told
        return value

    with pytest.raises(Exception) as info:
        study.optimize(stopping_objective, n_trials=500)
    # Loud: a database error out of optimize (not a silent stop, not a wrong result). Optuna
    # 5.0 may raise it as the context of an UnboundLocalError (optuna#5280).
    error = find_storage_error(info.value)
    assert isinstance(error, sqlalchemy.exc.OperationalError), repr(info.value)
    shown = "".join(traceback.format_exception(info.value))
    assert "connect" in shown.lower() or "terminat" in shown.lower(), shown[-2000:]
    line = describe_storage_failure(info.value, pg.url)
    assert f"'postgresql+psycopg://postgres:***@127.0.0.1:{pg.port}/{pg.database}' failed" in line
    assert "OperationalError" in line and "\n" not in line and "[SQL:" not in line
    out, err = capsys.readouterr()
    for text in (shown, caplog.text, out, err, *thread_errors):
        assert PASSWORD not in text

    pg.start()
    # The same storage object works again (the pool pings its connections before use).
    resumed = optuna.load_study(
        study_name="outage", storage=storage, sampler=AutoHyperSampler(seed=0, save_plot=False)
    )
    before = _told(resumed)
    assert [t[0] for t in before] == list(range(stop_at))
    assert all(state == TrialState.COMPLETE for _, state, _, _, _ in before)
    assert all(z == knee_z(params["lr"]) for _, _, params, _, z in before)
    interrupted = resumed.trials[stop_at]
    assert interrupted.state == TrialState.RUNNING  # never told: the server was down

    time.sleep(2.5)  # past the grace period: the next trial fails the interrupted one
    resumed.optimize(objective, n_trials=500)
    after = resumed.trials
    assert _told(resumed)[:stop_at] == before  # nothing told before the stop was lost
    assert after[stop_at].state == TrialState.FAIL
    # The sampler re-evaluated the interrupted point and reached the uninterrupted answer.
    expected = simulate(AutoHyperSearch(lower_bound=1e-6, upper_bound=1.0), knee_z)
    evaluated = [t.params["lr"] for t in after if t.state == TrialState.COMPLETE]
    assert evaluated == [e.lr for e in expected.evaluations]
    assert AutoHyperSampler.best_lr(resumed) == expected.lr
    # A fresh process (a new storage) sees the same.
    fresh = optuna.load_study(study_name="outage", storage=pg.url)
    assert _told(fresh) == _told(resumed)
    for text in (caplog.text, *capsys.readouterr(), *thread_errors):
        assert PASSWORD not in text


def test_restart_between_trials_is_survived(pg: PrivatePostgres) -> None:
    storage = open_storage(pg.url)
    study = optuna.create_study(storage=storage, study_name="restart")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    pg.stop()
    pg.start()
    # Every pooled connection died with the server; the pre-ping replaces them.
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4


def test_server_down_at_open_is_a_storage_error_without_password(pg: PrivatePostgres) -> None:
    pg.stop()
    with pytest.raises(StorageError) as info:
        open_storage(pg.url)
    message = str(info.value)
    assert PASSWORD not in message
    assert f"postgres:***@127.0.0.1:{pg.port}/{pg.database}" in message


def test_wrong_password_is_a_storage_error_without_either_password(pg: PrivatePostgres) -> None:
    wrong = pg.url.replace(PASSWORD, "not-the-Pw-9264")
    with pytest.raises(StorageError, match="password authentication failed") as info:
        open_storage(wrong)
    assert PASSWORD not in str(info.value) and "not-the-Pw-9264" not in str(info.value)


def _cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "optuna_ext.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


@pytest.mark.slow
def test_cli_demo_with_the_server_stopped_mid_run(pg: PrivatePostgres, tmp_path) -> None:
    argv = ["demo", "--methods", "tpe", "--budget", "tiny", "--no-progress"]
    argv += ["--storage", pg.url, "--artifact-dir", str(tmp_path / "artifacts")]
    watcher = sqlalchemy.create_engine(pg.url, poolclass=sqlalchemy.pool.NullPool)
    count = sqlalchemy.text("SELECT count(*) FROM trials WHERE state = 'COMPLETE'")

    proc = _cli(*argv)
    deadline = time.monotonic() + 240
    told = 0
    while told == 0 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            with watcher.connect() as conn:
                told = int(conn.execute(count).scalar_one())
        except sqlalchemy.exc.ProgrammingError:
            continue  # the tables do not exist yet
    assert proc.poll() is None, "the demo ended before the server could be stopped"
    pg.stop()  # mid-run: the second trial is training
    out, err = proc.communicate(timeout=240)
    watcher.dispose()

    assert proc.returncode == 1, err[-3000:]
    assert PASSWORD not in out + err
    last = err.strip().splitlines()[-1]
    assert last.startswith("optuna-ext: error: The storage 'postgresql+psycopg://postgres:***@")
    assert "Run the same command again to resume." in last

    pg.start()
    study = optuna.load_study(study_name="demo-tpe", storage=pg.url)
    kept = [(t.number, t.params, t.value) for t in study.trials if t.state.is_finished()]
    assert len(kept) >= 1
    proc = _cli(*argv)
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-3000:]
    assert PASSWORD not in out + err
    assert "postgres:***@" in out  # the summary and the dashboard command show it masked
    assert "shown without its password" in out
    study = optuna.load_study(study_name="demo-tpe", storage=pg.url)
    again = {t.number: (t.number, t.params, t.value) for t in study.trials}
    assert all(again[row[0]] == row for row in kept)  # nothing told before the stop was lost
    done = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) >= 3  # the budget of the tiny demo was reached on resume
