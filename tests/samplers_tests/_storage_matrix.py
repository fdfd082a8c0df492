"""Run Optuna's sampler contract suites against Optuna's storage matrix.

Optuna's suites (``optuna.testing.pytest_samplers``) create their studies with
``optuna.create_study(sampler=...)``, in memory. A contract class that also inherits
:class:`StorageMatrix` runs the suite tests of :data:`MATRIX_TESTS` once per storage mode of
:data:`STORAGE_MODES` (``optuna.testing.storages.StorageSupplier``: in-memory, SQLite, cached
SQLite, journal file): an autouse fixture makes every study that the test creates without a
storage live in the mode's storage, so everything the sampler keeps (trial and study system
attrs) goes through that storage's serialization. One storage per mode serves a whole class
(each test's studies have their own names), as one database serves many studies of a user.

:data:`MATRIX_TESTS` are the suite tests that run trials to completion and sample from their
history (including a NaN objective value, conditional and mixed parameters, fixed
parameters and threads). The others (``test_float``, ``test_int``, ``test_categorical``,
``test_single_parameter_objective``, ``test_dynamic_range_objective``,
``test_combination_of_different_distributions_objective`` and the relative
per-distribution cases) repeat the same storage path once per distribution, so they run in
memory only: on SQLite under ``pytest -n 2`` the full suites would cost minutes. The
parametrization is done by ``pytest_generate_tests`` in this directory's ``conftest.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import optuna
from optuna.testing.storages import StorageSupplier
import pytest


STORAGE_MODES: tuple[str, ...] = ("inmemory", "sqlite", "cached_sqlite", "journal")
"""The storage modes of ``StorageSupplier`` the contract suites run against."""

MATRIX_TESTS: frozenset[str] = frozenset(
    {
        "test_conditional_sample_independent",
        "test_nan_objective_value",
        "test_partial_fixed_sampling",
        "test_sample_single_distribution",
        "test_conditional_parameter_objective",
        "test_sample_relative_mixed",
        "test_trial_relative_params",
        "test_raise_error_for_samplers_during_multi_objectives",
    }
)
"""Suite tests that run on every mode of :data:`STORAGE_MODES` (the rest in memory only)."""


@pytest.fixture(scope="class")
def contract_storage(contract_storage_mode: str) -> Iterator[optuna.storages.BaseStorage]:
    """One storage of the given mode for all the tests of a contract class."""
    with StorageSupplier(contract_storage_mode) as storage:
        yield storage


class StorageMatrix:
    """Mixin for a contract test class: its studies live in each mode of the storage matrix."""

    @pytest.fixture(autouse=True)
    def _studies_in_contract_storage(
        self, contract_storage: optuna.storages.BaseStorage, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        original = optuna.study.create_study

        def create_study(*args: Any, **kwargs: Any) -> optuna.Study:
            if kwargs.get("storage") is None:
                kwargs["storage"] = contract_storage
            return original(*args, **kwargs)

        monkeypatch.setattr(optuna.study, "create_study", create_study)
        monkeypatch.setattr(optuna, "create_study", create_study)
