"""Shared fixtures: real database servers for the storage tests.

The PostgreSQL and MySQL tests read a server URL from an environment variable
(``OPTUNA_EXT_TEST_POSTGRES_URL``, ``OPTUNA_EXT_TEST_MYSQL_URL``); unset, they use the local
servers of a development machine (see the defaults below). Each test gets a fresh database on
that server, dropped afterwards. Outside CI a server that does not answer skips the test; in CI
(``CI=true``) it fails it, so that CI never passes by skipping the storage tests.

Hypothesis runs with its ``ci`` profile under ``CI=true``: derandomized (the same examples
every run, so that a CI failure is reproducible and CI is not red by the luck of a draw) and
without a deadline (the machine is shared). Locally it keeps drawing new examples, which is
where new failures are found; ``--hypothesis-profile=ci`` reproduces CI's draws.
"""

from __future__ import annotations

from collections.abc import Iterator
import os
import uuid

from hypothesis import settings
import pytest
import sqlalchemy


POSTGRES_URL_ENV = "OPTUNA_EXT_TEST_POSTGRES_URL"
MYSQL_URL_ENV = "OPTUNA_EXT_TEST_MYSQL_URL"
DEFAULT_URLS = {
    POSTGRES_URL_ENV: "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
    MYSQL_URL_ENV: "mysql+pymysql://root@127.0.0.1:3306/test",
}


settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


settings.load_profile("ci" if _in_ci() else "dev")


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Run each test on one torch thread, restoring the thread count afterwards.

    The test models are tiny, so one thread is about as fast as two on a quiet machine, while on
    a busy one (pytest-xdist workers, other jobs) two OpenMP threads can be 10-100 times slower.
    """
    import torch

    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n_threads)


def _missing(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"{reason} (CI=true: storage tests must run, not skip)")
    pytest.skip(reason)


def _fresh_database(env: str, create: str, drop: str) -> Iterator[str]:
    base = os.environ.get(env) or DEFAULT_URLS[env]
    url = sqlalchemy.engine.make_url(base)
    name = f"optuna_ext_{uuid.uuid4().hex[:12]}"
    try:
        admin = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(create.format(name=name)))
    except (sqlalchemy.exc.OperationalError, ModuleNotFoundError) as e:
        _missing(f"cannot reach the server of {env} ({url.render_as_string()}): {e}")
        return
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(drop.format(name=name)))
        admin.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """The URL of a fresh, empty PostgreSQL database."""
    yield from _fresh_database(
        POSTGRES_URL_ENV, 'CREATE DATABASE "{name}"', 'DROP DATABASE "{name}" WITH (FORCE)'
    )


@pytest.fixture
def mysql_url() -> Iterator[str]:
    """The URL of a fresh, empty MySQL/MariaDB database."""
    yield from _fresh_database(
        MYSQL_URL_ENV, "CREATE DATABASE `{name}`", "DROP DATABASE IF EXISTS `{name}`"
    )


@pytest.fixture
def sqlite_url(tmp_path: os.PathLike[str]) -> str:
    """The URL of a fresh SQLite file in the test's temporary directory."""
    return f"sqlite:///{os.path.join(os.fspath(tmp_path), 'optuna-ext-test.db')}"
