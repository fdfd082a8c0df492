"""Start N worker processes on one storage, wait for them, and read back what they left.

:func:`run_workers` is what the fixture in ``conftest.py`` calls once per backend; it can also
be run by hand: ``python -m tests.workers_tests._run BACKEND [METHOD ...]`` prints a summary.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import json
import os
from pathlib import Path
import subprocess
import sys
import time
from typing import Any

import optuna
from optuna.trial import FrozenTrial


ROOT = Path(__file__).resolve().parents[2]
N_WORKERS = 4
TIMEOUT = 600.0
"""Seconds the workers may take in all; past it they are killed and the run fails."""

# Markers of database errors that must never reach a worker's output, even as a warning
# (e.g. a figure write that failed and was only logged).
DB_ERROR_MARKERS = (
    "OperationalError",
    "StorageInternalError",
    "Record has changed since last read",
    "Deadlock found",
    "deadlock detected",
    "database is locked",
    "Lock wait timeout",
    "could not serialize access",
    "IntegrityError",
)


@dataclasses.dataclass
class WorkerRun:
    """What a run of the workers left: their reports, outputs, and every study's trials."""

    backend: str
    methods: list[str]
    returncodes: list[int]
    outputs: list[str]
    reports: list[dict[str, Any]]
    trials: dict[str, list[FrozenTrial]]
    study_system_attrs: dict[str, dict[str, Any]]
    study_user_attrs: dict[str, dict[str, Any]]
    seconds: float
    notes: dict[str, Any]

    def method_reports(self, method: str) -> list[dict[str, Any]]:
        return [r[method] for r in self.reports if method in r]


def _worker_command(spec: dict[str, Any]) -> list[str]:
    return [sys.executable, "-m", "tests.workers_tests._worker", json.dumps(spec)]


def run_workers(
    backend: str,
    storage_spec: dict[str, Any],
    methods: Sequence[str],
    workdir: Path,
    *,
    n_workers: int = N_WORKERS,
    timeout: float = TIMEOUT,
    notes: dict[str, Any] | None = None,
) -> WorkerRun:
    """Run ``methods`` in ``n_workers`` processes on the storage, then read the studies."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = []
    outs = []
    start = time.monotonic()
    for i in range(n_workers):
        out = workdir / f"worker-{i}.json"
        outs.append(out)
        spec = {
            "storage": storage_spec,
            "methods": list(methods),
            "barrier": str(workdir / "barrier"),
            "n_workers": n_workers,
            "index": i,
            "artifacts": str(workdir / "artifacts"),
            "out": str(out),
        }
        procs.append(
            subprocess.Popen(
                _worker_command(spec),
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs: list[str] = []
    deadline = start + timeout
    for proc in procs:
        try:
            output, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            output, _ = proc.communicate()
            output += f"\n[killed after {timeout:.0f} s: deadlock or hang]"
        outputs.append(output)
    seconds = time.monotonic() - start
    reports = [json.loads(out.read_text()) if out.exists() else {} for out in outs]
    storage = _open(storage_spec)
    trials: dict[str, list[FrozenTrial]] = {}
    system_attrs: dict[str, dict[str, Any]] = {}
    user_attrs: dict[str, dict[str, Any]] = {}
    for summary in storage.get_all_studies():
        study_id = storage.get_study_id_from_name(summary.study_name)
        trials[summary.study_name] = storage.get_all_trials(study_id)
        system_attrs[summary.study_name] = storage.get_study_system_attrs(study_id)
        user_attrs[summary.study_name] = storage.get_study_user_attrs(study_id)
    if isinstance(storage, optuna.storages.RDBStorage):
        storage.engine.dispose()
    return WorkerRun(
        backend=backend,
        methods=list(methods),
        returncodes=[p.returncode for p in procs],
        outputs=outputs,
        reports=reports,
        trials=trials,
        study_system_attrs=system_attrs,
        study_user_attrs=user_attrs,
        seconds=seconds,
        notes=dict(notes or {}),
    )


def _open(storage_spec: dict[str, Any]) -> optuna.storages.BaseStorage:
    if storage_spec["kind"] == "journal":
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(storage_spec["path"]))
    return optuna.storages.RDBStorage(storage_spec["url"])
