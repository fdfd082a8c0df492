"""Run every ``.. testcode::`` example in the docstrings of the package.

Examples are what a user copies first, so each one runs here (with its ``.. testoutput::``
compared when given), like Optuna's docs build runs its own with ``sphinx.ext.doctest``.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import os
import pkgutil
import textwrap
from typing import Any

import pytest

import optuna_ext


def _blocks(doc: str) -> list[tuple[str, str | None]]:
    """Return the (code, expected output or None) pairs of a docstring's examples."""
    lines = inspect.cleandoc(doc).splitlines()
    blocks: list[tuple[str, str | None]] = []
    i = 0
    while i < len(lines):
        directive = lines[i].strip()
        if directive not in (".. testcode::", ".. testoutput::"):
            i += 1
            continue
        indent = len(lines[i]) - len(lines[i].lstrip())
        body = []
        i += 1
        while i < len(lines) and (
            not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent
        ):
            body.append(lines[i])
            i += 1
        text = textwrap.dedent("\n".join(body)).strip()
        if directive == ".. testcode::":
            blocks.append((text, None))
        else:
            blocks[-1] = (blocks[-1][0], text)
    return blocks


def _documented_objects() -> list[tuple[str, Any]]:
    """Every module of the package, and the classes, functions and methods defined in it."""
    found: list[tuple[str, Any]] = []
    for info in pkgutil.walk_packages(optuna_ext.__path__, prefix="optuna_ext."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        found.append((info.name, module))
        for name, obj in vars(module).items():
            if getattr(obj, "__module__", None) != info.name:
                continue
            if inspect.isclass(obj):
                found.append((f"{info.name}.{name}", obj))
                for attr, member in vars(obj).items():
                    member = getattr(member, "__func__", member)
                    if inspect.isfunction(member) or isinstance(member, property):
                        found.append((f"{info.name}.{name}.{attr}", member))
            elif inspect.isfunction(obj):
                found.append((f"{info.name}.{name}", obj))
    return found


EXAMPLES = [
    pytest.param(code, output, id=f"{name}-{k}")
    for name, obj in _documented_objects()
    for k, (code, output) in enumerate(_blocks(inspect.getdoc(obj) or ""))
]


def test_examples_are_found() -> None:
    documented = {param.id.rsplit("-", 1)[0].rsplit(".", 1)[-1] for param in EXAMPLES}  # type: ignore[union-attr]
    for name in (
        "AutoHyperSampler",
        "MORLPruner",
        "RecurringLR",
        "KnowledgeGainTracker",
        "fit",
        "SGDHD",
        "AdamHD",
        "lr_range_test",
        "LRRangeTestResult",
    ):
        assert name in documented


def test_every_public_task_callable_has_an_example() -> None:
    import optuna_ext.tasks as tasks

    documented = {param.id.rsplit("-", 1)[0].rsplit(".", 1)[-1] for param in EXAMPLES}  # type: ignore[union-attr]
    callables = {
        name
        for name in tasks.__all__
        if callable(getattr(tasks, name))
        and name not in ("Evaluation", "FitResult", "TensorLoader")
    }
    assert callables <= documented


@pytest.mark.parametrize("code, output", EXAMPLES)
def test_docstring_example(code: str, output: str | None, tmp_path: os.PathLike[str]) -> None:
    buffer = io.StringIO()
    cwd = os.getcwd()
    os.chdir(tmp_path)  # examples may write a database or artifacts to the working directory
    try:
        with contextlib.redirect_stdout(buffer):
            exec(compile(code, "<docstring>", "exec"), {})
    finally:
        os.chdir(cwd)
    if output is not None:
        assert buffer.getvalue().strip() == output
