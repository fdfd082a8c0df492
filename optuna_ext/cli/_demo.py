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
import os
import sys
import time
from typing import TYPE_CHECKING
import warnings

import numpy as np
import optuna
from optuna.artifacts import FileSystemArtifactStore

from optuna_ext._objective_names import name_objectives
from optuna_ext._storage import DEFAULT_DEMO_STORAGE
from optuna_ext._storage import load_or_create_study
from optuna_ext._storage import mask_url
from optuna_ext._storage import open_storage
from optuna_ext.cli._table import format_table


if TYPE_CHECKING:
    from optuna.storages import BaseStorage
    import torch

    from optuna_ext.schedules import RecurringLR
    from optuna_ext.tasks import DatasetSplit


@dataclasses.dataclass(frozen=True)
class Budget:
    """How much each demo study may spend."""

    n_trials: int
    epochs: int
    first_rung: int
    max_resource: int
    search_trials: int
    search_epochs: int


BUDGETS: dict[str, Budget] = {
    "tiny": Budget(
        n_trials=3, epochs=2, first_rung=1, max_resource=3, search_trials=3, search_epochs=1
    ),
    "default": Budget(
        n_trials=30, epochs=10, first_rung=3, max_resource=27, search_trials=100, search_epochs=5
    ),
}
"""``n_trials`` trials of ``epochs`` epochs for a plain study; multi-fidelity demos use rungs
from ``first_rung`` (times 3 each) up to ``max_resource`` epochs; autoHyper's search stops by
itself or after ``search_trials`` trials of ``search_epochs`` epochs."""


@dataclasses.dataclass
class DemoContext:
    """What a demo function gets: where to write, how much to spend, and the shared data."""

    storage: BaseStorage
    budget: Budget
    seed: int
    prefix: str
    progress: bool
    artifact_dir: str

    @functools.cached_property
    def artifact_store(self) -> FileSystemArtifactStore:
        """Checkpoints of the methods that keep training state (Hyperdyn, PBT, MORL)."""
        os.makedirs(self.artifact_dir, exist_ok=True)
        return FileSystemArtifactStore(self.artifact_dir)

    @functools.cached_property
    def data(self) -> DatasetSplit:
        from optuna_ext.tasks import load_digits

        return load_digits()

    def study_name(self, method: str) -> str:
        return f"{self.prefix}{method}"

    def sampler_seed(self, study_name: str) -> int:
        """The seed of a study's sampler: ``seed`` for a new study, and for one that already
        holds trials (a resumed run) a seed derived from ``seed`` and their number.

        A sampler seeded as in the first run would draw the first run's random configurations
        again (TPE's startup trials, any RandomSampler), re-training them for nothing.
        """
        try:
            study_id = self.storage.get_study_id_from_name(study_name)
        except KeyError:
            return self.seed
        n_trials = len(self.storage.get_all_trials(study_id, deepcopy=False))
        if n_trials == 0:
            return self.seed
        return int(np.random.SeedSequence([self.seed, n_trials]).generate_state(1)[0])


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


DEFAULT_ARTIFACT_DIR = "optuna-ext-artifacts"

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


VALUE_NAME = "valid_accuracy"
"""The objective name of the demo's studies whose trial value is the validation accuracy
(Hyperdyn's study is named by its tuner: ``"acc_diff"``)."""


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
        sampler=optuna.samplers.TPESampler(seed=ctx.sampler_seed(name)),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2),
    )
    name_objectives(study, [VALUE_NAME])
    start = time.perf_counter()
    _optimize_to_budget(study, objective, ctx.budget.n_trials, ctx.progress)
    return [_best_row("TPE + median pruner (Optuna)", study, time.perf_counter() - start)]


def demo_morl(ctx: DemoContext) -> list[DemoRow]:
    """MORL against Optuna's successive halving: same rungs, same sampler, same budget.

    Both studies use TPE over SGD's rate, momentum and weight decay, and rungs at
    ``first_rung * 3**k`` epochs up to ``max_resource``. Successive halving anneals one cosine
    over the whole run (Optuna's pruner ranks trials mid-schedule); MORL restarts the cosine in
    every rung, so each rung ends on an annealed model.
    """
    from optuna_ext.pruners import MORLPruner
    from optuna_ext.schedules import RecurringLR
    from optuna_ext.tasks import build_model
    from optuna_ext.tasks import fit

    data = ctx.data
    budget = ctx.budget
    morl = MORLPruner(
        max_resource=budget.max_resource, min_resource=budget.first_rung, reduction_factor=3
    )
    sha = optuna.pruners.SuccessiveHalvingPruner(
        min_resource=budget.first_rung, reduction_factor=3
    )

    def make_objective(
        schedule: Callable[[torch.optim.Optimizer, int], RecurringLR],
    ) -> Callable[[optuna.Trial], float]:
        def objective(trial: optuna.Trial) -> float:
            lr = trial.suggest_float("lr", 1e-3, 1.0, log=True)
            momentum = trial.suggest_float("momentum", 0.0, 0.99)
            weight_decay = trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
            result = fit(
                build_model("cnn", data=data, seed=ctx.seed),
                data,
                optimizer="sgd",
                lr=lr,
                momentum=momentum,
                weight_decay=weight_decay,
                epochs=budget.max_resource,
                schedule=schedule,
                seed=ctx.seed,
                trial=trial,
                prune=True,
            )
            trial.set_user_attr("test_accuracy", result.test_accuracy)
            return result.valid_accuracy[-1]

        return objective

    def one_cosine(optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> RecurringLR:
        return RecurringLR(
            optimizer, boundaries=[budget.max_resource], steps_per_epoch=steps_per_epoch
        )

    def recurring(optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> RecurringLR:
        return morl.schedule(optimizer, steps_per_epoch=steps_per_epoch)

    rows = []
    for method, label, pruner, schedule in (
        ("sha", "successive halving, one cosine (Optuna)", sha, one_cosine),
        ("morl", "MORL: cosine restarted per rung", morl, recurring),
    ):
        name = ctx.study_name(method)
        study = load_or_create_study(
            study_name=name,
            storage=ctx.storage,
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=ctx.sampler_seed(name)),
            pruner=pruner,
        )
        name_objectives(study, [VALUE_NAME])
        start = time.perf_counter()
        _optimize_to_budget(study, make_objective(schedule), budget.n_trials, ctx.progress)
        rows.append(_best_row(label, study, time.perf_counter() - start))
    return rows


def _best_row(method: str, study: optuna.Study, seconds: float) -> DemoRow:
    """The summary row of a study whose best trial stored its test accuracy."""
    best = study.best_trial
    epochs = sum(len(t.intermediate_values) for t in study.get_trials(deepcopy=False))
    return DemoRow(
        method=method,
        study=study.study_name,
        trials=f"{_trial_counts(study)}; {epochs} epochs",
        valid_accuracy=float(best.value) if best.value is not None else float("nan"),
        test_accuracy=_user_attr(best, "test_accuracy"),
        chosen=_format_params(best.params),
        seconds=seconds,
    )


ADAM_DEFAULT_LR = 1e-3


def demo_autohyper(ctx: DemoContext) -> list[DemoRow]:
    """autoHyper picks Adam's initial rate for the digits CNN with no search range given.

    Each trial trains ``search_epochs`` epochs while a :class:`KnowledgeGainTracker` measures
    Z; the sampler walks and zooms its grid and stops the study when it has converged. Then
    the CNN is trained for ``epochs`` epochs with the chosen rate and with Adam's default
    ``1e-3``, and both test accuracies are printed.
    """
    from optuna_ext.metrics import KnowledgeGainTracker
    from optuna_ext.samplers import AutoHyperSampler
    from optuna_ext.tasks import build_model
    from optuna_ext.tasks import fit

    data = ctx.data
    budget = ctx.budget

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-6, 10.0, log=True)
        model = build_model("cnn", data=data, seed=ctx.seed)
        tracker = KnowledgeGainTracker(model)
        result = fit(
            model,
            data,
            optimizer="adam",
            lr=lr,
            epochs=budget.search_epochs,
            seed=ctx.seed,
            trial=trial,
            epoch_callback=lambda epoch, model: tracker(),
        )
        tracker.report(trial)
        return result.valid_accuracy[-1]

    name = ctx.study_name("autohyper")
    study = load_or_create_study(
        study_name=name,
        storage=ctx.storage,
        direction="maximize",
        sampler=AutoHyperSampler(seed=ctx.seed, max_trials=budget.search_trials),
    )
    name_objectives(study, [VALUE_NAME])
    start = time.perf_counter()
    if not AutoHyperSampler.result(study).converged:
        # The sampler stops the study when it converges, or after `max_trials`.
        _optimize_to_budget(study, objective, budget.search_trials, ctx.progress)
    search = AutoHyperSampler.result(study)
    search_seconds = time.perf_counter() - start

    rows = []
    for label, lr in (("autoHyper's rate", search.lr), ("Adam's default", ADAM_DEFAULT_LR)):
        if lr is None:
            rows.append(
                DemoRow(
                    method=f"Adam, {label}",
                    study=name,
                    trials=f"{search.n_trials} trials; {search.message}",
                    valid_accuracy=float("nan"),
                    test_accuracy=float("nan"),
                    chosen="no rate yet (raise the budget)",
                    seconds=search_seconds,
                )
            )
            continue
        start = time.perf_counter()
        result = fit(
            build_model("cnn", data=data, seed=ctx.seed),
            data,
            optimizer="adam",
            lr=lr,
            epochs=budget.epochs,
            seed=ctx.seed,
        )
        searched = lr is search.lr
        rows.append(
            DemoRow(
                method=f"Adam, {label}, {budget.epochs} epochs",
                study=name if searched else "-",
                trials=f"{search.n_trials} search trials ({search.reason})" if searched else "-",
                valid_accuracy=result.valid_accuracy[-1],
                test_accuracy=result.test_accuracy,
                chosen=f"lr={lr:.3g}",
                seconds=time.perf_counter() - start + (search_seconds if searched else 0.0),
            )
        )
    return rows


def demo_hyperdyn(ctx: DemoContext) -> list[DemoRow]:
    """One training run of the digits CNN whose SGD rate and momentum Hyperdyn re-chooses
    at every epoch; prints the rate per epoch. Checkpoints go to the artifact directory, so
    an interrupted run resumes at its last finished epoch."""
    from optuna_ext.hyperdyn import fit_hyperdyn
    from optuna_ext.samplers import HyperdynSampler
    from optuna_ext.tasks import build_model

    name = ctx.study_name("hyperdyn")
    study = load_or_create_study(
        study_name=name,
        storage=ctx.storage,
        direction="maximize",
        sampler=HyperdynSampler(seed=ctx.seed),
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        # The tuner drives trials by ask-and-tell, where Optuna does not beat hearts; its
        # per-epoch records and checkpoints are what make an interrupted run resumable.
        warnings.filterwarnings("ignore", message="Heartbeat of storage", category=UserWarning)
        result = fit_hyperdyn(
            build_model("cnn", data=ctx.data, seed=ctx.seed),
            ctx.data,
            optimizer="sgd",
            epochs=ctx.budget.epochs,
            study=study,
            artifact_store=ctx.artifact_store,
            n_random_start=min(5, ctx.budget.n_trials),
            seed=ctx.seed,
        )
    print("epoch  lr        momentum  valid acc  " + "kept")
    for epoch, (params, accuracy, switched) in enumerate(
        zip(result.params, result.accuracy, result.switched, strict=True)
    ):
        kept = "new proposal" if switched else "incumbent"
        print(
            f"{epoch:5d}  {params.get('lr', float('nan')):.2e}  "
            f"{params.get('momentum', float('nan')):8.3f}  {accuracy:9.4f}  {kept}"
        )
    return [
        DemoRow(
            method="Hyperdyn: SGD rate re-chosen per epoch",
            study=name,
            trials=f"{_trial_counts(study)}; {result.epochs} epochs kept",
            valid_accuracy=result.accuracy[-1],
            test_accuracy=(float("nan") if result.test_accuracy is None else result.test_accuracy),
            chosen="lr " + " > ".join(f"{lr:.2g}" for lr in _runs(result.lrs)),
            seconds=time.perf_counter() - start,
        )
    ]


def demo_pbt(ctx: DemoContext) -> list[DemoRow]:
    """A population of 4 digits CNNs, SGD's rate, momentum and weight decay explored and
    exploited every epoch; prints the best member's lineage. Checkpoints go to the artifact
    directory; an interrupted run resumes."""
    from optuna_ext.pbt import run_digits

    name = ctx.study_name("pbt")
    start = time.perf_counter()
    result = run_digits(
        storage=ctx.storage,
        study_name=name,
        artifact_store=ctx.artifact_store,
        population_size=4,
        n_generations=ctx.budget.epochs,
        seed=ctx.seed,
        data=ctx.data,
    )
    print(result.format_lineage())
    best = result.best_trial
    return [
        DemoRow(
            method="PBT: population of 4, one epoch a generation",
            study=name,
            trials=f"{_trial_counts(result.study)}",
            valid_accuracy=_user_attr(best, "valid_accuracy"),
            test_accuracy=_user_attr(best, "test_accuracy"),
            chosen=_format_params(best.params) if best is not None else "no member finished",
            seconds=time.perf_counter() - start,
        )
    ]


def _user_attr(trial: optuna.trial.FrozenTrial | None, key: str) -> float:
    if trial is None:
        return float("nan")
    return float(trial.user_attrs.get(key, float("nan")))


def _runs(values: list[float]) -> list[float]:
    """Collapse repeats: [a, a, b, b, a] -> [a, b, a]."""
    return [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]


DEMOS: dict[str, DemoFunction] = {
    "autohyper": demo_autohyper,
    "tpe": demo_tpe,
    "morl": demo_morl,
    "hyperdyn": demo_hyperdyn,
    "pbt": demo_pbt,
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
    parser.add_argument(
        "--artifact-dir",
        default=DEFAULT_ARTIFACT_DIR,
        help="directory of the checkpoint artifacts (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--study-prefix",
        default="demo-",
        help="prefix of the study names (default: 'demo-'); a study is named PREFIX+METHOD",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default: 1; the demo's models are tiny, and more threads on a "
        "busy machine slow them down)",
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
    if args.threads < 1:
        print(
            f"optuna-ext demo: error: --threads is {args.threads}, but must be >= 1",
            file=sys.stderr,
        )
        return 2
    import torch

    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Heartbeats let a later run fail and retry trials that a killed run left RUNNING.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = open_storage(args.storage, heartbeat_interval=10, grace_period=30)
    shown = mask_url(args.storage)
    ctx = DemoContext(
        storage=storage,
        budget=BUDGETS[args.budget],
        seed=args.seed,
        prefix=args.study_prefix,
        progress=not args.no_progress,
        artifact_dir=args.artifact_dir,
    )
    print(f"optuna-ext demo: budget '{args.budget}', storage {shown}", flush=True)
    rows: list[DemoRow] = []
    for method in methods:
        print(f"\n== {method} ==", flush=True)
        rows.extend(DEMOS[method](ctx))
    print()
    print(format_table(HEADER, [dataclasses.astuple(r) for r in rows]))
    print(
        f"\nBrowse the studies:  optuna-dashboard '{shown}' --artifact-dir '{args.artifact_dir}'"
    )
    if shown != args.storage and ":***@" in shown:
        print(
            "(The storage URL is shown without its password: type it in place of ***, or "
            "leave it out of the URL and set it in the environment, e.g. PGPASSWORD.)"
        )
    return 0
