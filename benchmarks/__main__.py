"""``python -m benchmarks {run,report,list}``: the comparison of every method on every problem.

Run from the repository root::

    python -m benchmarks list
    python -m benchmarks run --budget full --seeds 0,1,2 --storage sqlite:///bench.db
    python -m benchmarks report --storage sqlite:///bench.db

See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import shlex
import sys

from benchmarks.methods import METHODS
from benchmarks.problems import BUDGET_NAMES
from benchmarks.problems import PROBLEMS
from benchmarks.runner import BenchmarkError
from benchmarks.runner import DEFAULT_PREFIX
from benchmarks.runner import make_jobs
from optuna_ext._storage import mask_url
from optuna_ext._storage import StorageError
from optuna_ext.cli._table import format_table


def _names(value: str, registry: Sequence[str], what: str) -> list[str]:
    if value.strip() == "all":
        return list(registry)
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise BenchmarkError(f"No {what} given; choose from {', '.join(registry)} or 'all'.")
    return names


def parse_seeds(value: str) -> list[int]:
    """``"0,1,2"`` or ``"0-2"`` (or a mix: ``"0-2,5"``)."""
    seeds: list[int] = []
    try:
        for part in value.split(","):
            part = part.strip()
            if "-" in part:
                low, high = (int(x) for x in part.split("-", 1))
                seeds.extend(range(low, high + 1))
            elif part:
                seeds.append(int(part))
    except ValueError:
        raise BenchmarkError(
            f"The seeds are {value!r}, but must be ints separated by ',' or ranges like '0-2'."
        ) from None
    return seeds


def _command(argv: Sequence[str], storage: str | None) -> str:
    shown = [mask_url(a) if storage is not None and a == storage else a for a in argv]
    return "python -m benchmarks " + shlex.join(shown)


def _add_selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--methods", default="all", help=f"comma-separated, or 'all' ({', '.join(METHODS)})"
    )
    parser.add_argument(
        "--problems", default="all", help=f"comma-separated, or 'all' ({', '.join(PROBLEMS)})"
    )
    parser.add_argument("--seeds", default="0,1,2", help="e.g. '0,1,2' or '0-2' (default 0,1,2)")
    parser.add_argument(
        "--budget",
        choices=BUDGET_NAMES,
        default="small",
        help="tiny: seconds per run (tests, CI); small: a quick look; full: the documented "
        "comparison (default: small)",
    )
    parser.add_argument(
        "--study-prefix",
        default=DEFAULT_PREFIX,
        help="first part of the study names PREFIX/PROBLEM/METHOD/seedSEED (default: bench)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Compare every method of optuna-ext and its baselines on the same "
        "problems, budgets and seeds; one study per method, problem and seed in one storage.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser("run", help="run (or resume) the jobs into a storage")
    _add_selection(run)
    run.add_argument(
        "--storage",
        required=True,
        help="SQLAlchemy URL: sqlite:///bench.db (one worker) or "
        "postgresql+psycopg://USER@HOST:5432/DB (several workers, several machines)",
    )
    run.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes on this machine (default 1; > 1 needs PostgreSQL or MySQL)",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument(
        "--stale-after",
        type=float,
        default=120.0,
        help="seconds without a heartbeat after which another worker takes a job over "
        "(default 120)",
    )
    run.add_argument(
        "--heartbeat", type=float, default=10.0, help="seconds between heartbeats (default 10)"
    )
    run.add_argument(
        "--no-wait",
        action="store_true",
        help="return when nothing is left to claim, instead of waiting for the jobs that "
        "other workers hold",
    )

    report = commands.add_parser("report", help="write the tables and plots from a storage")
    report.add_argument("--storage", required=True, help="SQLAlchemy URL of the storage")
    report.add_argument(
        "--study-prefix", default=DEFAULT_PREFIX, help="the runs' study prefix (default: bench)"
    )
    report.add_argument(
        "--out", default=None, help="output directory (default: benchmarks/results)"
    )
    report.add_argument(
        "--name", default="comparison", help="file name stem (default: comparison)"
    )

    listing = commands.add_parser("list", help="list methods and problems (and job states)")
    _add_selection(listing)
    listing.add_argument("--storage", default=None, help="also show each job's state there")
    return parser


def _run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from benchmarks.runner import run
    from benchmarks.runner import RunConfig

    jobs = make_jobs(
        _names(args.methods, list(METHODS), "methods"),
        _names(args.problems, list(PROBLEMS), "problems"),
        parse_seeds(args.seeds),
    )
    config = RunConfig(
        storage=args.storage,
        jobs=tuple(jobs),
        budget=args.budget,
        prefix=args.study_prefix,
        progress=not args.no_progress,
        heartbeat=args.heartbeat,
        stale_after=args.stale_after,
        wait=not args.no_wait,
        command=_command(argv, args.storage),
    )
    print(
        f"{len(jobs)} jobs at budget '{args.budget}' into {mask_url(args.storage)} "
        f"({args.workers} worker{'s' if args.workers > 1 else ''})",
        flush=True,
    )
    return run(config, workers=args.workers)


def _report(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from benchmarks import report
    from benchmarks.runner import load_summaries

    summaries = load_summaries(args.storage, args.study_prefix)
    if not summaries:
        print(f"No finished benchmark run in {mask_url(args.storage)}.", file=sys.stderr)
        return 1
    out = args.out if args.out is not None else report.RESULTS_DIR
    paths = report.write(summaries, out, name=args.name, command=_command(argv, args.storage))
    print(f"{len(summaries)} runs; wrote " + ", ".join(str(p) for p in paths))
    return 0


def _list(args: argparse.Namespace) -> int:
    methods = _names(args.methods, list(METHODS), "methods")
    problems = _names(args.problems, list(PROBLEMS), "problems")
    jobs = make_jobs(methods, problems, parse_seeds(args.seeds))
    print(
        format_table(
            ("method", "label", "kind", "on resume"),
            [
                (
                    m.name,
                    m.label,
                    "online" if m.online else "search",
                    "continues" if m.resumable else "restarts",
                )
                for m in (METHODS[n] for n in methods)
            ],
        )
    )
    print()
    print(
        format_table(
            ("problem", "description", "target", *(f"{b}: E x runs" for b in BUDGET_NAMES)),
            [
                (
                    p.name,
                    p.description,
                    p.target,
                    *(f"{p.budgets[b].epochs} x {p.budgets[b].runs}" for b in BUDGET_NAMES),
                )
                for p in (PROBLEMS[n] for n in problems)
            ],
        )
    )
    print(f"\n{len(jobs)} jobs (methods that do not apply to a problem are left out).")
    if args.storage is not None:
        from benchmarks.runner import job_states

        states = job_states(args.storage, jobs, prefix=args.study_prefix, stale_after=120.0)
        counts: dict[str, int] = {}
        for s in states:
            counts[s.status] = counts.get(s.status, 0) + 1
        print(
            f"In {mask_url(args.storage)}: "
            + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        )
        for s in states:
            if s.status != "finished":
                print(f"  {s.status:9} {s.name}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args, argv)
        if args.command == "report":
            return _report(args, argv)
        return _list(args)
    except (BenchmarkError, StorageError) as e:
        print(f"python -m benchmarks: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "python -m benchmarks: interrupted; run the same command again to resume.",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
