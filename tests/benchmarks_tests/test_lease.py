from __future__ import annotations

import subprocess
import sys
import time

import pytest

from benchmarks._lease import claim
from benchmarks._lease import job_state
from benchmarks._lease import LEASE_KEY
from benchmarks._lease import LeaseLost
from benchmarks._lease import SUMMARY_KEY
from benchmarks.runner import scan
from optuna_ext._storage import open_storage


JOB = "bench/linear/tpe/seed0"


def _state(storage, *, stale_after=60.0, first_seen=None, now=None):
    return job_state(
        JOB,
        scan(storage, "bench"),
        stale_after=stale_after,
        first_seen={} if first_seen is None else first_seen,
        now=now,
    )


def test_the_first_claim_creates_the_study_and_a_second_one_fails(sqlite_url: str) -> None:
    storage = open_storage(sqlite_url)
    state = _state(storage)
    assert state.status == "free" and state.claimable
    lease = claim(storage, state, owner="a", budget="tiny", interval=60.0)
    assert lease is not None and lease.generation == 0
    try:
        # A worker that looked before the claim loses the race: the study exists.
        assert claim(storage, state, owner="b", budget="tiny", interval=60.0) is None
        now = _state(storage)
        assert now.status == "running" and not now.claimable
        assert now.lease["owner"] == "a" and now.lease["gen"] == 0
    finally:
        lease.release()
    assert _state(storage).status == "released"


def test_a_stale_job_is_taken_over_once_and_the_old_owner_stops(sqlite_url: str) -> None:
    storage = open_storage(sqlite_url)
    old = claim(storage, _state(storage), owner="a", budget="tiny", interval=60.0)
    assert old is not None
    later = time.time() + 1000.0
    stale = _state(storage, now=later)
    assert stale.status == "stale"
    new = claim(storage, stale, owner="b", budget="tiny", interval=60.0)
    assert new is not None and new.generation == 1 and new.sessions == 2
    # A third worker with the same stale view loses: the lease study of generation 1 exists.
    assert claim(storage, stale, owner="c", budget="tiny", interval=60.0) is None
    # The old owner notices at its next heartbeat and must stop; it cannot store a summary.
    old.beat()
    with pytest.raises(LeaseLost):
        old.check()
    assert not old.finish({"by": "a"})
    assert _state(storage).lease["owner"] == "b"
    assert new.finish({"by": "b"})
    done = _state(storage)
    assert done.status == "finished" and done.attrs[SUMMARY_KEY] == {"by": "b"}
    assert done.extra == ()  # the lease study is removed once the job is finished
    assert claim(storage, done, owner="d", budget="tiny", interval=60.0) is None


def test_a_claim_of_a_job_finished_meanwhile_is_given_back(sqlite_url: str) -> None:
    storage = open_storage(sqlite_url)
    lease = claim(storage, _state(storage), owner="a", budget="tiny", interval=60.0)
    assert lease is not None
    stale = _state(storage, now=time.time() + 1000.0)
    assert lease.finish({"by": "a"})
    assert claim(storage, stale, owner="b", budget="tiny", interval=60.0) is None
    assert _state(storage).extra == ()


def test_an_owner_whose_process_is_gone_is_stale_at_once(sqlite_url: str) -> None:
    storage = open_storage(sqlite_url)
    lease = claim(storage, _state(storage), owner="a", budget="tiny", interval=60.0)
    assert lease is not None
    lease._join()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    attrs = dict(_state(storage).lease)
    storage.set_study_user_attr(lease.study_id, LEASE_KEY, {**attrs, "pid": int(dead.stdout)})
    assert _state(storage).status == "stale"
    storage.set_study_user_attr(lease.study_id, LEASE_KEY, attrs)  # this process: alive
    assert _state(storage).status == "running"


def test_a_claim_without_a_heartbeat_becomes_stale_after_the_limit(sqlite_url: str) -> None:
    storage = open_storage(sqlite_url)
    from optuna.study import StudyDirection

    storage.create_new_study([StudyDirection.MAXIMIZE], JOB)  # killed before its first beat
    seen: dict = {}
    t0 = time.time()
    assert _state(storage, first_seen=seen, now=t0).status == "running"
    assert _state(storage, first_seen=seen, now=t0 + 30.0).status == "running"
    assert _state(storage, first_seen=seen, now=t0 + 61.0).status == "stale"
