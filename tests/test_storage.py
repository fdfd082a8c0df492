from __future__ import annotations

import optuna
import pytest

from optuna_ext._storage import load_or_create_study
from optuna_ext._storage import mask_url
from optuna_ext._storage import normalize_storage_url
from optuna_ext._storage import open_storage
from optuna_ext._storage import StorageError


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://alice:hunter2@db.example:5432/runs",
        "mysql+pymysql://root:hunter2@127.0.0.1/test",
        "weird://alice:hunter2@[not-a-host",  # unparsable
        "alice:hunter2@host/db",  # no scheme at all
    ],
)
def test_mask_url_never_shows_the_password(url: str) -> None:
    assert "hunter2" not in mask_url(url)


def test_mask_url_keeps_a_url_without_password() -> None:
    assert mask_url("sqlite:///runs.db") == "sqlite:///runs.db"
    assert mask_url("postgresql://bob@h/db") == "postgresql://bob@h/db"


def test_normalize_picks_installed_drivers() -> None:
    assert normalize_storage_url("postgresql://u@h/db").startswith("postgresql+psycopg://")
    assert normalize_storage_url("mysql://u@h/db").startswith("mysql+pymysql://")
    assert normalize_storage_url("sqlite:///x.db") == "sqlite:///x.db"
    # A driver named by the user is kept.
    assert normalize_storage_url("postgresql+psycopg2://u@h/db").startswith(
        "postgresql+psycopg2://"
    )


def test_malformed_url_is_a_storage_error() -> None:
    with pytest.raises(StorageError, match="Cannot parse the storage URL 'not a url'"):
        open_storage("not a url")


def test_unreachable_server_names_url_without_password() -> None:
    url = "postgresql+psycopg://alice:hunter2@127.0.0.1:1/runs"
    with pytest.raises(StorageError) as info:
        open_storage(url)
    message = str(info.value)
    assert "hunter2" not in message
    assert "alice:***@127.0.0.1:1/runs" in message
    assert "\n" not in message


def test_missing_driver_says_which() -> None:
    with pytest.raises(StorageError, match="driver 'psycopg2' is not installed"):
        open_storage("postgresql+psycopg2://u:p@127.0.0.1:1/x")


def test_unopenable_sqlite_file(tmp_path) -> None:
    with pytest.raises(StorageError, match="unable to open database file"):
        open_storage(f"sqlite:///{tmp_path}/no/such/dir/x.db")


def test_direction_mismatch_is_refused(sqlite_url: str) -> None:
    study = load_or_create_study(study_name="s", storage=sqlite_url, direction="minimize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    with pytest.raises(StorageError, match="'s' that is to minimize, but this run needs it to"):
        load_or_create_study(study_name="s", storage=sqlite_url, direction="maximize")
    again = load_or_create_study(study_name="s", storage=sqlite_url, direction="minimize")
    assert len(again.trials) == 2


def test_open_storage_on_postgres(postgres_url: str) -> None:
    storage = open_storage(postgres_url)
    study = optuna.create_study(storage=storage, study_name="pg")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    reloaded = optuna.load_study(study_name="pg", storage=postgres_url)
    assert len(reloaded.trials) == 2


def test_open_storage_on_mysql(mysql_url: str) -> None:
    storage = open_storage(mysql_url)
    study = optuna.create_study(storage=storage, study_name="my")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert len(optuna.load_study(study_name="my", storage=mysql_url).trials) == 2
