"""Kill a study's worker process with SIGKILL, restart it on the same storage, read the result.

A worker (``tests.resume_tests._workers``) runs or resumes one study to its end.
:func:`run_with_kills` starts it once per planned kill and once more at the end, each time as a
new process (so with a new sampler, pruner and storage object), and kills it:

- :class:`Hook`: the worker kills itself (``os.kill(os.getpid(), SIGKILL)``) at an exact
  decision point, named by a string the worker passes to its :class:`Killer`
  (e.g. ``"objective:12"``: inside the objective of the trial with draw index 12);
- :class:`External`: the parent kills it from outside, once the storage holds ``finished``
  COMPLETE or PRUNED trials, after a further ``delay`` seconds, wherever the worker is then (in the
  objective, the sampler, the pruner, a storage write). The worker is frozen with SIGSTOP
  first; if it stopped inside one of Optuna's own windows where a kill leaves a trial that no
  heartbeat can ever fail (see ``consistent``), it is let go for a few milliseconds and
  stopped again; then it is killed with SIGKILL.

After each kill the parent records which trials were finished and which were RUNNING, and
(for methods whose trials run under heartbeats) waits until the killed process's RUNNING trials
are stale, so that the restarted worker fails them and Optuna's retry callback re-enqueues them
before the worker asks for its first trial.
"""

from __future__ import annotations

import atexit
from collections.abc import Callable
from collections.abc import Sequence
import dataclasses
import json
import os
from pathlib import Path
import random
import signal
import subprocess
import sys
import time
from typing import Any

import optuna
from optuna.trial import FrozenTrial
from optuna.trial import TrialState
import sqlalchemy


ROOT = Path(__file__).resolve().parents[2]

HEARTBEAT_INTERVAL = 1
"""Seconds between heartbeats in the tests (production: 60, see the README)."""
GRACE_PERIOD = 1
"""Seconds without a heartbeat before a RUNNING trial is stale in the tests (production: 180+).

Safe here because one worker runs at a time: the only RUNNING trials another process checks
are those of the killed worker. SQLite stores the heartbeat to the second, so a trial there
becomes stale 2-3 s after its process died."""
MAX_RETRY = 3

_POLL = 0.02

KILL_SEED_ENV = "OPTUNA_EXT_RESUME_KILL_SEED"
"""Environment variable: a seed added to every test's kill points (default none), to try other
points than CI does, e.g. ``for s in 1 2 3; do OPTUNA_EXT_RESUME_KILL_SEED=$s pytest ...``."""


def kill_rng(method: str, storage: str) -> random.Random:
    """The random source of a test's kill points: seeded by the method and the storage."""
    extra = os.environ.get(KILL_SEED_ENV, "")
    return random.Random(f"{method}-{storage}" + (f"-{extra}" if extra else ""))


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The storage the workers use: heartbeats, and Optuna's retry of stale trials."""
    return optuna.storages.RDBStorage(
        url,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        grace_period=GRACE_PERIOD,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
            max_retry=MAX_RETRY
        ),
    )


# -- in the worker ------------------------------------------------------------------------


class Killer:
    """The worker's end of a :class:`Hook`: ``killer(point)`` dies when ``point`` is planned."""

    def __init__(self, point: str | None, storage: optuna.storages.BaseStorage | None = None):
        self.point = point
        self._storage = storage

    def __call__(self, point: str, trial_id: int | None = None) -> None:
        if point != self.point:
            return
        if trial_id is not None and self._storage is not None:
            # The heartbeat thread records its first beat concurrently with the objective:
            # die only once it is in the storage, as a long-running trial would.
            _wait_for_heartbeat(self._storage, trial_id)
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def _wait_for_heartbeat(storage: optuna.storages.BaseStorage, trial_id: int) -> None:
    backend = getattr(storage, "_backend", storage)
    if not isinstance(backend, optuna.storages.RDBStorage) or backend.heartbeat_interval is None:
        return
    from optuna.storages._rdb import models

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        session = backend.scoped_session()
        try:
            if models.TrialHeartbeatModel.where_trial_id(trial_id, session) is not None:
                return
        finally:
            session.close()
        time.sleep(_POLL)
    raise TimeoutError(f"trial id {trial_id} got no heartbeat")


# -- in the test --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Hook:
    """The worker kills itself at decision point ``point``."""

    point: str


@dataclasses.dataclass(frozen=True)
class External:
    """The parent kills the worker ``delay`` s after ``finished`` trials are COMPLETE or PRUNED."""

    finished: int
    delay: float


Plan = Hook | External


@dataclasses.dataclass
class Kill:
    """What one kill left in the storage."""

    plan: Plan
    finished: dict[int, FrozenTrial]
    """The finished (COMPLETE, PRUNED, FAIL) trials right after the kill, by number."""
    running: list[FrozenTrial]
    """The trials the killed process left RUNNING."""
    stale: list[int]
    """The numbers of the RUNNING trials that had a heartbeat (so that Optuna fails them)."""
    study_system_attrs: dict[str, Any]
    """The study's system attrs right after the kill."""


@dataclasses.dataclass
class Outcome:
    kills: list[Kill]
    trials: list[FrozenTrial]
    """The trials of the finished study, by number."""
    log: str


Consistency = Callable[[sqlalchemy.engine.Connection], bool]


def no_running_trial_without_heartbeat(conn: sqlalchemy.engine.Connection) -> bool:
    """No RUNNING trial lacks a heartbeat (one without is never failed by Optuna)."""
    return (
        _count(
            conn,
            "SELECT COUNT(*) FROM trials t WHERE t.state = 'RUNNING' AND NOT EXISTS "
            "(SELECT 1 FROM trial_heartbeats h WHERE h.trial_id = t.trial_id)",
        )
        == 0
    )


def no_running_trial_without_system_attr(key: str) -> Consistency:
    """No RUNNING trial lacks the trial system attr ``key``."""

    def check(conn: sqlalchemy.engine.Connection) -> bool:
        return (
            _count(
                conn,
                "SELECT COUNT(*) FROM trials t WHERE t.state = 'RUNNING' AND NOT EXISTS "
                "(SELECT 1 FROM trial_system_attributes a WHERE a.trial_id = t.trial_id "
                "AND a.key = :key)",
                key=key,
            )
            == 0
        )

    return check


def _count(conn: sqlalchemy.engine.Connection, sql: str, **params: Any) -> int:
    return int(conn.execute(sqlalchemy.text(sql), params).scalar_one())


def _engine(url: str) -> sqlalchemy.engine.Engine:
    if url.startswith("sqlite"):
        # Short lock waits: a worker frozen inside a commit holds SQLite's lock.
        return sqlalchemy.create_engine(
            url, connect_args={"timeout": 0.2}, poolclass=sqlalchemy.pool.NullPool
        )
    return sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)


def load_trials(url: str) -> list[FrozenTrial]:
    """The trials of the only study in ``url``, read with a plain storage (no heartbeat)."""
    return _load(url)[0]


def _load(url: str) -> tuple[list[FrozenTrial], dict[str, Any]]:
    storage = optuna.storages.RDBStorage(url, skip_compatibility_check=True)
    try:
        study = optuna.load_study(study_name=None, storage=storage)
        attrs = storage.get_study_system_attrs(study._study_id)
        return study.get_trials(deepcopy=True), attrs
    finally:
        storage.remove_session()
        storage.engine.dispose()


def _wait_until_stale(url: str, numbers: Sequence[int], timeout: float = 30.0) -> None:
    if not numbers:
        return
    storage = optuna.storages.RDBStorage(
        url,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        grace_period=GRACE_PERIOD,
        skip_compatibility_check=True,
    )
    try:
        study_id = storage.get_all_studies()[0]._study_id
        wanted = {storage.get_trial_id_from_study_id_trial_number(study_id, n) for n in numbers}
        deadline = time.monotonic() + timeout
        while not wanted <= set(storage._get_stale_trial_ids(study_id)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"trials {list(numbers)} did not become stale")
            time.sleep(0.1)
    finally:
        storage.remove_session()
        storage.engine.dispose()


class _Zygote:
    """The process the workers are forked from (see ``_zygote.py``), one per test process."""

    _instance: _Zygote | None = None

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.resume_tests._zygote"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            text=True,
        )

    @classmethod
    def get(cls) -> _Zygote:
        if cls._instance is None or cls._instance.proc.poll() is not None:
            cls._instance = cls()
            atexit.register(cls._instance.close)
        return cls._instance

    def start(self, argv: Sequence[str], log: Path) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"argv": list(argv), "log": str(log)}) + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


class _Worker:
    def __init__(self, argv: Sequence[str], log_dir: Path, index: int) -> None:
        self.out_path = log_dir / f"worker-{index}.log"
        self._status = Path(f"{self.out_path}.status")
        _Zygote.get().start(argv, self.out_path)
        pid_path = Path(f"{self.out_path}.pid")
        deadline = time.monotonic() + 120
        while not pid_path.exists():
            if time.monotonic() > deadline or _Zygote.get().proc.poll() is not None:
                raise RuntimeError("the zygote did not start the worker")
            time.sleep(0.005)
        self.pid = int(pid_path.read_text())

    def running(self) -> bool:
        return not self._status.exists()

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.running():
            if time.monotonic() > deadline:
                self.signal(signal.SIGKILL)
                raise TimeoutError(f"the worker ran for more than {timeout} s:\n{self.output()}")
            time.sleep(_POLL)
        return int(self._status.read_text())

    def output(self) -> str:
        return self.out_path.read_text() if self.out_path.exists() else ""

    def signal(self, signum: int) -> None:
        if self.running():
            os.kill(self.pid, signum)

    def stop_and_kill(
        self, engine: sqlalchemy.engine.Engine, consistent: Consistency | None
    ) -> None:
        """Freeze the worker; kill it if the storage is consistent, else let it run a bit."""
        for _ in range(500):
            self.signal(signal.SIGSTOP)
            ok = True
            if consistent is not None:
                try:
                    with engine.connect() as conn:
                        ok = consistent(conn)
                except sqlalchemy.exc.OperationalError:
                    ok = False  # SQLite locked by the frozen worker
            if ok:
                self.signal(signal.SIGKILL)  # also ends a stopped process
                return
            self.signal(signal.SIGCONT)
            time.sleep(0.003)
        raise AssertionError("the worker never stopped at a consistent point")


def run_with_kills(
    argv: Sequence[str],
    url: str,
    plans: Sequence[Plan],
    log_dir: Path,
    *,
    consistent: Consistency | None,
    heartbeat: bool,
    timeout: float = 180.0,
) -> Outcome:
    """Run the worker ``argv`` to its end on ``url``, killed once per plan, in order.

    Args:
        argv:
            The worker's arguments after the module name (method, storage URL, ...).
        url:
            The storage URL the worker uses (its database must hold only this study).
        plans:
            The kills, in the order they happen; each must happen (an assertion otherwise).
        log_dir:
            Where the workers' outputs are written.
        consistent:
            For :class:`External` kills: when the frozen worker may be killed (see above).
        heartbeat:
            Whether the method's trials run under Optuna's heartbeat; if so, each restart
            waits until the killed process's RUNNING trials are stale.
        timeout:
            Seconds one worker process may take.
    """
    kills: list[Kill] = []
    logs: list[str] = []
    engine = _engine(url)
    try:
        for index, plan in enumerate([*plans, None]):
            extra = ["--kill", plan.point] if isinstance(plan, Hook) else []
            worker = _Worker([*argv, *extra], log_dir, index)
            if isinstance(plan, External):
                _wait_for_finished(engine, worker, plan.finished, timeout)
                time.sleep(plan.delay)
                assert worker.running(), (
                    f"the worker ended before the kill {plan}:\n{worker.output()}"
                )
                worker.stop_and_kill(engine, consistent)
            rc = worker.wait(timeout)
            logs.append(worker.output())
            if plan is None:
                assert rc == 0, f"the last worker failed (rc={rc}):\n{worker.output()}"
                break
            assert rc == -signal.SIGKILL, (
                f"the worker was not killed at {plan} (rc={rc}):\n{worker.output()}"
            )
            trials, study_attrs = _load(url)
            running = [t for t in trials if t.state == TrialState.RUNNING]
            stale = _with_heartbeat(engine, running) if heartbeat else []
            kills.append(
                Kill(
                    plan=plan,
                    finished={t.number: t for t in trials if t.state.is_finished()},
                    running=running,
                    stale=stale,
                    study_system_attrs=study_attrs,
                )
            )
            if heartbeat:
                _wait_until_stale(url, stale)
    finally:
        engine.dispose()
    return Outcome(kills=kills, trials=load_trials(url), log="\n".join(logs))


def _with_heartbeat(engine: sqlalchemy.engine.Engine, trials: Sequence[FrozenTrial]) -> list[int]:
    with engine.connect() as conn:
        ids = {
            int(row[0])
            for row in conn.execute(sqlalchemy.text("SELECT trial_id FROM trial_heartbeats"))
        }
    return [t.number for t in trials if t._trial_id in ids]


def _wait_for_finished(
    engine: sqlalchemy.engine.Engine, worker: _Worker, finished: int, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    sql = "SELECT COUNT(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED')"
    while True:
        try:
            with engine.connect() as conn:
                if _count(conn, sql) >= finished:
                    return
        except sqlalchemy.exc.OperationalError:
            pass  # the table does not exist yet, or SQLite is locked
        if not worker.running():
            raise AssertionError(
                f"the worker ended before {finished} trials were finished:\n{worker.output()}"
            )
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {finished} trials were finished in {timeout} s")
        time.sleep(_POLL)


# -- checks -------------------------------------------------------------------------------


def retried_numbers(trials: Sequence[FrozenTrial]) -> set[int]:
    """The numbers of the trials that a later trial retries (Optuna's ``retry_history``)."""
    return {
        int(n)
        for t in trials
        for n in t.system_attrs.get("retry_history", ())
        if isinstance(n, int)
    }


def logical_trials(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The trials without those superseded by a retry: what an uninterrupted run would hold."""
    retried = retried_numbers(trials)
    return [t for t in trials if t.number not in retried]


def assert_no_finished_trial_lost(outcome: Outcome) -> None:
    """Every trial finished before a kill is still there, in the same state, with its values."""
    final = {t.number: t for t in outcome.trials}
    for kill in outcome.kills:
        for number, before in kill.finished.items():
            after = final.get(number)
            assert after is not None, f"trial {number} was lost after the kill {kill.plan}"
            assert after.state == before.state, (number, before.state, after.state)
            assert after.values == before.values, (number, before.values, after.values)
            assert after.params == before.params, (number, before.params, after.params)
            assert after.intermediate_values == before.intermediate_values, number


def assert_stale_trials_retried(outcome: Outcome) -> int:
    """Each RUNNING trial with a heartbeat a kill left was failed and retried with its params.

    The retry is Optuna's copy (system attr ``retry_history`` ending with the trial's number);
    it has the original's parameters, and it (or, if it was killed in turn, its own retry)
    finished. Returns the number of retries checked.
    """
    by_number = {t.number: t for t in outcome.trials}
    copies = {
        int(t.system_attrs["retry_history"][-1]): t
        for t in outcome.trials
        if t.system_attrs.get("retry_history")
    }
    checked = 0
    for kill in outcome.kills:
        for number in kill.stale:
            original = by_number[number]
            assert original.state == TrialState.FAIL, (number, original.state)
            copy = copies.get(number)
            assert copy is not None, f"trial {number}, stale after {kill.plan}, was not retried"
            assert copy.system_attrs["failed_trial"] == original.system_attrs.get(
                "failed_trial", number
            )
            for name, value in original.params.items():
                assert copy.params[name] == value, (number, name, value, copy.params[name])
            while copy.state == TrialState.FAIL and copy.number in copies:
                copy = copies[copy.number]  # the retry was killed too: follow its retry
            assert copy.state in (TrialState.COMPLETE, TrialState.PRUNED), (
                number,
                copy.number,
                copy.state,
            )
            checked += 1
    return checked
