"""The public names: every role subpackage's ``__all__`` is importable and re-exported."""

from __future__ import annotations

import importlib

import pytest

import optuna_ext


ROLE_PACKAGES = ("samplers", "pruners", "schedules", "metrics", "optim")


@pytest.mark.parametrize("package", ROLE_PACKAGES + ("tasks",))
def test_all_names_exist(package: str) -> None:
    module = importlib.import_module(f"optuna_ext.{package}")
    for name in module.__all__:
        assert hasattr(module, name), f"optuna_ext.{package}.{name} is in __all__ but missing"


@pytest.mark.parametrize("package", ROLE_PACKAGES)
def test_public_classes_are_re_exported_at_top_level(package: str) -> None:
    module = importlib.import_module(f"optuna_ext.{package}")
    for name in module.__all__:
        obj = getattr(module, name)
        if isinstance(obj, type) and not name.startswith("_"):
            assert getattr(optuna_ext, name, None) is obj, f"optuna_ext.{name} is missing"
            assert name in optuna_ext.__all__


def test_public_classes_live_in_private_modules() -> None:
    for package in ROLE_PACKAGES:
        module = importlib.import_module(f"optuna_ext.{package}")
        for name in module.__all__:
            obj = getattr(module, name)
            if isinstance(obj, type):
                assert "._" in obj.__module__, f"{name} is defined in {obj.__module__}"


def test_py_typed_marker_is_shipped() -> None:
    from importlib.resources import files

    assert files("optuna_ext").joinpath("py.typed").is_file()


def test_the_restart_stable_random_sampler_is_public() -> None:
    from optuna_ext.samplers import StorageSeededRandomSampler

    assert optuna_ext.StorageSeededRandomSampler is StorageSeededRandomSampler
    assert "StorageSeededRandomSampler" in optuna_ext.samplers.__all__
    assert "StorageSeededRandomSampler" in optuna_ext.__all__
    assert "Example:" in (StorageSeededRandomSampler.__doc__ or "")


def test_the_storage_helpers_are_public() -> None:
    # The README's many-workers recipe imports them from the top level.
    from optuna_ext import _storage

    for name in ("open_storage", "load_or_create_study", "mask_url", "StorageError"):
        assert getattr(optuna_ext, name) is getattr(_storage, name)
        assert name in optuna_ext.__all__
