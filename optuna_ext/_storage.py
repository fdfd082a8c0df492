"""Opening storages by URL with errors a user can act on.

Everything in optuna-ext persists to an Optuna storage given as an SQLAlchemy URL. These helpers
turn the failures a user meets first (a typo in the URL, a server that is down, a study of the
same name that optimizes the other way) into one-line :class:`StorageError` messages in which a
password never appears.
"""

from __future__ import annotations

import importlib.util
import re
from typing import TYPE_CHECKING

import optuna
import sqlalchemy
import sqlalchemy.exc


if TYPE_CHECKING:
    from optuna.pruners import BasePruner
    from optuna.samplers import BaseSampler
    from optuna.storages import BaseStorage
    from optuna.study import StudyDirection


DEFAULT_DEMO_STORAGE = "sqlite:///optuna-ext-demo.db"


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
        storage = optuna.storages.RDBStorage(url, **rdb_kwargs)  # type: ignore[arg-type]
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
