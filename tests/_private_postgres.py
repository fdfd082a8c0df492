"""A private PostgreSQL cluster that a test may stop and start (never the shared server).

The shared server on 127.0.0.1:5432 serves every test and every developer on the machine, so
a test that needs a server to go away starts its own: ``initdb`` in a fresh temporary
directory, ``pg_ctl start`` on a free port of 127.0.0.1 with its socket in that directory,
password authentication (scram-sha-256) so that storage URLs carry a password. As root, the
PostgreSQL programs run as the ``postgres`` user (``runuser -u postgres --``), which owns the
directory. Where the programs are missing or the cluster cannot start, the test is skipped
with the reason, and fails under ``CI=true`` (as the shared-server fixtures do).
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import dataclasses
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid

import pytest
import sqlalchemy

from tests.conftest import _missing


PASSWORD = "s3cret-Pw-7731"
"""The password of the cluster's ``postgres`` user (the tests check it never leaks)."""


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bindir() -> str | None:
    for initdb in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True):
        return os.path.dirname(initdb)
    found = shutil.which("initdb")
    return os.path.dirname(found) if found else None


@dataclasses.dataclass
class PrivatePostgres:
    """A running private cluster; :meth:`stop` and :meth:`start` take it down and up."""

    bindir: str
    directory: str
    port: int
    as_postgres: list[str]
    running: bool = False
    database: str = "postgres"

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the current database (:attr:`database`), password included."""
        return f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:{self.port}/{self.database}"

    def use_fresh_database(self) -> str:
        """Create an empty database, make it the current one, and return its URL."""
        self.database = "postgres"
        name = f"optuna_ext_{uuid.uuid4().hex[:12]}"
        engine = sqlalchemy.create_engine(
            self.url, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool
        )
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        self.database = name
        return self.url

    def _pg_ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [*self.as_postgres, os.path.join(self.bindir, "pg_ctl"), "-D"]
        command += [os.path.join(self.directory, "data"), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off -c synchronous_commit=off"
        )
        log = os.path.join(self.directory, "server.log")
        proc = self._pg_ctl("-o", options, "-l", log, "-w", "-t", "60", "start")
        if proc.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {proc.stdout} {proc.stderr}")
        self.running = True

    def stop(self) -> None:
        """Stop the server as an administrator would (``-m fast``: clients are disconnected)."""
        proc = self._pg_ctl("-m", "fast", "-w", "-t", "60", "stop")
        if proc.returncode != 0:
            raise RuntimeError(f"pg_ctl stop failed: {proc.stdout} {proc.stderr}")
        self.running = False


def private_postgres() -> Iterator[PrivatePostgres]:
    """Create, start, yield and finally remove a private cluster (the body of a fixture)."""
    bindir = _bindir()
    if bindir is None or not os.path.exists(os.path.join(bindir, "pg_ctl")):
        _missing("no PostgreSQL server programs (initdb, pg_ctl) on this machine")
        return
    as_postgres: list[str] = []
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        if runuser is None:
            _missing("running as root without runuser: cannot start PostgreSQL as `postgres`")
            return
        as_postgres = [runuser, "-u", "postgres", "--"]
    directory = tempfile.mkdtemp(prefix="optuna-ext-pg-")
    try:
        if as_postgres:
            shutil.chown(directory, user="postgres")
        pwfile = os.path.join(directory, "pwfile")
        with open(pwfile, "w") as f:
            f.write(PASSWORD + "\n")
        if as_postgres:
            shutil.chown(pwfile, user="postgres")
        initdb = [*as_postgres, os.path.join(bindir, "initdb"), "-D"]
        initdb += [os.path.join(directory, "data"), "-U", "postgres", f"--pwfile={pwfile}"]
        initdb += ["-A", "scram-sha-256", "-E", "UTF8", "--no-sync"]
        proc = subprocess.run(initdb, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            _missing(f"initdb of a private PostgreSQL cluster failed: {proc.stderr.strip()}")
            return
        cluster = PrivatePostgres(bindir, directory, _free_port(), as_postgres)
        for attempt in range(3):  # another process may take the free port first
            try:
                cluster.start()
                break
            except RuntimeError as e:
                if attempt == 2:
                    _missing(f"a private PostgreSQL cluster did not start: {e}")
                    return
                cluster.port = _free_port()
        try:
            yield cluster
        finally:
            if cluster.running:
                cluster.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    """A private PostgreSQL cluster for the tests of one module (started; restart it if you
    stop it)."""
    yield from private_postgres()
