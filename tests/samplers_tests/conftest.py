from __future__ import annotations

import pytest

from tests.samplers_tests._storage_matrix import contract_storage  # noqa: F401 (a fixture)
from tests.samplers_tests._storage_matrix import MATRIX_TESTS
from tests.samplers_tests._storage_matrix import STORAGE_MODES


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run each matrix test of a ``StorageMatrix`` contract class once per storage mode."""
    if "contract_storage_mode" not in metafunc.fixturenames:
        return
    modes = STORAGE_MODES if metafunc.function.__name__ in MATRIX_TESTS else ("inmemory",)
    metafunc.parametrize("contract_storage_mode", modes, scope="class")
