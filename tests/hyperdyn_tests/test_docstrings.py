"""Run the ``.. testcode::`` examples of the Hyperdyn docstrings (tuner, sampler, GP)."""

from __future__ import annotations

import contextlib
import inspect
import io
import textwrap
from typing import Any

import optuna
import pytest

from optuna_ext._gp import acqf
from optuna_ext._gp import box
from optuna_ext._gp import gp
from optuna_ext._gp import kernels
import optuna_ext.hyperdyn
from optuna_ext.samplers._hyperdyn import HyperdynSampler


def _blocks(doc: str) -> list[tuple[str, str | None]]:
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


_OBJECTS: list[tuple[str, Any]] = [
    *((name, getattr(optuna_ext.hyperdyn, name)) for name in optuna_ext.hyperdyn.__all__),
    ("HyperdynSampler", HyperdynSampler),
    ("matern52", kernels.matern52),
    ("time_kernel", kernels.time_kernel),
    ("fit_gp", gp.fit_gp),
    ("log_expected_improvement", acqf.log_expected_improvement),
    ("UnitBox", box.UnitBox),
]
EXAMPLES = [
    pytest.param(code, output, id=f"{name}-{k}")
    for name, obj in _OBJECTS
    if not isinstance(obj, str)
    for k, (code, output) in enumerate(_blocks(inspect.getdoc(obj) or ""))
]


def test_main_entry_points_have_examples() -> None:
    documented = {p.id.rsplit("-", 1)[0] for p in EXAMPLES}  # type: ignore[union-attr]
    assert {"HyperdynTuner", "fit_hyperdyn", "check_accuracy_trend", "HyperdynSampler"} <= (
        documented
    )


@pytest.mark.parametrize("code, output", EXAMPLES)
def test_docstring_example(code: str, output: str | None) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        exec(compile(code, "<docstring>", "exec"), {})
    if output is not None:
        assert buffer.getvalue().strip() == output
