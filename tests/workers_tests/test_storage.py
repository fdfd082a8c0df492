"""Storage writes that several workers make at once: the retry on write conflicts (optuna#6065),
and one figure that every worker rewrites.

(Opening an empty database at once is what the workers of every backend's run do first: plain
``optuna.create_study(storage=url)`` fails there on PostgreSQL in all but one of them, with a
duplicate "studydirection" type while creating the tables;
:func:`optuna_ext._storage.open_storage` opens again once the tables exist.)
"""

from __future__ import annotations

from collections.abc import Callable
import json

import optuna
import pymysql
import pytest
import sqlalchemy.exc

from optuna_ext._storage import is_write_conflict
from optuna_ext._storage import retry_on_write_conflict
from tests.workers_tests._checks import check_workers
from tests.workers_tests._run import WorkerRun
from tests.workers_tests._worker import FIGURE_POINTS
from tests.workers_tests.conftest import BACKENDS


def _conflict(orig: BaseException) -> optuna.exceptions.StorageInternalError:
    """A driver error as Optuna raises it: StorageInternalError from SQLAlchemy's wrapper."""
    wrapped = sqlalchemy.exc.OperationalError("UPDATE ...", {}, orig)
    try:
        raise optuna.exceptions.StorageInternalError("An exception is raised") from wrapped
    except optuna.exceptions.StorageInternalError as e:
        return e


class _PostgresError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"error {sqlstate}")
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    "orig",
    [
        pymysql.err.OperationalError(1020, "Record has changed since last read in table 'x'"),
        pymysql.err.OperationalError(1213, "Deadlock found when trying to get lock"),
        pymysql.err.OperationalError(1205, "Lock wait timeout exceeded"),
        _PostgresError("40001"),
        _PostgresError("40P01"),
        Exception("database is locked"),
    ],
)
def test_write_conflicts_are_recognized_through_optunas_wrapper(orig: BaseException) -> None:
    assert is_write_conflict(_conflict(orig))


@pytest.mark.parametrize(
    "orig",
    [
        pymysql.err.OperationalError(2003, "Can't connect to MySQL server"),
        pymysql.err.IntegrityError(1062, "Duplicate entry"),
        _PostgresError("23505"),
        Exception("no such table: studies"),
    ],
)
def test_other_database_errors_are_not_conflicts(orig: BaseException) -> None:
    assert not is_write_conflict(_conflict(orig))
    assert not is_write_conflict(ValueError("x"))


def test_a_conflicting_write_is_tried_again_until_it_succeeds() -> None:
    calls: list[int] = []

    def write() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise _conflict(pymysql.err.OperationalError(1020, "Record has changed"))
        return "done"

    assert retry_on_write_conflict(write, what="x", first_delay=0.0) == "done"
    assert len(calls) == 3


def test_other_errors_and_the_last_conflict_are_raised() -> None:
    def broken() -> None:
        raise _conflict(pymysql.err.OperationalError(2003, "Can't connect"))

    with pytest.raises(optuna.exceptions.StorageInternalError):
        retry_on_write_conflict(broken, what="x", first_delay=0.0)
    calls: list[int] = []

    def always() -> None:
        calls.append(1)
        raise _conflict(pymysql.err.OperationalError(1213, "Deadlock"))

    with pytest.raises(optuna.exceptions.StorageInternalError):
        retry_on_write_conflict(always, what="x", attempts=4, first_delay=0.0)
    assert len(calls) == 4
    with pytest.raises(ValueError, match="`attempts >= 1`"):
        retry_on_write_conflict(always, what="x", attempts=0)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_four_workers_rewriting_one_figure_leave_it_readable(
    worker_runs: Callable[[str], WorkerRun], backend: str
) -> None:
    # Each worker saves its own figure 20 times; on MariaDB the workers have snapshot
    # isolation on (MariaDB 11.6.2's default), under which concurrent updates of one row fail
    # with optuna#6065's "Record has changed since last read" unless they are retried.
    run = worker_runs(backend)
    check_workers(run, "figures")
    for report in run.method_reports("figures"):
        assert all(report["saved"]), report["saved"]
    attrs = run.study_system_attrs["workers-figures"]
    prefix = "dashboard:plot_data:shared:"
    chunks = {k: v for k, v in attrs.items() if k.startswith(prefix)}
    stored = json.loads("".join(chunks[f"{prefix}{i}"] for i in range(len(chunks))))
    # Some worker's whole figure, not a mix of two.
    (trace,) = stored["data"]
    worker = int(trace["name"].split()[-1])
    assert trace["x"] == [float(i) for i in range(FIGURE_POINTS[worker])]
