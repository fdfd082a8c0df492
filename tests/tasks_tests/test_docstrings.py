"""Run the ``.. testcode::`` examples of the public docstrings of ``optuna_ext.tasks``."""

from __future__ import annotations

import contextlib
import inspect
import io
import textwrap

import pytest

import optuna_ext.tasks


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
            code, _ = blocks[-1]
            blocks[-1] = (code, text)
    return blocks


def _public_docs() -> list[tuple[str, str]]:
    docs = []
    for name in optuna_ext.tasks.__all__:
        obj = getattr(optuna_ext.tasks, name)
        if isinstance(obj, (tuple, str)):
            continue  # constants carry their type's docstring
        docs.append((name, inspect.getdoc(obj) or ""))
    return docs


EXAMPLES = [
    pytest.param(code, output, id=f"{name}-{k}")
    for name, doc in _public_docs()
    for k, (code, output) in enumerate(_blocks(doc))
]


def test_every_public_callable_has_an_example() -> None:
    documented = {param.id.rsplit("-", 1)[0] for param in EXAMPLES}  # type: ignore[union-attr]
    callables = {
        name
        for name in optuna_ext.tasks.__all__
        if callable(getattr(optuna_ext.tasks, name))
        and name not in ("Evaluation", "FitResult", "TensorLoader")
    }
    assert callables <= documented


@pytest.mark.parametrize("code, output", EXAMPLES)
def test_docstring_example(code: str, output: str | None) -> None:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        exec(compile(code, "<docstring>", "exec"), {})
    if output is not None:
        assert buffer.getvalue().strip() == output
