from __future__ import annotations

import optuna
from optuna.trial import TrialState
import pytest

from benchmarks._lease import LEASE_KEY
from benchmarks.runner import load_summaries
from benchmarks.runner import make_jobs
from benchmarks.runner import run
from benchmarks.runner import RunConfig


@pytest.mark.slow
@pytest.mark.postgres
def test_two_workers_on_postgresql_split_the_jobs_and_run_none_twice(postgres_url: str) -> None:
    jobs = tuple(make_jobs(["baseline", "random", "tpe"], ["linear"], [0, 1]))
    config = RunConfig(storage=postgres_url, jobs=jobs, budget="tiny", progress=False, poll=0.5)
    assert run(config, workers=2) == 0

    summaries = load_summaries(postgres_url)
    assert sorted((s["method"], s["seed"]) for s in summaries) == sorted(
        (j.method, j.seed) for j in jobs
    )
    assert all(s["sessions"] == 1 for s in summaries)  # each job was claimed exactly once
    storage = optuna.storages.RDBStorage(postgres_url)
    studies = {s.study_name: s for s in storage.get_all_studies()}
    assert set(studies) == {j.study_name() for j in jobs}  # no take-over, no extra study
    owners = {s.user_attrs[LEASE_KEY]["owner"] for s in studies.values()}
    assert len(owners) == 2  # both workers ran jobs
    for job in jobs:
        if job.method == "baseline":
            continue
        trials = storage.get_all_trials(studies[job.study_name()]._study_id)
        assert [t.state for t in trials] == 3 * [TrialState.COMPLETE]  # tiny: 3 full runs
