"""docs/bad_inputs.md and the tests stay in sync.

Every test the table names (``tests/…py::test_name`` or ``tests/…py::Class``) must exist: the
file, and in it the function or class (``Class::method`` too), found by parsing the file, so a
renamed or deleted test fails here. Every row of every table must name at least one test.
"""

from __future__ import annotations

import ast
from pathlib import Path
import re


ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "docs" / "bad_inputs.md"
_TEST_ID = re.compile(r"`(tests/[\w/]+\.py)::([\w:]+)`")


def _rows() -> list[str]:
    return [
        line
        for line in TABLE.read_text().splitlines()
        if line.startswith("| ") and not line.startswith("| Entry point")
    ]


def _defined(path: Path) -> set[str]:
    """``name`` for top-level functions and classes, ``Class::name`` for methods, including
    inherited ones of base classes that are importable (Optuna's suites)."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.add(node.name)
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    names.add(f"{node.name}::{item.name}")
    return names


def test_every_row_names_a_test() -> None:
    rows = _rows()
    assert len(rows) > 80
    missing = [row[:80] for row in rows if not _TEST_ID.search(row)]
    assert not missing, missing


def test_every_named_test_exists() -> None:
    problems = []
    named = 0
    for line in _rows():
        for path, name in _TEST_ID.findall(line):
            named += 1
            file = ROOT / path
            if not file.is_file():
                problems.append(f"{path} does not exist")
            elif name not in _defined(file):
                problems.append(f"{path}::{name} is not defined there")
            elif not name.split("::")[-1].startswith(("test_", "Test")):
                problems.append(f"{path}::{name} is not a test")
    assert named > 100
    assert not problems, "docs/bad_inputs.md names tests that are gone: " + "; ".join(problems)


def test_the_property_test_files_exist() -> None:
    text = TABLE.read_text()
    for path in re.findall(r"`(tests/[\w/]+_properties\.py)`", text):
        assert (ROOT / path).is_file(), path
        assert any(n.startswith("test_") for n in _defined(ROOT / path)), path
