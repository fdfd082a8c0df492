"""``optuna-ext demo``: short studies on the digits task, a summary table, the dashboard command.

Each method of the package adds one entry to :data:`DEMOS`: a function that runs its study (or
studies) in the given storage and returns summary rows. Studies are named
``{prefix}{method}`` and resume: a study that already holds its budget of finished trials is
not run again, and a study that was interrupted continues where it stopped.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
import dataclasses
import functools
import sys
import time
from typing import TYPE_CHECKING

import optuna

from optuna_ext._storage import DEFAULT_DEMO_STORAGE
from optuna_ext._storage import load_or_create_study
from optuna_ext._storage import mask_url
from optuna_ext._storage import open_storage
from optuna_ext.cli._table import format_table


if TYPE_CHECKING:
    from optuna.storages import BaseStorage

    from optuna_ext.tasks import DatasetSplit


@dataclasses.dataclass(frozen=True)
class Budget:
    """How much each demo study may spend."""

    n_trials: int
    epochs: int


BUDGETS: dict[str, Budget] = {
    "tiny": Budget(n_trials=3, epochs=2),
    "default": Budget(n_trials=30, epochs=10),
}


@dataclasses.dataclass
class DemoContext:
    """What a demo function gets: where to write, how much to spend, and the shared data."""

    storage: BaseStorage
    budget: Budget
    seed: int
    prefix: str
    progress: bool

    @functools.cached_property
    def data(self) -> DatasetSplit:
        from optuna_ext.tasks import load_digits

        return load_digits()

    def study_name(self, method: str) -> str:
        return f"{self.prefix}{method}"


@dataclasses.dataclass(frozen=True)
class DemoRow:
    """One line of the summary table."""

    method: str
    study: str
    trials: str
    valid_accuracy: float
    test_accuracy: float
    chosen: str
    seconds: float


HEADER = ("method", "study", "trials", "valid acc", "test acc", "chosen", "seconds")

DemoFunction = Callable[[DemoContext], list[DemoRow]]


def _trial_counts(study: optuna.Study) -> str:
    states = [t.state for t in study.get_trials(deepcopy=False)]
    counts = {s: states.count(s) for s in optuna.trial.TrialState if states.count(s)}
    return ", ".join(f"{n} {s.name.lower()}" for s, n in counts.items())


def _optimize_to_budget(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    n_trials: int,
    progress: bool,
) -> None:
    """Run ``objective`` until the study holds ``n_trials`` complete or pruned trials."""
    done_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=done_states))
    if done < n_trials:
        study.optimize(objective, n_trials=n_trials - done, show_progress_bar=progress)


def _format_params(params: dict[str, object]) -> str:
    return ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


def demo_tpe(ctx: DemoContext) -> list[DemoRow]:
    """Optuna's TPE with a median pruner over SGD's rate, momentum and weight decay."""
    from optuna_ext.tasks import build_model
    from optuna_ext.tasks import fit

    data = ctx.data
    epochs = ctx.budget.epochs

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-3, 1.0, log=True)
        momentum = trial.suggest_float("momentum", 0.0, 0.99)
        weight_decay = trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
        model = build_model("cnn", data=data, seed=ctx.seed)
        result = fit(
            model,
            data,
            optimizer="sgd",
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            epochs=epochs,
            seed=ctx.seed,
            trial=trial,
            prune=True,
        )
        trial.set_user_attr("test_accuracy", result.test_accuracy)
        return result.valid_accuracy[-1]

    name = ctx.study_name("tpe")
    study = load_or_create_study(
        study_name=name,
        storage=ctx.storage,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=ctx.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2),
    )
    start = time.perf_counter()
    _optimize_to_budget(study, objective, ctx.budget.n_trials, ctx.progress)
    best = study.best_trial
    return [
        DemoRow(
            method="TPE + median pruner (Optuna)",
            study=name,
            trials=_trial_counts(study),
            valid_accuracy=float(best.value) if best.value is not None else float("nan"),
            test_accuracy=float(best.user_attrs.get("test_accuracy", float("nan"))),
            chosen=_format_params(best.params),
            seconds=time.perf_counter() - start,
        )
    ]


DEMOS: dict[str, DemoFunction] = {
    "tpe": demo_tpe,
}
"""Every demo, by method name, in the order they run."""


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "demo",
        help="run short studies on the digits task and print a summary",
        description=(
            "Run a short study per method on scikit-learn's digits (a small CNN, CPU), "
            "write them to STORAGE, print a summary table and the optuna-dashboard command "
            "that shows them. Run it again with the same storage to resume: finished "
            "studies are kept, interrupted ones continue."
        ),
    )
    parser.add_argument(
        "--storage",
        default=DEFAULT_DEMO_STORAGE,
        help=f"SQLAlchemy URL of the storage (default: {DEFAULT_DEMO_STORAGE}); "
        "PostgreSQL: postgresql+psycopg://USER@HOST:5432/DB",
    )
    parser.add_argument(
        "--budget",
        choices=sorted(BUDGETS),
        default="default",
        help="trials and epochs per study: "
        + "; ".join(f"{k}: {b.n_trials} trials x {b.epochs} epochs" for k, b in BUDGETS.items()),
    )
    parser.add_argument(
        "--methods",
        default=",".join(DEMOS),
        help=f"comma-separated methods to run (default: all of {', '.join(DEMOS)})",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--study-prefix",
        default="demo-",
        help="prefix of the study names (default: 'demo-'); a study is named PREFIX+METHOD",
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    methods = [m.strip() for m in str(args.methods).split(",") if m.strip()]
    unknown = [m for m in methods if m not in DEMOS]
    if unknown or not methods:
        print(
            f"optuna-ext demo: error: unknown method(s) {unknown or methods}; "
            f"choose from {', '.join(DEMOS)}",
            file=sys.stderr,
        )
        return 2
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Heartbeats let a later run fail and retry trials that a killed run left RUNNING.
    storage = open_storage(args.storage, heartbeat_interval=10, grace_period=30)
    shown = mask_url(args.storage)
    ctx = DemoContext(
        storage=storage,
        budget=BUDGETS[args.budget],
        seed=args.seed,
        prefix=args.study_prefix,
        progress=not args.no_progress,
    )
    print(f"optuna-ext demo: budget '{args.budget}', storage {shown}", flush=True)
    rows: list[DemoRow] = []
    for method in methods:
        print(f"\n== {method} ==", flush=True)
        rows.extend(DEMOS[method](ctx))
    print()
    print(format_table(HEADER, [dataclasses.astuple(r) for r in rows]))
    print(f"\nBrowse the studies:  optuna-dashboard '{shown}'")
    return 0
