"""Every worker of every backend's run exits 0 within the time limit."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.workers_tests._run import WorkerRun
from tests.workers_tests.conftest import BACKENDS
from tests.workers_tests.conftest import METHODS


pytestmark = pytest.mark.slow


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_worker_runs_every_method_and_exits_zero(
    worker_runs: Callable[[str], WorkerRun], backend: str
) -> None:
    run = worker_runs(backend)
    for i, (code, output) in enumerate(zip(run.returncodes, run.outputs, strict=True)):
        assert code == 0, f"{backend}: worker {i} exited {code}:\n{output[-4000:]}"
    for report in run.reports:
        assert list(report) == list(METHODS)
