"""Claiming benchmark jobs through the storage, so that many workers can share one database.

A job (one method, problem and seed) owns the study ``{job}``. Every claim is the creation of
a study, which the storage makes atomic (a unique study name): the first claim creates
``{job}`` itself (generation 0), a take-over creates ``{job}/lease{k}`` (generation ``k``).
Whoever created the study of the highest generation owns the job. The owner writes a
heartbeat into the job study's user attrs (``bench:lease``) every few seconds; a job whose
heartbeat is older than the stale limit (or whose owner ran on this host under a process id
that is gone, or who released it when interrupted) may be taken over by the next worker. The
previous owner notices the new generation at its next heartbeat and stops
(:class:`LeaseLost`). A job is finished when its summary (``bench:summary``) is stored.

Only the storage is shared, so the same protocol works for worker processes on one machine
and on several (the clocks must agree to well within the stale limit).
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import os
import socket
import threading
import time
from typing import Any
from typing import TYPE_CHECKING
import uuid

import optuna
from optuna.study import StudyDirection


if TYPE_CHECKING:
    from optuna.storages import BaseStorage
    from optuna.study._frozen import FrozenStudy


LEASE_KEY = "bench:lease"
"""Study user attr of a job study: the owner's heartbeat."""
SUMMARY_KEY = "bench:summary"
"""Study user attr of a job study: the run's summary; its presence means "finished"."""
BUDGET_KEY = "bench:budget"
"""Study user attr of a job study: the budget level it is run at."""
ERROR_KEY = "bench:error"
"""Study user attr of a job study: the last error of a run that failed."""
ROLE_KEY = "bench:role"
"""Study user attr of the extra studies of a job (``lease`` or ``attempt``)."""

_LEASE = "/lease"
_ATTEMPT = "/attempt"


class LeaseLost(BaseException):
    """Another worker has taken over this worker's job: stop at once, write nothing more.

    A ``BaseException`` (like ``KeyboardInterrupt``), so that the methods' own ``except
    Exception`` handlers (PBT's failed segments, Hyperdyn's failed candidates) let it through.
    """


def new_owner_id() -> str:
    """An id for this worker: host, process and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def lease_name(job: str, generation: int) -> str:
    return job if generation == 0 else f"{job}{_LEASE}{generation}"


def attempt_name(job: str, generation: int) -> str:
    """The extra study of the methods that restart from scratch when a job is taken over."""
    return f"{job}{_ATTEMPT}{generation}"


def _numbered(names: set[str], prefix: str) -> list[int]:
    out = []
    for name in names:
        tail = name[len(prefix) :] if name.startswith(prefix) else ""
        if tail.isdigit():
            out.append(int(tail))
    return out


@dataclasses.dataclass(frozen=True)
class JobState:
    """What the storage says about one job (see :func:`job_state`).

    Attributes:
        name: The job study's name.
        status: ``"free"`` (no study), ``"finished"`` (summary stored), ``"running"``
            (a live owner), ``"stale"`` (the owner is gone) or ``"released"`` (the owner
            stopped without finishing).
        generation: The current generation (0 for the first claim).
        attrs: The job study's user attrs (empty when free).
        extra: The names of its lease and attempt studies.
    """

    name: str
    status: str
    generation: int
    attrs: Mapping[str, Any]
    extra: tuple[str, ...]

    @property
    def claimable(self) -> bool:
        return self.status in ("free", "stale", "released")

    @property
    def lease(self) -> Mapping[str, Any]:
        value = self.attrs.get(LEASE_KEY)
        return value if isinstance(value, Mapping) else {}


def _pid_gone(lease: Mapping[str, Any]) -> bool:
    """Whether the owner ran on this host under a process id that no longer exists."""
    if lease.get("host") != socket.gethostname():
        return False
    pid = lease.get("pid")
    if not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def job_state(
    name: str,
    studies: Mapping[str, FrozenStudy],
    *,
    stale_after: float,
    first_seen: dict[tuple[str, int], float],
    now: float | None = None,
) -> JobState:
    """Classify job ``name`` from a listing of the storage's studies.

    Args:
        name: The job study's name.
        studies: Every study of the storage by name (``storage.get_all_studies()``).
        stale_after: Seconds without a heartbeat after which an owner counts as gone.
        first_seen: The caller's memory of when it first saw each (job, generation) without
            a heartbeat (an owner killed between its claim and its first heartbeat would
            otherwise hold the job for ever); updated here.
        now: The current time (``time.time()``).
    """
    now = time.time() if now is None else now
    study = studies.get(name)
    extra = tuple(
        sorted(n for n in studies if n.startswith(name + _LEASE) or n.startswith(name + _ATTEMPT))
    )
    if study is None:
        return JobState(name, "free", 0, {}, extra)
    attrs = dict(study.user_attrs)
    generation = max(_numbered(set(extra), name + _LEASE), default=0)
    if SUMMARY_KEY in attrs:
        return JobState(name, "finished", generation, attrs, extra)
    lease = attrs.get(LEASE_KEY)
    if not isinstance(lease, Mapping) or int(lease.get("gen", -1)) != generation:
        # Claimed, but the owner has not written its first heartbeat yet.
        seen = first_seen.setdefault((name, generation), now)
        status = "stale" if now - seen > stale_after else "running"
        return JobState(name, status, generation, attrs, extra)
    if lease.get("released"):
        status = "released"
    elif _pid_gone(lease) or now - float(lease.get("beat", 0.0)) > stale_after:
        status = "stale"
    else:
        status = "running"
    return JobState(name, status, generation, attrs, extra)


def _create(storage: BaseStorage, name: str) -> int | None:
    try:
        return storage.create_new_study([StudyDirection.MAXIMIZE], name)
    except optuna.exceptions.DuplicatedStudyError:
        return None


class Lease:
    """This worker's hold on one job: the heartbeat thread and the clock of the run.

    Use :func:`claim` to get one. ``elapsed()`` is the run's wall time: the time of the
    earlier sessions of the job (when the method resumes them) plus this session's.
    """

    def __init__(
        self,
        *,
        storage: BaseStorage,
        job: str,
        study_id: int,
        generation: int,
        owner: str,
        prior_elapsed: float,
        sessions: int,
        interval: float,
    ) -> None:
        self.storage = storage
        self.job = job
        self.study_id = study_id
        self.generation = generation
        self.owner = owner
        self.prior_elapsed = prior_elapsed
        self.sessions = sessions
        self._interval = interval
        self._start = time.monotonic()
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._write_lock = threading.Lock()

    # -- clock and heartbeat -------------------------------------------------------------

    def elapsed(self) -> float:
        """Seconds of the run so far (earlier sessions included when resumed)."""
        return self.prior_elapsed + time.monotonic() - self._start

    def restart_clock(self) -> None:
        """Forget the earlier sessions' time (for a method that restarts from scratch)."""
        self.prior_elapsed = 0.0
        self._start = time.monotonic()

    @property
    def attempt_study_name(self) -> str:
        return attempt_name(self.job, self.generation)

    def _taken_over(self) -> bool:
        try:
            self.storage.get_study_id_from_name(lease_name(self.job, self.generation + 1))
        except KeyError:
            return False
        return True

    def beat(self, *, released: bool = False) -> None:
        """Write the heartbeat (unless the job was taken over, which marks the lease lost)."""
        with self._write_lock:
            if self._lost.is_set():
                return
            if self._taken_over():
                self._lost.set()
                return
            host, pid = socket.gethostname(), os.getpid()
            self.storage.set_study_user_attr(
                self.study_id,
                LEASE_KEY,
                {
                    "gen": self.generation,
                    "owner": self.owner,
                    "host": host,
                    "pid": pid,
                    "beat": time.time(),
                    "elapsed": round(self.elapsed(), 2),
                    "sessions": self.sessions,
                    "released": released,
                },
            )

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.beat()
            except Exception:  # a database hiccup: try again at the next beat
                continue
            if self._lost.is_set():
                return

    def start(self) -> None:
        self.beat()
        self._thread = threading.Thread(target=self._run, name=f"lease:{self.job}", daemon=True)
        self._thread.start()

    def _join(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def lost(self) -> bool:
        """Whether another worker has taken the job over (asks the storage if not known)."""
        if not self._lost.is_set():
            try:
                if self._taken_over():
                    self._lost.set()
            except Exception:
                pass
        return self._lost.is_set()

    def check(self) -> None:
        """Raise :class:`LeaseLost` when another worker has taken the job over."""
        if self._lost.is_set():
            raise LeaseLost(f"Job {self.job!r} was taken over by another worker.")

    # -- the end of a session --------------------------------------------------------------

    def release(self) -> None:
        """Stop the heartbeat and mark the job free for the next worker (interrupted run)."""
        self._join()
        try:
            self.beat(released=True)
        except Exception:
            pass  # the job becomes stale instead

    def finish(self, summary: Mapping[str, Any]) -> bool:
        """Store the summary (the job is then finished) and remove the lease studies.

        Returns:
            ``False`` (and stores nothing) when the job was taken over meanwhile.
        """
        self._join()
        with self._write_lock:
            if self._lost.is_set() or self._taken_over():
                self._lost.set()
                return False
            self.storage.set_study_user_attr(self.study_id, SUMMARY_KEY, dict(summary))
        _delete_names(
            self.storage, [lease_name(self.job, g) for g in range(1, self.generation + 1)]
        )
        return True


def _delete_names(storage: BaseStorage, names: list[str]) -> None:
    for name in names:
        try:
            storage.delete_study(storage.get_study_id_from_name(name))
        except KeyError:
            continue


def delete_attempts_before(storage: BaseStorage, job: str, generation: int) -> None:
    """Delete the attempt studies of earlier generations (their runs were abandoned)."""
    _delete_names(storage, [attempt_name(job, g) for g in range(generation)])


def claim(
    storage: BaseStorage,
    state: JobState,
    *,
    owner: str,
    budget: str,
    interval: float,
) -> Lease | None:
    """Try to take job ``state.name``; :obj:`None` when another worker was first.

    A free job is claimed by creating its study, a stale or released one by creating the
    lease study of the next generation. The heartbeat thread is started on success.
    """
    if not state.claimable:
        return None
    job = state.name
    generation = 0 if state.status == "free" else state.generation + 1
    created = _create(storage, lease_name(job, generation))
    if created is None:
        return None
    if generation == 0:
        storage.set_study_user_attr(created, BUDGET_KEY, budget)
        study_id = created
    else:
        storage.set_study_user_attr(created, ROLE_KEY, "lease")
        study_id = storage.get_study_id_from_name(job)
        if SUMMARY_KEY in storage.get_study_user_attrs(study_id):
            # Finished by its owner between our look and our claim: give the claim back.
            _delete_names(storage, [lease_name(job, generation)])
            return None
    old = state.lease
    lease = Lease(
        storage=storage,
        job=job,
        study_id=study_id,
        generation=generation,
        owner=owner,
        prior_elapsed=float(old.get("elapsed", 0.0)),
        sessions=int(old.get("sessions", 0)) + 1,
        interval=interval,
    )
    lease.start()
    return lease
