"""Checks every method's many-workers test makes."""

from __future__ import annotations

from collections import Counter

from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from tests.workers_tests._run import DB_ERROR_MARKERS
from tests.workers_tests._run import WorkerRun


def check_workers(
    run: WorkerRun,
    method: str,
    *,
    study_name: str | None = None,
    every_finished_trial_told: bool = True,
) -> list[FrozenTrial]:
    """The checks every method passes; returns the trials of its study.

    - Every worker ran the method (they met at its barrier) without an exception.
    - No worker's output mentions a database error, not even as a logged warning.
    - Every trial a worker told is stored with the state and values it told (none is lost or
      overwritten by another worker).
    - With ``every_finished_trial_told``: every finished trial was told by exactly one worker.
    - No trial is left RUNNING or WAITING.
    """
    reports = run.method_reports(method)
    assert len(reports) == len(run.outputs), (
        f"{method} on {run.backend}: only {len(reports)} of {len(run.outputs)} workers ran it",
        run.outputs,
    )
    for i, report in enumerate(reports):
        assert report["error"] is None, (
            f"{method} on {run.backend}, worker {i}:\n{report['error']}"
        )
    for i, output in enumerate(run.outputs):
        found = [m for m in DB_ERROR_MARKERS if m in output]
        assert not found, f"{run.backend}, worker {i} reported {found}:\n{output[-4000:]}"
    trials = run.trials[study_name or f"workers-{method}"]
    by_number = {t.number: t for t in trials}
    told: Counter[int] = Counter()
    for report in reports:
        for number, state, values in report.get("told", []):
            told[number] += 1
            stored = by_number[number]
            assert stored.state.name == state, (number, state, stored.state)
            assert stored.values == values, (number, values, stored.values)
    assert all(n == 1 for n in told.values()), [k for k, n in told.items() if n > 1]
    if every_finished_trial_told:
        untold = [t.number for t in trials if t.state.is_finished() and t.number not in told]
        assert not untold, f"{method} on {run.backend}: finished trials no worker told: {untold}"
    left = [(t.number, t.state.name) for t in trials if not t.state.is_finished()]
    assert not left, f"{method} on {run.backend}: trials left unfinished: {left}"
    return trials


def workers_of(trials: list[FrozenTrial], key: str = "worker") -> set[object]:
    """The workers (a user attr) that ran the COMPLETE trials."""
    return {t.user_attrs.get(key) for t in trials if t.state == TrialState.COMPLETE}
