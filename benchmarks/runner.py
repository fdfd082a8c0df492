"""The runner: every method x problem x seed as one job with one study in one storage.

A job's study is ``{prefix}/{problem}/{method}/seed{seed}``; the extra studies of a job (a
take-over's lease, the run of a method that restarts from scratch) are named below it. A job
is finished when its study holds the run's summary (user attr ``bench:summary``), which is all
that ``report`` reads. Workers claim jobs through the storage (see :mod:`benchmarks._lease`),
so a run can be interrupted and started again (finished jobs are skipped, an interrupted
trial-based search resumes), and several workers, on one machine or many, can share one
PostgreSQL database.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import datetime
import itertools
import math
import multiprocessing
import os
import platform
import sys
import time
from typing import Any
from typing import TYPE_CHECKING
import warnings

import optuna
from optuna.trial import TrialState

from benchmarks._lease import BUDGET_KEY
from benchmarks._lease import claim
from benchmarks._lease import delete_attempts_before
from benchmarks._lease import ERROR_KEY
from benchmarks._lease import job_state
from benchmarks._lease import JobState
from benchmarks._lease import Lease
from benchmarks._lease import LeaseLost
from benchmarks._lease import new_owner_id
from benchmarks._lease import SUMMARY_KEY
from benchmarks.context import Event
from benchmarks.context import INTERRUPTED_ATTR
from benchmarks.context import Outcome
from benchmarks.context import RunContext
from benchmarks.methods import METHODS
from benchmarks.problems import BUDGET_NAMES
from benchmarks.problems import PROBLEMS
from optuna_ext._storage import mask_url
from optuna_ext._storage import open_storage


if TYPE_CHECKING:
    from optuna.storages import BaseStorage
    from optuna.study._frozen import FrozenStudy

    from benchmarks.methods import Method
    from benchmarks.problems import Budget
    from benchmarks.problems import Problem


DEFAULT_PREFIX = "bench"
SUMMARY_VERSION = 1
CONVERGENCE_TOLERANCE = 0.005
"""A search has converged (paper 004's "trials to convergence") at the first trial after which
its best validation accuracy is within this of its final best."""
_MAX_CURVE_POINTS = 64


class BenchmarkError(ValueError):
    """A run that cannot start as asked (one line, for the command line)."""


@dataclasses.dataclass(frozen=True)
class Job:
    """One method on one problem with one seed."""

    method: str
    problem: str
    seed: int

    def study_name(self, prefix: str = DEFAULT_PREFIX) -> str:
        return f"{prefix}/{self.problem}/{self.method}/seed{self.seed}"


def make_jobs(methods: Sequence[str], problems: Sequence[str], seeds: Sequence[int]) -> list[Job]:
    """Every applicable (method, problem, seed), problem by problem, seed by seed.

    Raises:
        BenchmarkError: An unknown method or problem, or a negative seed.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise BenchmarkError(
            f"Unknown method(s) {unknown}; choose from {', '.join(METHODS)} (or 'all')."
        )
    unknown = [p for p in problems if p not in PROBLEMS]
    if unknown:
        raise BenchmarkError(
            f"Unknown problem(s) {unknown}; choose from {', '.join(PROBLEMS)} (or 'all')."
        )
    bad = [s for s in seeds if s < 0]
    if bad or not seeds:
        raise BenchmarkError(f"The seeds are {list(seeds)}, but must be one or more ints >= 0.")
    return [
        Job(method, problem, seed)
        for problem, seed, method in itertools.product(problems, seeds, methods)
        if METHODS[method].applies(PROBLEMS[problem])
    ]


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """What to run and where.

    Args:
        storage: The storage URL (SQLite for one worker; PostgreSQL or MySQL for several).
        jobs: The jobs (:func:`make_jobs`).
        budget: A name of :data:`~benchmarks.problems.BUDGET_NAMES`.
        prefix: The first part of every study name.
        progress: Whether to show progress bars.
        heartbeat: Seconds between a worker's heartbeats.
        stale_after: Seconds without a heartbeat after which a job is taken over.
        wait: Whether a worker with nothing left to claim waits for the jobs other workers
            hold (and takes them over if their workers die) instead of returning.
        poll: Seconds between two looks at the storage while waiting.
        command: The command line, stored in every summary.
    """

    storage: str
    jobs: tuple[Job, ...]
    budget: str = "small"
    prefix: str = DEFAULT_PREFIX
    progress: bool = True
    heartbeat: float = 10.0
    stale_after: float = 120.0
    wait: bool = True
    poll: float = 5.0
    command: str = ""

    def __post_init__(self) -> None:
        if self.budget not in BUDGET_NAMES:
            raise BenchmarkError(
                f"The budget is {self.budget!r}, but must be one of {', '.join(BUDGET_NAMES)}."
            )
        if not self.heartbeat > 0 or not self.stale_after > 2 * self.heartbeat:
            raise BenchmarkError(
                f"The heartbeat is {self.heartbeat} s and the stale limit {self.stale_after} s, "
                "but they must be > 0 with `stale_after > 2 * heartbeat`."
            )
        if not self.prefix or self.prefix.endswith("/"):
            raise BenchmarkError(
                f"The study prefix is {self.prefix!r}, but must be non-empty and not end in '/'."
            )


@dataclasses.dataclass
class WorkerReport:
    """What one worker did."""

    owner: str
    ran: list[str] = dataclasses.field(default_factory=list)
    failed: dict[str, str] = dataclasses.field(default_factory=dict)
    lost: list[str] = dataclasses.field(default_factory=list)
    finished_before: int = 0


def machine() -> str:
    """The machine, in words (no host name)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch "
        f"{torch.__version__} (CPU, 1 thread), optuna {optuna.__version__}"
    )


# --------------------------------------------------------------------------------------------
# The summary of a run.


def _round(value: float | None, digits: int = 4) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


def _significant(value: float, digits: int = 4) -> float:
    return float(f"{value:.{digits}g}")


def _thin(curve: list[list[float]]) -> list[list[float]]:
    """At most ``_MAX_CURVE_POINTS`` points, the first and last kept (a step curve)."""
    if len(curve) <= _MAX_CURVE_POINTS:
        return curve
    step = (len(curve) - 1) / (_MAX_CURVE_POINTS - 1)
    return [curve[round(i * step)] for i in range(_MAX_CURVE_POINTS)]


def curve_and_marks(
    events: Sequence[Event], target: float
) -> tuple[list[list[float]], float | None, float | None]:
    """The best-so-far curve ``[[epochs spent, best validation accuracy], ...]`` (a point at
    each improvement), and the epochs and seconds spent when the target was first reached."""
    curve: list[list[float]] = []
    best = -math.inf
    spent = 0.0
    to_target: tuple[float, float] | None = None
    for event in events:
        spent += event.epochs
        if event.value is None:
            continue
        if event.value > best:
            best = event.value
            curve.append([round(spent, 2), round(best, 4)])
        if to_target is None and event.value >= target:
            to_target = (round(spent, 2), round(event.clock, 1))
    if curve and curve[-1][0] != round(spent, 2):
        curve.append([round(spent, 2), curve[-1][1]])
    return (_thin(curve), *(to_target if to_target is not None else (None, None)))


def trials_to_convergence(events: Sequence[Event]) -> int | None:
    """The training runs (in order) after which the best validation accuracy is within
    :data:`CONVERGENCE_TOLERANCE` of the final best."""
    best_per_trial: dict[int, float] = {}
    for event in events:
        if event.value is not None:
            best_per_trial[event.trial] = max(
                best_per_trial.get(event.trial, -math.inf), event.value
            )
    if not best_per_trial:
        return None
    final = max(best_per_trial.values())
    running = -math.inf
    for i, value in enumerate(best_per_trial.values()):
        running = max(running, value)
        if running >= final - CONVERGENCE_TOLERANCE:
            return i + 1
    return len(best_per_trial)  # pragma: no cover (the last trial always qualifies)


def summarize(
    *,
    job: Job,
    method: Method,
    problem: Problem,
    budget_name: str,
    budget: Budget,
    events: Sequence[Event],
    outcome: Outcome,
    lease: Lease,
    command: str,
) -> dict[str, Any]:
    """The compact record of a finished run (stored in the job study's user attrs)."""
    curve, epochs_to_target, seconds_to_target = curve_and_marks(events, problem.target)
    config = {
        k: (_significant(v) if isinstance(v, float) else v) for k, v in outcome.config.items()
    }
    return {
        "version": SUMMARY_VERSION,
        "method": job.method,
        "problem": job.problem,
        "seed": job.seed,
        "budget": budget_name,
        "budget_epochs": budget.total,
        "epochs_per_run": budget.epochs,
        "target": problem.target,
        "config": config,
        "test_accuracy": _round(outcome.test_accuracy),
        "valid_accuracy": _round(outcome.valid_accuracy),
        "train_accuracy": _round(outcome.train_accuracy),
        "epochs_spent": round(sum(e.epochs for e in events), 2),
        "final_epochs": outcome.final_epochs,
        "wall_seconds": round(lease.elapsed(), 1),
        "trials": outcome.trials,
        "trials_to_convergence": 1 if method.online else trials_to_convergence(events),
        "epochs_to_target": epochs_to_target,
        "seconds_to_target": seconds_to_target,
        "params_optimized": method.tunes(problem),
        "online": method.online,
        "curve": curve,
        "lr_per_epoch": (
            None
            if outcome.lr_per_epoch is None
            else [_significant(x) for x in outcome.lr_per_epoch]
        ),
        "notes": outcome.notes,
        "sessions": lease.sessions,
        "command": command,
        "machine": machine(),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


# --------------------------------------------------------------------------------------------
# One job.


def _fail_running(storage: BaseStorage, study_name: str) -> None:
    """Fail the trials an earlier session of this job left RUNNING (they are run again)."""
    study_id = storage.get_study_id_from_name(study_name)
    for trial in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_user_attr(trial._trial_id, INTERRUPTED_ATTR, True)
        try:
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue


def run_job(
    storage: BaseStorage,
    job: Job,
    lease: Lease,
    config: RunConfig,
    *,
    bar: Any = None,
) -> dict[str, Any]:
    """Run (or resume) ``job`` under ``lease`` and store its summary.

    Raises:
        LeaseLost: Another worker took the job over.
    """
    method = METHODS[job.method]
    problem = PROBLEMS[job.problem]
    budget = problem.budget(config.budget)
    name = job.study_name(config.prefix)
    if lease.generation > 0:
        if method.resumable:
            _fail_running(storage, name)
        else:
            delete_attempts_before(storage, name, lease.generation)
            lease.restart_clock()
    ctx = RunContext(
        problem=problem,
        budget=budget,
        seed=job.seed,
        storage=storage,
        study_name=name,
        lease=lease,
        bar=bar,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        outcome = method.run(ctx)
    summary = summarize(
        job=job,
        method=method,
        problem=problem,
        budget_name=config.budget,
        budget=budget,
        events=ctx.events,
        outcome=outcome,
        lease=lease,
        command=config.command,
    )
    if not lease.finish(summary):
        raise LeaseLost(f"Job {name!r} was taken over before its summary was stored.")
    return summary


# --------------------------------------------------------------------------------------------
# Workers.


def scan(storage: BaseStorage, prefix: str) -> dict[str, FrozenStudy]:
    """Every study of the benchmark (name starts with ``prefix/``), by name."""
    return {
        s.study_name: s for s in storage.get_all_studies() if s.study_name.startswith(prefix + "/")
    }


def _check_budgets(states: Sequence[JobState], budget: str) -> None:
    clashes = [
        s.name for s in states if s.status != "free" and s.attrs.get(BUDGET_KEY, budget) != budget
    ]
    if clashes:
        other = states[[s.name for s in states].index(clashes[0])].attrs[BUDGET_KEY]
        raise BenchmarkError(
            f"The storage holds {len(clashes)} of these jobs at budget {other!r} (e.g. "
            f"{clashes[0]!r}), but this run is at budget {budget!r}: use another storage or "
            "another --study-prefix."
        )


def _one_line(summary: dict[str, Any]) -> str:
    return (
        f"test {summary['test_accuracy']}, {summary['epochs_spent']:g} epochs, "
        f"{summary['trials']} trials, {summary['wall_seconds']:.0f} s"
    )


def work(config: RunConfig, *, owner: str | None = None, log: Any = None) -> WorkerReport:
    """Claim and run jobs of ``config`` until each is finished (or, with ``wait=False``, until
    none is left to claim). Each job is tried at most once per call.

    Args:
        config: What to run.
        owner: This worker's id (default: host, process and a random part).
        log: Where to print a line per job when there are no progress bars (default: stdout).
    """
    import torch

    torch.set_num_threads(1)
    # The first optimizer imports torch._dynamo (seconds): not inside the first job's clock.
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    log = sys.stdout if log is None else log
    storage = open_storage(config.storage)
    report = WorkerReport(owner=owner or new_owner_id())
    names = {job.study_name(config.prefix): job for job in config.jobs}
    first_seen: dict[tuple[str, int], float] = {}
    tried: set[str] = set()
    jobs_bar = None
    if config.progress:
        from tqdm.auto import tqdm

        jobs_bar = tqdm(total=len(names), desc="jobs", unit="job", dynamic_ncols=True)
    first = True
    try:
        while True:
            studies = scan(storage, config.prefix)
            states = [
                job_state(n, studies, stale_after=config.stale_after, first_seen=first_seen)
                for n in names
            ]
            n_finished = sum(s.status == "finished" for s in states)
            if first:
                _check_budgets(states, config.budget)
                report.finished_before = n_finished
                first = False
            if jobs_bar is not None:
                jobs_bar.n = n_finished
                jobs_bar.refresh()
            todo = [s for s in states if s.status != "finished" and s.name not in tried]
            if not todo:
                break
            lease = None
            for state in todo:
                lease = claim(
                    storage,
                    state,
                    owner=report.owner,
                    budget=config.budget,
                    interval=config.heartbeat,
                )
                if lease is not None:
                    break
            if lease is None:
                if not config.wait:
                    break
                time.sleep(config.poll)
                continue
            tried.add(lease.job)
            _run_claimed(storage, names[lease.job], lease, config, report, jobs_bar, log)
    finally:
        if jobs_bar is not None:
            jobs_bar.close()
    return report


def _run_claimed(
    storage: BaseStorage,
    job: Job,
    lease: Lease,
    config: RunConfig,
    report: WorkerReport,
    jobs_bar: Any,
    log: Any,
) -> None:
    name = lease.job
    bar = None
    if jobs_bar is not None:
        from tqdm.auto import tqdm

        total = PROBLEMS[job.problem].budget(config.budget).total
        short = name.removeprefix(config.prefix + "/")
        bar = tqdm(total=total, desc=short, unit="epoch", leave=False, dynamic_ncols=True)
    try:
        summary = run_job(storage, job, lease, config, bar=bar)
    except LeaseLost:
        report.lost.append(name)
        print(f"{name}: taken over by another worker", file=log, flush=True)
        return
    except KeyboardInterrupt:
        lease.release()
        raise
    except Exception as e:
        if lease.lost():  # its studies changed under it: not an error of the job
            report.lost.append(name)
            print(f"{name}: taken over by another worker ({type(e).__name__})", file=log)
            return
        lease.release()
        message = f"{type(e).__name__}: {e}"
        report.failed[name] = message
        try:
            storage.set_study_user_attr(lease.study_id, ERROR_KEY, message[:2000])
        except Exception:
            pass
        print(f"{name}: FAILED: {message}", file=log, flush=True)
        return
    finally:
        if bar is not None:
            bar.close()
    report.ran.append(name)
    if jobs_bar is not None:
        jobs_bar.set_postfix_str(f"last: {name.removeprefix(config.prefix + '/')}")
    else:
        print(f"{name}: {_one_line(summary)}", file=log, flush=True)


def _worker_main(config: RunConfig, index: int) -> None:
    report = work(dataclasses.replace(config, progress=False), owner=None)
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything is in the storage: skip the interpreter's teardown (seconds with torch).
    os._exit(1 if report.failed else 0)


def run(config: RunConfig, *, workers: int = 1) -> int:
    """Run the jobs with ``workers`` processes; returns 0 when every job is finished.

    One worker runs in this process (with progress bars). Several are started as processes
    that share the storage (PostgreSQL or MySQL: SQLite is refused, it is not made for several
    writers), while this process shows the progress; start the same command on other machines
    with the same storage to add workers there.

    Raises:
        BenchmarkError: ``workers < 1``, or several workers on SQLite.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise BenchmarkError(f"The number of workers is {workers!r}, but must be an int >= 1.")
    if workers > 1 and config.storage.startswith("sqlite"):
        raise BenchmarkError(
            "Several workers on SQLite are refused: SQLite is not made for several writers "
            "(Optuna's FAQ; 'database is locked'). Use PostgreSQL "
            "(postgresql+psycopg://USER@HOST:5432/DB) or MySQL for --workers > 1, or run one "
            "worker."
        )
    if workers == 1:
        report = work(config)
        failed = report.failed
    else:
        failed = _run_processes(config, workers)
    storage = open_storage(config.storage)
    studies = scan(storage, config.prefix)
    names = [job.study_name(config.prefix) for job in config.jobs]
    done = sum(SUMMARY_KEY in studies[n].user_attrs for n in names if n in studies)
    print(
        f"{done} of {len(names)} jobs finished in {mask_url(config.storage)}"
        + (f"; {len(failed)} failed (run again to retry): {', '.join(failed)}" if failed else "")
    )
    return 0 if done == len(names) else 1


def _run_processes(config: RunConfig, workers: int) -> dict[str, str]:
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_worker_main, args=(config, i), name=f"bench-worker-{i}")
        for i in range(workers)
    ]
    for process in processes:
        process.start()
    storage = open_storage(config.storage)
    names = [job.study_name(config.prefix) for job in config.jobs]
    bar = None
    if config.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(names), desc=f"jobs ({workers} workers)", unit="job")
    try:
        while any(p.is_alive() for p in processes):
            if bar is not None:
                studies = scan(storage, config.prefix)
                bar.n = sum(SUMMARY_KEY in studies[n].user_attrs for n in names if n in studies)
                bar.refresh()
            time.sleep(2.0)
    except KeyboardInterrupt:
        for process in processes:
            process.join(timeout=30)
        raise
    finally:
        if bar is not None:
            bar.close()
        for process in processes:
            process.join()
    studies = scan(storage, config.prefix)
    return {
        n: str(studies[n].user_attrs[ERROR_KEY])
        for n in names
        if n in studies
        and ERROR_KEY in studies[n].user_attrs
        and SUMMARY_KEY not in studies[n].user_attrs
    }


# --------------------------------------------------------------------------------------------
# Reading back.


def load_summaries(storage: str | BaseStorage, prefix: str = DEFAULT_PREFIX) -> list[dict]:
    """Every stored run summary of the benchmark (what ``report`` reads)."""
    if isinstance(storage, str):
        storage = open_storage(storage)
    return [
        dict(s.user_attrs[SUMMARY_KEY])
        for s in scan(storage, prefix).values()
        if SUMMARY_KEY in s.user_attrs
    ]


def job_states(
    storage: str | BaseStorage, jobs: Sequence[Job], *, prefix: str, stale_after: float
) -> list[JobState]:
    """The state of each job in the storage."""
    if isinstance(storage, str):
        storage = open_storage(storage)
    studies = scan(storage, prefix)
    return [
        job_state(job.study_name(prefix), studies, stale_after=stale_after, first_seen={})
        for job in jobs
    ]
