"""Opening storages by URL with errors a user can act on.

Everything in optuna-ext persists to an Optuna storage given as an SQLAlchemy URL. These helpers
turn the failures a user meets first (a typo in the URL, a server that is down, a study of the
same name that optimizes the other way) into one-line :class:`StorageError` messages in which a
password never appears.
"""

from __future__ import annotations

from collections.abc import Callable
import functools
import importlib.util
import json
import logging
import random
import re
import time
from typing import TYPE_CHECKING
from typing import TypeVar

import optuna
import sqlalchemy
import sqlalchemy.exc


if TYPE_CHECKING:
    from optuna.pruners import BasePruner
    from optuna.samplers import BaseSampler
    from optuna.storages import BaseStorage
    from optuna.storages._heartbeat import BaseHeartbeatThread
    from optuna.study import StudyDirection
    import plotly.graph_objects as go


DEFAULT_DEMO_STORAGE = "sqlite:///optuna-ext-demo.db"

_logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# Errors of concurrent writers that the same transaction, tried again, gets past.
_MYSQL_CONFLICT_CODES = frozenset(
    {
        1020,  # "Record has changed since last read" (MariaDB >= 11.6.2's snapshot isolation)
        1205,  # "Lock wait timeout exceeded"
        1213,  # "Deadlock found when trying to get lock"
    }
)
_POSTGRES_CONFLICT_STATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock
_SQLITE_CONFLICT_MESSAGES = ("database is locked", "database table is locked")
_CREATION_RACE_MESSAGES = ("already exists", "duplicate key", "duplicate entry")


class StorageError(ValueError):
    """A storage URL that cannot be used, or a study that does not match what was asked.

    The message is one line and never contains a password.
    """


def mask_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``.

    A string that SQLAlchemy cannot parse is masked by hand: everything between ``://`` and the
    last ``@`` that follows a ``:`` is hidden, so a malformed URL never leaks a password either.

    Example:

        .. testcode::

            from optuna_ext._storage import mask_url

            assert mask_url("postgresql://bob:secret@db/x") == "postgresql://bob:***@db/x"
    """
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        # Hide what lies between "user:" and the last "@", with or without a scheme.
        return re.sub(r"^((?:[^:/@]+://)?[^:/@]*):.*@", r"\1:***@", url)


def _scrub(message: str, url: str) -> str:
    """Remove the URL's password from ``message`` (drivers sometimes echo the DSN)."""
    try:
        password = sqlalchemy.engine.make_url(url).password
    except Exception:
        password = None
    if password:
        message = message.replace(str(password), "***")
    return " ".join(message.split())


def find_storage_error(error: BaseException) -> BaseException | None:
    """The database error in ``error``'s chain (``__cause__``/``__context__``), if any.

    ``Study.optimize`` of Optuna 5.0 can hide a storage error that happens while a trial is
    told behind an ``UnboundLocalError`` (optuna#5280); the storage error is its context.
    """
    seen: set[int] = set()
    stack: list[BaseException | None] = [error]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, sqlalchemy.exc.SQLAlchemyError):
            return e
        stack += [e.__context__, e.__cause__]
    if isinstance(error, optuna.exceptions.StorageInternalError):
        return error
    return None


def describe_storage_failure(error: BaseException, url: str) -> str:
    """One line on a storage call that failed mid-run (a server that went away, ...).

    Names the URL with its password masked and the database driver's reason (scrubbed of the
    password too), without SQLAlchemy's statement dump.
    """
    cause = find_storage_error(error) or error
    original = getattr(cause, "orig", None) or cause
    reason = _scrub(str(original), url).split(" (Background on")[0].split(" [SQL:")[0]
    if len(reason) > 300:
        reason = reason[:297] + "..."
    return (
        f"The storage '{mask_url(url)}' failed during the run "
        f"({type(original).__name__}: {reason}). Every trial told before the failure is kept "
        "in the storage."
    )


def normalize_storage_url(url: str) -> str:
    """Pick an installed driver when the URL names none.

    ``postgresql://`` means psycopg2 to SQLAlchemy; optuna-ext's ``postgresql`` extra installs
    psycopg 3, so a driver-less PostgreSQL URL is given ``+psycopg`` when psycopg2 is missing.
    Likewise ``mysql://`` becomes ``mysql+pymysql://`` when MySQLdb is missing. A URL that names
    its driver is returned unchanged.

    Raises:
        StorageError: The URL cannot be parsed.
    """
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise StorageError(
            f"Cannot parse the storage URL '{mask_url(url)}': expected an SQLAlchemy URL such as "
            f"'{DEFAULT_DEMO_STORAGE}' or 'postgresql+psycopg://user@host:5432/db'."
        ) from None
    swaps = {
        "postgresql": ("psycopg2", "psycopg", "postgresql+psycopg"),
        "mysql": ("MySQLdb", "pymysql", "mysql+pymysql"),
    }
    if parsed.drivername in swaps:
        default_module, installed_module, drivername = swaps[parsed.drivername]
        if _has_module(installed_module) and not _has_module(default_module):
            parsed = parsed.set(drivername=drivername)
    return parsed.render_as_string(hide_password=False)


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _driver_error(error: BaseException) -> BaseException | None:
    """The database driver's exception under Optuna's and SQLAlchemy's wrappers, if any."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sqlalchemy.exc.DBAPIError) and current.orig is not None:
            return current.orig
        current = current.__cause__ or current.__context__
    return None


def is_write_conflict(error: BaseException) -> bool:
    """Whether ``error`` is a conflict between concurrent writers that a retry gets past.

    These are MySQL/MariaDB's deadlock (1213), lock wait timeout (1205) and "Record has
    changed since last read" (1020, which MariaDB 11.6.2 and later raise by default when two
    transactions update the same row: optuna#6065), PostgreSQL's serialization failure and
    deadlock (SQLSTATE 40001, 40P01), and SQLite's "database is locked". Optuna wraps them in
    :class:`optuna.exceptions.StorageInternalError`; the driver's exception is found through
    the chain of causes.

    Example:

        .. testcode::

            from optuna_ext._storage import is_write_conflict

            assert not is_write_conflict(ValueError("not a database error"))
    """
    orig = _driver_error(error)
    if orig is None:
        return False
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and args[0] in _MYSQL_CONFLICT_CODES:
        return True
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if state in _POSTGRES_CONFLICT_STATES:
        return True
    message = str(orig).lower()
    return any(m in message for m in _SQLITE_CONFLICT_MESSAGES)


def retry_on_write_conflict(
    write: Callable[[], _T],
    *,
    what: str,
    attempts: int = 8,
    first_delay: float = 0.01,
    max_delay: float = 1.0,
) -> _T:
    """Call ``write()``, and call it again after a short random pause on a write conflict.

    Used for the study attributes that several workers rewrite (figures, results): two
    workers that write the same key at once may get a deadlock, a lock timeout or, on
    MariaDB with snapshot isolation, optuna#6065's "Record has changed since last read". The
    failed transaction was rolled back, so writing again is safe; the last writer wins, and
    what the workers write there is derived from the trials, so any of them is right.

    Args:
        write: The storage write, with no arguments.
        what: What is written, for the log.
        attempts: How many times to try in all, ``>= 1``.
        first_delay: The mean pause after the first conflict, in seconds; it doubles after
            each further one, up to ``max_delay``, times a uniform jitter in ``[0.5, 1.5)``.
        max_delay: The longest mean pause, in seconds.

    Returns:
        What ``write`` returned.

    Raises:
        Exception: Whatever ``write`` raised when it is not a write conflict
            (:func:`is_write_conflict`), or the last conflict after ``attempts`` tries.
    """
    if attempts < 1:
        raise ValueError(f"The value of `attempts` is {attempts}, but must be `attempts >= 1`.")
    for attempt in range(attempts):
        try:
            return write()
        except Exception as e:
            if attempt == attempts - 1 or not is_write_conflict(e):
                raise
            delay = min(max_delay, first_delay * 2**attempt) * (0.5 + random.random())
            _logger.debug(
                "A concurrent write conflicted with writing %s (%s); trying again in %.3f s.",
                what,
                type(_driver_error(e)).__name__,
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


_PLOT_DATA_PREFIX = "dashboard:plot_data:"
"""optuna-dashboard's study system attrs of a figure: ``<prefix><id>:<chunk index>``."""
_FIGURE_CHUNK = 16_000
"""Characters per chunk: at most 64,000 bytes in UTF-8, under MySQL's TEXT limit of 65,535."""


def _stored_figure(study: optuna.Study, graph_object_id: str) -> str:
    """The figure's JSON as optuna-dashboard reassembles it from its chunks."""
    prefix = f"{_PLOT_DATA_PREFIX}{graph_object_id}:"
    attrs = study._storage.get_study_system_attrs(study._study_id)
    chunks = {k: v for k, v in attrs.items() if k.startswith(prefix)}
    return "".join(str(chunks.get(f"{prefix}{i}", "")) for i in range(len(chunks)))


def _write_figure(study: optuna.Study, prefix: str, payload: str) -> None:
    storage, study_id = study._storage, study._study_id
    chunks = [payload[i : i + _FIGURE_CHUNK] for i in range(0, len(payload), _FIGURE_CHUNK)]
    for i, chunk in enumerate(chunks):
        retry_on_write_conflict(
            functools.partial(storage.set_study_system_attr, study_id, f"{prefix}{i}", chunk),
            what=f"{prefix}{i}",
        )
    # Blank the chunks of a longer figure saved before (as optuna-dashboard does).
    stored = storage.get_study_system_attrs(study_id)
    for key, value in stored.items():
        if key.startswith(prefix) and value != "":
            index = key[len(prefix) :]
            if index.isdigit() and int(index) >= len(chunks):
                retry_on_write_conflict(
                    functools.partial(storage.set_study_system_attr, study_id, key, ""),
                    what=key,
                )


def save_dashboard_figure(
    study: optuna.Study, figure: go.Figure, *, graph_object_id: str, attempts: int = 10
) -> bool:
    """Save a plotly figure for optuna-dashboard, safe against other workers saving it too.

    The figure is stored where ``optuna_dashboard.save_plotly_graph_object`` stores it, the
    study system attrs ``"dashboard:plot_data:<id>:<i>"`` holding consecutive chunks of its
    JSON, which the dashboard concatenates. Several workers that save the same figure at once
    would meet two problems there: a write may fail with a write conflict (optuna#6065 on
    MariaDB), and the chunks of two writers may interleave into JSON the dashboard cannot
    read. So here the chunks are 16,000 characters long rather than the dashboard's 2,045
    (Optuna's attribute columns are TEXT since its schema v2.6), which puts a typical figure
    in one chunk, written in one statement: concurrent writers then never tear it, the last
    one wins. Each write is retried on a conflict (:func:`retry_on_write_conflict`). A figure
    of several chunks is read back after saving and saved again, after a random pause, while
    what is stored does not parse.

    Args:
        study: The study to save the figure to.
        figure: The figure.
        graph_object_id: Its id; saving again under the same id replaces it.
        attempts: How many times to save a figure of several chunks before giving up.

    Returns:
        Whether a readable figure is stored (some worker's complete figure). :obj:`False`
        (logged as a warning) only when other workers kept tearing a figure of several chunks
        ``attempts`` times; the next save repairs it.
    """
    if attempts < 1:
        raise ValueError(f"The value of `attempts` is {attempts}, but must be `attempts >= 1`.")
    prefix = f"{_PLOT_DATA_PREFIX}{graph_object_id}:"
    payload = figure.to_json()
    for attempt in range(attempts):
        _write_figure(study, prefix, payload)
        if len(payload) <= _FIGURE_CHUNK:
            return True
        try:
            json.loads(_stored_figure(study, graph_object_id))
            return True
        except ValueError:
            _logger.debug(
                "The figure %r was torn by another writer; saving again.", graph_object_id
            )
            time.sleep(min(1.0, 0.02 * 2**attempt) * (0.5 + random.random()))
    _logger.warning(
        "The figure %r of study %r is unreadable after %d saves: other workers kept rewriting "
        "it at the same time. The next save repairs it.",
        graph_object_id,
        study.study_name,
        attempts,
    )
    return False


def keep_alive(study: optuna.Study, trial_id: int) -> BaseHeartbeatThread:
    """Record a running trial's heartbeat for as long as the block runs (when enabled).

    ``Study.optimize`` records heartbeats only while the objective runs; the sampler's
    ``after_trial`` runs after that thread has stopped and before the trial is told. A long
    ``after_trial`` (autoHyper replays the search and saves a figure, and the first figure
    imports plotly) can outlast the grace period, and another worker then fails the live
    trial as stale, after which its ``tell`` raises (optuna#5470, #4234). Samplers run such
    work inside this block: Optuna's own heartbeat thread for the trial, or nothing when the
    storage has no heartbeat.

    Example:

        .. testcode::

            import optuna
            from optuna_ext._storage import keep_alive

            study = optuna.create_study()
            trial = study.ask()
            with keep_alive(study, trial._trial_id):
                pass  # slow post-processing of the trial
    """
    from optuna.storages._heartbeat import get_heartbeat_thread

    return get_heartbeat_thread(trial_id, study._storage)


def _is_creation_race(error: BaseException) -> bool:
    """Whether ``error`` comes from another process creating Optuna's tables at the same time."""
    if not isinstance(error, sqlalchemy.exc.DBAPIError):
        return False
    message = str(error.orig).lower()
    return isinstance(error, sqlalchemy.exc.IntegrityError) or any(
        m in message for m in _CREATION_RACE_MESSAGES
    )


def _create_rdb_storage(url: str, rdb_kwargs: dict[str, object]) -> optuna.storages.RDBStorage:
    """``RDBStorage(url)``, tried again when another process was creating the tables.

    Several workers that open an empty database at once all create Optuna's tables; all but
    one fail (PostgreSQL: a duplicate ``pg_type`` entry; MySQL: a table that already exists;
    MariaDB with snapshot isolation: "Record has changed since last read" in
    ``version_info``). Once the tables exist, opening again succeeds.
    """
    attempts = 10
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, **rdb_kwargs)  # type: ignore[arg-type]
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as e:
            # (Optuna wraps errors of its version table's transaction in StorageInternalError:
            # on MariaDB with snapshot isolation, workers that initialize it at once conflict.)
            if attempt == attempts - 1 or not (_is_creation_race(e) or is_write_conflict(e)):
                raise
            delay = min(2.0, 0.05 * 2**attempt) * (0.5 + random.random())
            _logger.debug(
                "Another process is creating the tables; opening again in %.2f s.", delay
            )
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def open_storage(url: str, **rdb_kwargs: object) -> BaseStorage:
    """Open the RDB storage at ``url`` and check that it answers.

    A database server that restarts between two storage calls is survived: the connection pool
    checks each connection before use (SQLAlchemy's ``pool_pre_ping``; pass
    ``engine_kwargs={"pool_pre_ping": False}`` to turn it off), so the first call after the
    restart reconnects instead of failing on a dead connection. While the server is down,
    every call fails with SQLAlchemy's ``OperationalError``, and nothing already committed is
    lost.

    Args:
        url:
            An SQLAlchemy URL (``sqlite:///file.db``, ``postgresql+psycopg://...``,
            ``mysql+pymysql://...``).
        rdb_kwargs:
            Passed on to :class:`optuna.storages.RDBStorage` (``heartbeat_interval``,
            ``engine_kwargs``, ...).

    Returns:
        The storage, wrapped in Optuna's cache as ``optuna.create_study(storage=url)`` would.
        Workers that open an empty database at the same time race to create Optuna's
        tables; the losers open it again once the tables exist (plain
        ``optuna.create_study(storage=url)`` fails there).

    Raises:
        StorageError: The URL is malformed, names a driver that is not installed, or the
            database cannot be reached. The message names the URL with its password masked.
    """
    url = normalize_storage_url(url)
    shown = mask_url(url)
    if not url.startswith("sqlite"):
        engine_kwargs = dict(rdb_kwargs.get("engine_kwargs") or {})  # type: ignore[call-overload]
        engine_kwargs.setdefault("pool_pre_ping", True)
        rdb_kwargs = {**rdb_kwargs, "engine_kwargs": engine_kwargs}
    try:
        storage = _create_rdb_storage(url, rdb_kwargs)
    except ImportError as e:
        module = getattr(e.__cause__, "name", None) or e.name or "?"
        hint = {"psycopg": "optuna-ext[postgresql]", "pymysql": "optuna-ext[mysql]"}.get(
            module, module
        )
        raise StorageError(
            f"Cannot open storage '{shown}': its database driver '{module}' is not installed "
            f"(pip install '{hint}')."
        ) from None
    except (sqlalchemy.exc.SQLAlchemyError, ValueError, OSError) as e:
        reason = _scrub(str(getattr(e, "orig", None) or e), url).split(" (Background on")[0]
        raise StorageError(f"Cannot open storage '{shown}': {reason}") from None
    return optuna.storages._CachedStorage(storage)


def load_or_create_study(
    *,
    study_name: str,
    storage: str | BaseStorage,
    direction: str | StudyDirection,
    sampler: BaseSampler | None = None,
    pruner: BasePruner | None = None,
) -> optuna.Study:
    """Create a study, or load the one of that name, refusing one that optimizes the other way.

    ``optuna.create_study(..., load_if_exists=True)`` silently keeps the stored direction when
    it differs from the one asked for, so a maximizing objective would be ranked as if lower
    were better. This helper raises instead.

    Args:
        study_name: The study's name in the storage.
        storage: A storage URL or an opened storage (see :func:`open_storage`).
        direction: ``"minimize"`` or ``"maximize"``.
        sampler: The sampler to use; samplers are not stored, pass the same one on every resume.
        pruner: The pruner to use, likewise.

    Raises:
        StorageError: The storage holds a study of that name with another direction.
    """
    if isinstance(storage, str):
        storage = open_storage(storage)
    wanted = optuna.study.StudyDirection[str(direction).upper().split(".")[-1]]
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        study_id = None
    if study_id is not None:
        stored = storage.get_study_directions(study_id)
        if list(stored) != [wanted]:
            names = ", ".join(d.name.lower() for d in stored)
            raise StorageError(
                f"The storage already holds a study named '{study_name}' that is to "
                f"{names}, but this run needs it to {wanted.name.lower()}: use another study "
                "name or another storage, or delete the old study."
            )
    return optuna.create_study(
        study_name=study_name,
        storage=storage,
        direction=wanted,
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
