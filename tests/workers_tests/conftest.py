"""One run of four worker processes per storage backend, shared by the tests of every method.

Starting a worker costs seconds (it imports torch and optuna-dashboard), so each backend runs
its four workers once, through every method in turn (``_worker.py``), and the tests of each
method check what its study holds afterwards. Under pytest-xdist the run is shared between
the xdist workers through a lock file, so it happens once per backend and test session.

Backends:

- ``postgres``: a fresh database on the PostgreSQL server of the tests (``postgres_url``).
- ``mysql``: a fresh database on the MySQL/MariaDB server. On a MariaDB that has the setting
  (10.6.18 and later), every connection turns ``innodb_snapshot_isolation`` on, the default
  of MariaDB 11.6.2 and later, under which concurrent updates of one row fail with "Record
  has changed since last read" (optuna#6065).
- ``journal``: Optuna's :class:`~optuna.storages.JournalStorage` on a
  :class:`~optuna.storages.journal.JournalFileBackend` log file.

The RDB storages have Optuna's heartbeat (1 s, grace period 10 s), as the README recommends
for many workers (with a longer interval).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Generator
import fcntl
import os
from pathlib import Path
import pickle
from typing import Any

import pytest
import sqlalchemy

from tests.conftest import _fresh_database
from tests.conftest import MYSQL_URL_ENV
from tests.conftest import POSTGRES_URL_ENV
from tests.workers_tests._run import run_workers
from tests.workers_tests._run import WorkerRun


BACKENDS = (
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("mysql", marks=pytest.mark.mysql),
    "journal",
)
METHODS = (
    "autohyper",
    "hyperdyn",
    "pbt",
    "pbt-optimize",
    "morl",
    "morl-hyperband",
    "synchronous",
    "figures",
)
HEARTBEAT = [1, 10]


def _postgres() -> Generator[str, None, None]:
    return _fresh_database(  # type: ignore[return-value]
        POSTGRES_URL_ENV, 'CREATE DATABASE "{name}"', 'DROP DATABASE "{name}" WITH (FORCE)'
    )


def _mysql() -> Generator[str, None, None]:
    return _fresh_database(  # type: ignore[return-value]
        MYSQL_URL_ENV, "CREATE DATABASE `{name}`", "DROP DATABASE IF EXISTS `{name}`"
    )


def mariadb_snapshot_isolation(url: str) -> bool:
    """Whether the MySQL server at ``url`` is a MariaDB with ``innodb_snapshot_isolation``."""
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sqlalchemy.text("SHOW VARIABLES LIKE 'innodb_snapshot_isolation'")
            ).all()
    finally:
        engine.dispose()
    return len(rows) == 1


def _run_backend(backend: str, workdir: Path) -> WorkerRun:
    workdir.mkdir(parents=True, exist_ok=True)
    if backend == "journal":
        spec: dict[str, Any] = {"kind": "journal", "path": str(workdir / "journal.log")}
        return run_workers(backend, spec, METHODS, workdir)
    databases = _postgres() if backend == "postgres" else _mysql()
    url = next(databases)
    try:
        spec = {"kind": "rdb", "url": url, "heartbeat": HEARTBEAT}
        notes: dict[str, Any] = {}
        if backend == "mysql":
            notes["snapshot_isolation"] = mariadb_snapshot_isolation(url)
            if notes["snapshot_isolation"]:
                init = "SET SESSION innodb_snapshot_isolation=ON"
                spec["engine_kwargs"] = {"connect_args": {"init_command": init}}
        return run_workers(backend, spec, METHODS, workdir, notes=notes)
    finally:
        databases.close()  # drops the database


def _shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run_id:
        # Every xdist worker of this session sees the same directory.
        root = tmp_path_factory.getbasetemp().parent / f"many-workers-{run_id}"
    else:
        root = tmp_path_factory.getbasetemp() / "many-workers"
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture(scope="session")
def worker_runs(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], WorkerRun]:
    """``worker_runs(backend)``: the run of four workers on ``backend``, made on first use."""
    root = _shared_root(tmp_path_factory)
    cache: dict[str, WorkerRun] = {}

    def get(backend: str) -> WorkerRun:
        if backend in cache:
            return cache[backend]
        result = root / f"{backend}.pickle"
        with open(root / f"{backend}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if result.exists():
                run = pickle.loads(result.read_bytes())
            else:
                run = _run_backend(backend, root / backend)
                result.write_bytes(pickle.dumps(run))
        cache[backend] = run
        return run

    return get
