"""The storage of the resume tests: SQLite and PostgreSQL (fresh databases, tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage(request: pytest.FixtureRequest) -> tuple[str, str]:
    """``(name, url)`` of a fresh, empty database."""
    return request.param, request.getfixturevalue(f"{request.param}_url")
