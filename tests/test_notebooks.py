"""The notebooks under ``notebooks/``: each runs top to bottom at the tiny budget, and each is
committed executed, with outputs that GitHub can show.

The run test is parametrized over ``notebooks/*.ipynb``, so a new notebook is tested as soon as
it is added. It starts a Jupyter kernel named ``python3`` (ipykernel installs one into the
virtual environment) with ``OPTUNA_EXT_NOTEBOOK_BUDGET=tiny``.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
import re
from typing import Any

import pytest


ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
BUDGET_ENV = "OPTUNA_EXT_NOTEBOOK_BUDGET"
KERNEL_NAME = "python3"
CELL_TIMEOUT = 300
"""Seconds one cell may run at the tiny budget (each takes seconds; the margin is for a loaded
machine)."""
MAX_NOTEBOOK_BYTES = 350_000
"""A committed notebook stays small enough to review and to render on GitHub."""
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
INTERACTIVE_MIME_TYPES = (
    "application/vnd.plotly.v1+json",
    "application/vnd.jupyter.widget-view+json",
    "application/javascript",
)
"""Outputs GitHub does not render: figures must be static images (matplotlib PNG)."""


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _import_notebook_tools() -> tuple[Any, Any]:
    try:
        import nbclient
        import nbformat
    except ImportError as e:  # the `test` dependency group installs both
        message = f"nbclient/nbformat are not installed ({e}): pip install -e . --group dev"
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return nbclient, nbformat


def _read(path: Path) -> Any:
    _, nbformat = _import_notebook_tools()
    return nbformat.read(path, as_version=4)


def _code_cells(notebook: Any) -> list[Any]:
    return [c for c in notebook.cells if c.cell_type == "code"]


def _name(path: Path) -> str:
    return path.stem


def test_the_notebook_directory_has_notebooks() -> None:
    # An empty glob would parametrize the tests below into nothing and pass silently.
    assert len(NOTEBOOKS) >= 4, NOTEBOOKS


def test_a_python3_kernel_is_installed() -> None:
    _import_notebook_tools()
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.kernelspec import NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
    except NoSuchKernel:
        pytest.fail(
            f"No Jupyter kernel named {KERNEL_NAME!r}: install ipykernel into this environment "
            "(`pip install -e . --group dev`), or run `python -m ipykernel install --sys-prefix`."
        )
    assert spec.language == "python"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_name)
def test_committed_notebook_was_executed_top_to_bottom(path: Path) -> None:
    notebook = _read(path)
    cells = _code_cells(notebook)
    assert cells, f"{path.name} has no code cell"
    counts = [c.execution_count for c in cells]
    assert counts == list(range(1, len(cells) + 1)), (
        f"{path.name} was not executed top to bottom in one kernel (execution counts {counts}); "
        "run it again before committing"
    )
    assert any(c.outputs for c in cells), f"{path.name} has no outputs"
    for i, cell in enumerate(cells):
        for output in cell.outputs:
            assert output.output_type != "error", (
                f"{path.name}, code cell {i}: {output.get('ename')}: {output.get('evalue')}"
            )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_name)
def test_committed_notebook_reads_its_budget_first(path: Path) -> None:
    first = _code_cells(_read(path))[0]
    assert BUDGET_ENV in first.source, (
        f"The first code cell of {path.name} must read (and say) the budget variable {BUDGET_ENV}"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_name)
def test_committed_outputs_are_small_and_render_on_github(path: Path) -> None:
    size = path.stat().st_size
    assert size <= MAX_NOTEBOOK_BYTES, f"{path.name} is {size} bytes, over {MAX_NOTEBOOK_BYTES}"
    for i, cell in enumerate(_code_cells(_read(path))):
        for output in cell.outputs:
            text = output.get("text", "")
            assert "\r" not in text, f"{path.name}, code cell {i}: a progress bar in the output"
            data = output.get("data", {})
            interactive = [m for m in INTERACTIVE_MIME_TYPES if m in data]
            assert not interactive, f"{path.name}, code cell {i}: {interactive} (not static)"
            if "image/png" in data:
                png = base64.b64decode(data["image/png"])
                assert png.startswith(PNG_SIGNATURE), f"{path.name}, code cell {i}: bad PNG"


def _readme_method_rows() -> list[list[str]]:
    """The rows of the README's method table whose Optuna class is a sampler or a pruner."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## What is in it", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if not line.startswith("|") or set(line) <= set("|- "):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if re.search(r"optuna_ext\.(samplers|pruners)\.", line):
            rows.append(cells)
    return rows


def test_every_method_of_the_readme_has_its_notebook() -> None:
    # The notebook of "PBT / PB2" is pbt.ipynb: the first word of the method's name, lower case.
    names = {re.findall(r"[A-Za-z0-9]+", row[0])[0].lower() for row in _readme_method_rows()}
    assert {"autohyper", "morl", "hyperdyn", "pbt"} <= names, names
    missing = sorted(n for n in names if not (NOTEBOOK_DIR / f"{n}.ipynb").is_file())
    assert not missing, f"methods in README.md without notebooks/NAME.ipynb: {missing}"


def test_the_readme_links_only_to_notebooks_that_exist() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\((notebooks/[^)\s#]+\.ipynb)\)", text)
    missing = sorted({link for link in links if not (ROOT / link).is_file()})
    assert not missing, f"README.md links to missing notebooks: {missing}"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_name)
def test_notebook_runs_at_the_tiny_budget(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nbclient, _ = _import_notebook_tools()
    notebook = _read(path)
    # The kernel inherits this environment: the budget, and a temporary directory under
    # tmp_path for the studies the notebook creates (tempfile.mkdtemp), so nothing is left over.
    monkeypatch.setenv(BUDGET_ENV, "tiny")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name=KERNEL_NAME,
        resources={"metadata": {"path": str(tmp_path)}},
        allow_errors=False,
    )
    client.execute()  # raises CellExecutionError, naming the cell, on the first failing cell
    cells = _code_cells(notebook)
    assert [c.execution_count for c in cells] == list(range(1, len(cells) + 1))
    errors = [o for c in cells for o in c.outputs if o.output_type == "error"]
    assert not errors
