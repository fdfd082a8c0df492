"""The methods of the comparison: a registry of functions ``(RunContext) -> Outcome``.

Each method is one registered function. Add one like this::

    @register("qmc", "quasi-Monte Carlo search (Optuna)")
    def qmc(ctx: RunContext) -> Outcome:
        return ctx.search(optuna.samplers.QMCSampler(seed=ctx.sampler_seed()))

:meth:`RunContext.search` runs full trainings of the problem's space until the budget is
spent and returns the best; an online method trains its own model through
:meth:`RunContext.train` or its own loop (recording each epoch with
:meth:`RunContext.record`) and returns :meth:`RunContext.outcome_of` its model.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
from typing import Any
from typing import TYPE_CHECKING

import optuna

from benchmarks.context import Outcome
from benchmarks.context import RunContext
from benchmarks.context import TRAIN_ATTR


if TYPE_CHECKING:
    from torch import nn

    from benchmarks.problems import Problem


MethodFunction = Callable[[RunContext], Outcome]


@dataclasses.dataclass(frozen=True)
class Method:
    """A registered method.

    Attributes:
        name: The registry key (used in study names).
        label: Its name in tables and plots.
        run: The function that runs it.
        online: Whether it tunes while training one model (its rate per epoch is reported).
        resumable: Whether an interrupted run continues from the storage; otherwise it starts
            again, in a fresh extra study, when its job is taken over.
        tunes: The number of hyper-parameters it optimizes on a problem (paper 004's
            "parameters optimized").
        requires: ``requires(problem)`` is :obj:`None` when the method applies to the
            problem, else the reason why not.
    """

    name: str
    label: str
    run: MethodFunction
    online: bool
    resumable: bool
    tunes: Callable[[Problem], int]
    requires: Callable[[Problem], str | None]

    def applies(self, problem: Problem) -> bool:
        return self.requires(problem) is None


METHODS: dict[str, Method] = {}
"""Every method, by name, in the order of the report."""


def _space_size(problem: Problem) -> int:
    return len(problem.space)


def _any_problem(problem: Problem) -> str | None:
    return None


def register(
    name: str,
    label: str,
    *,
    online: bool = False,
    resumable: bool = True,
    tunes: int | Callable[[Problem], int] = _space_size,
    requires: Callable[[Problem], str | None] = _any_problem,
) -> Callable[[MethodFunction], MethodFunction]:
    """Register the decorated function as method ``name`` (see :class:`Method`)."""
    if name in METHODS:
        raise ValueError(f"A method named {name!r} is already registered.")
    if not name.replace("_", "").isalnum():
        raise ValueError(
            f"The value of `name` is {name!r}, but must hold only letters, digits and '_'."
        )
    count = tunes if callable(tunes) else (lambda problem: tunes)

    def decorator(function: MethodFunction) -> MethodFunction:
        METHODS[name] = Method(name, label, function, online, resumable, count, requires)
        return function

    return decorator


def _startup_trials(ctx: RunContext) -> int:
    """Random trials before a model-based sampler models: a third of the budget's full runs
    (Optuna's default of 10 would leave TPE and GP no model-based trial at most budgets)."""
    return max(2, ctx.budget.runs // 3)


def _needs_conv(problem: Problem) -> str | None:
    return None if problem.has_conv else "needs convolution layers (its rank measure Z)"


# --------------------------------------------------------------------------------------------
# No search, and searches over full trainings.


@register("baseline", "hand-tuned baseline (no search)", resumable=False, tunes=0)
def baseline(ctx: RunContext) -> Outcome:
    config = dict(ctx.problem.baseline)
    return ctx.outcome_of(ctx.train(config), config)


@register("grid", "grid search")
def grid(ctx: RunContext) -> Outcome:
    sampler = optuna.samplers.GridSampler(dict(ctx.problem.grid), seed=ctx.seed)
    return ctx.search(sampler, max_trials=ctx.problem.grid_size)


@register("random", "random search")
def random(ctx: RunContext) -> Outcome:
    return ctx.search(optuna.samplers.RandomSampler(seed=ctx.sampler_seed()))


@register("tpe", "TPE (Optuna)")
def tpe(ctx: RunContext) -> Outcome:
    sampler = optuna.samplers.TPESampler(
        seed=ctx.sampler_seed(), n_startup_trials=_startup_trials(ctx)
    )
    return ctx.search(sampler)


@register("gp", "GP-BO (Optuna GPSampler)")
def gp(ctx: RunContext) -> Outcome:
    sampler = optuna.samplers.GPSampler(
        seed=ctx.sampler_seed(), n_startup_trials=_startup_trials(ctx)
    )
    return ctx.search(sampler)


# --------------------------------------------------------------------------------------------
# Multi-fidelity: rungs at first_rung * 3**k epochs; random configurations unless said.


@register("sha", "successive halving (Optuna pruner)")
def sha(ctx: RunContext) -> Outcome:
    pruner = optuna.pruners.SuccessiveHalvingPruner(
        min_resource=ctx.budget.first_rung, reduction_factor=3
    )
    return ctx.search(optuna.samplers.RandomSampler(seed=ctx.sampler_seed()), pruner=pruner)


@register("hyperband", "Hyperband (Optuna pruner)")
def hyperband(ctx: RunContext) -> Outcome:
    pruner = optuna.pruners.HyperbandPruner(
        min_resource=ctx.budget.first_rung, max_resource=ctx.epochs, reduction_factor=3
    )
    return ctx.search(optuna.samplers.RandomSampler(seed=ctx.sampler_seed()), pruner=pruner)


def _morl(ctx: RunContext, sampler: optuna.samplers.BaseSampler) -> Outcome:
    """MORL: successive halving whose cosine restarts at every rung; the chosen configuration
    is trained again with one cosine, as every other method's final model is."""
    from optuna_ext.pruners import MORLPruner

    pruner = MORLPruner(max_resource=ctx.epochs, min_resource=ctx.budget.first_rung)
    return ctx.search(
        sampler,
        pruner=pruner,
        schedule=lambda optimizer, steps: pruner.schedule(optimizer, steps_per_epoch=steps),
        retrain=True,
    )


@register("morl", "MORL + random")
def morl(ctx: RunContext) -> Outcome:
    return _morl(ctx, optuna.samplers.RandomSampler(seed=ctx.sampler_seed()))


@register("morl_tpe", "MORL + TPE")
def morl_tpe(ctx: RunContext) -> Outcome:
    sampler = optuna.samplers.TPESampler(
        seed=ctx.sampler_seed(), n_startup_trials=_startup_trials(ctx)
    )
    return _morl(ctx, sampler)


# --------------------------------------------------------------------------------------------
# The initial learning rate only.


@register("autohyper", "autoHyper (initial rate from Z)", tunes=1, requires=_needs_conv)
def autohyper(ctx: RunContext) -> Outcome:
    """autoHyper's search over SGD's rate (momentum and weight decay: the baseline's); each
    trial trains ``search_epochs`` epochs at a constant rate while Z is tracked, until the
    search converges or only ``E`` epochs of the budget are left; then the chosen rate is
    trained for ``E`` epochs with one cosine (counted in the budget)."""
    from optuna_ext.metrics import KnowledgeGainTracker
    from optuna_ext.samplers import AutoHyperSampler

    n = ctx.budget.search_epochs
    search_budget = ctx.budget.total - ctx.epochs
    sampler = AutoHyperSampler(
        seed=ctx.seed, max_trials=max(1, search_budget // n), save_plot=False
    )
    study = ctx.study(sampler)

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-6, 10.0, log=True)
        trackers: list[KnowledgeGainTracker] = []

        def track(epoch: int, model: nn.Module) -> None:
            if not trackers:
                trackers.append(KnowledgeGainTracker(model))
            trackers[0]()

        trained = ctx.train(
            ctx.problem.config(lr=lr), trial=trial, epochs=n, schedule=None, epoch_callback=track
        )
        if not trackers or not trackers[0].snapshots:
            raise optuna.TrialPruned("diverged before the first tracked epoch")
        trackers[0].report(trial)
        return trained.valid_accuracy

    ctx.optimize(
        study,
        objective,
        min_left=n + ctx.epochs,
        until=lambda: AutoHyperSampler.result(study).converged,
    )
    search = AutoHyperSampler.result(study)
    lr, notes = search.lr, f"{search.n_trials} search trials ({search.reason})"
    if lr is None:
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        best = max(complete, key=lambda t: t.value or 0.0, default=None)
        lr = float(best.params["lr"]) if best is not None else ctx.problem.baseline["lr"]
        notes += "; not converged within the budget: the best search trial's rate"
    config = ctx.problem.config(lr=lr)
    final = ctx.final(config, counted=True)
    return ctx.outcome_of(final, config, trials=search.n_trials + 1, notes=notes)


@register("lr_range_test", "LR range test (Smith)", tunes=1, resumable=False)
def lr_range_test(ctx: RunContext) -> Outcome:
    """Smith's range test of SGD's rate (200 steps from 1e-5 to 10; a tenth of the rate at the
    smoothed loss's minimum, Smith's rule: the steepest-descent rule picks the smallest rate
    on the teacher MLPs, whose smoothed loss is flat at first; momentum and weight decay: the
    baseline's), then ``E`` epochs with one cosine from the suggested rate."""
    from optuna_ext.optim import lr_range_test as range_test

    baseline = ctx.problem.baseline
    n_train = len(ctx.data.train)
    result = range_test(
        ctx.model(),
        ctx.data,
        optimizer="sgd",
        min_lr=1e-5,
        max_lr=10.0,
        num_steps=int(
            min(200, (ctx.budget.total - ctx.epochs) * n_train // ctx.problem.batch_size)
        ),
        rule="min_div_10",
        batch_size=ctx.problem.batch_size,
        momentum=baseline["momentum"],
        weight_decay=baseline["weight_decay"],
        seed=ctx.seed,
    )
    ctx.record(None, epochs=len(result.lrs) * ctx.problem.batch_size / n_train)
    config = ctx.problem.config(lr=result.suggested_lr)
    notes = f"{len(result.lrs)} steps" + (" (diverged)" if result.diverged else "")
    return ctx.outcome_of(ctx.final(config, counted=True), config, trials=2, notes=notes)


# --------------------------------------------------------------------------------------------
# Online methods: one model (or one population), its hyper-parameters changed while it trains.


def _hypergradient(ctx: RunContext, optimizer: str, hypergrad_lr: float) -> Outcome:
    """One training of ``E`` epochs from the paper's initial rate 1e-3, the rate adapted at
    every step by hypergradient descent (Baydin et al. 2018; momentum and weight decay: the
    baseline's; no schedule)."""
    config = ctx.problem.config(lr=1e-3)
    trained = ctx.train(config, schedule=None, optimizer=optimizer, hypergrad_lr=hypergrad_lr)
    final = {**config, "lr": float(trained.fit.lrs[-1])}
    return ctx.outcome_of(trained, final, lr_per_epoch=trained.fit.lrs)


@register("sgd_hd", "SGD-HD (hypergradient descent)", online=True, resumable=False, tunes=1)
def sgd_hd(ctx: RunContext) -> Outcome:
    return _hypergradient(ctx, "sgd_hd", hypergrad_lr=1e-3)  # the paper's beta for SGD-HD


@register("adam_hd", "Adam-HD (hypergradient descent)", online=True, resumable=False, tunes=1)
def adam_hd(ctx: RunContext) -> Outcome:
    return _hypergradient(ctx, "adam_hd", hypergrad_lr=1e-7)  # the paper's beta (MLP, logreg)


@register(
    "hyperdyn", "Hyperdyn (rate and momentum per epoch)", online=True, resumable=False, tunes=2
)
def hyperdyn(ctx: RunContext) -> Outcome:
    """Hyperdyn re-chooses SGD's rate and momentum every epoch (weight decay: the
    baseline's); ``random_start`` candidates at epoch 0, then an incumbent and a GP proposal
    per epoch, each a one-epoch training, for ``E`` kept epochs or as many as the budget
    allows."""
    from optuna_ext.hyperdyn import HyperdynTuner
    from optuna_ext.hyperdyn import make_task_functions
    from optuna_ext.hyperdyn import MemoryArtifactStore
    from optuna_ext.samplers import HyperdynSampler
    from optuna_ext.tasks import make_optimizer

    k = ctx.budget.random_start
    epochs = max(1, min(ctx.epochs, 1 + (ctx.budget.total - k) // 2))
    study = ctx.attempt_study(HyperdynSampler(seed=ctx.seed, n_startup_trials=k))
    model = ctx.model()
    baseline = ctx.problem.baseline
    optimizer = make_optimizer(
        "sgd", model.parameters(), lr=baseline["lr"], weight_decay=baseline["weight_decay"]
    )
    train_epoch, valid_accuracy = make_task_functions(
        ctx.data, batch_size=ctx.problem.batch_size, seed=ctx.seed
    )
    pending: list[bool] = []

    def train(model: nn.Module, optimizer: Any, epoch: int) -> float:
        pending.append(True)
        return train_epoch(model, optimizer, epoch)

    def evaluate_candidate(model: nn.Module) -> float:
        value = valid_accuracy(model)
        if pending:  # not the evaluation of the initial weights
            pending.clear()
            ctx.record(value)
        return value

    tuner = HyperdynTuner(
        study=study,
        model=model,
        optimizer=optimizer,
        train_epoch=train,
        evaluate=evaluate_candidate,
        artifact_store=MemoryArtifactStore(),
        search_space={name: ctx.problem.space[name] for name in ("lr", "momentum")},
        n_random_start=k,
        seed=ctx.seed,
        plot=False,
    )
    result = tuner.run(epochs=epochs)
    config = {**baseline, **result.params[-1]}
    return _online_outcome(ctx, model, config, sum(result.n_trained), result.lrs)


def _online_outcome(
    ctx: RunContext,
    model: nn.Module,
    config: dict[str, float],
    trials: int,
    lrs: list[float],
    notes: str = "",
) -> Outcome:
    from optuna_ext.tasks import evaluate

    return Outcome(
        config=config,
        valid_accuracy=evaluate(model, ctx.data.valid).accuracy,
        test_accuracy=evaluate(model, ctx.data.test).accuracy,
        train_accuracy=evaluate(model, ctx.data.train).accuracy,
        trials=trials,
        lr_per_epoch=[float(x) for x in lrs],
        notes=notes,
    )


def _pbt(ctx: RunContext, *, pb2: bool) -> Outcome:
    """A population of ``population`` members trained for ``generations`` generations of
    ``pbt_interval`` epochs (the whole budget), exploiting and exploring SGD's rate, momentum
    and weight decay after each; the best member of the last generation is the model."""
    from optuna_ext.hyperdyn import MemoryArtifactStore
    import optuna_ext.pbt
    from optuna_ext.samplers import PBTSampler
    from optuna_ext.tasks import evaluate

    if ctx.problem.model_kwargs:
        raise ValueError(
            f"PBT's training segment builds the model by name only, but problem "
            f"{ctx.problem.name!r} has model arguments {dict(ctx.problem.model_kwargs)}."
        )
    population = ctx.budget.population
    generations = ctx.budget.generations
    interval = ctx.budget.pbt_interval
    study = ctx.attempt_study(PBTSampler(population_size=population, pb2=pb2, seed=ctx.seed))
    space = ctx.problem.space
    segment = optuna_ext.pbt.training_segment(
        ctx.data,
        model=ctx.problem.model,
        epochs_per_generation=interval,
        seed=ctx.seed,
        batch_size=ctx.problem.batch_size,
        lr=(space["lr"].low, space["lr"].high),
        momentum=(space["momentum"].low, space["momentum"].high),
        weight_decay=(space["weight_decay"].low, space["weight_decay"].high),
    )

    def counted_segment(trial: optuna.Trial, state: dict[str, Any]) -> float:
        score = segment(trial, state)
        ctx.record(score, epochs=interval)
        if state.get("epochs") == generations * interval:
            model = ctx.model()
            model.load_state_dict(state["model"])
            trial.set_user_attr(TRAIN_ATTR, evaluate(model, ctx.data.train).accuracy)
        return score

    result = optuna_ext.pbt.run(
        study,
        counted_segment,
        n_generations=generations,
        artifact_store=MemoryArtifactStore(),
        save_plots=False,
    )
    best = result.best_trial
    if best is None or not result.finished:
        raise RuntimeError(f"The population of {study.study_name!r} did not finish.")
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return Outcome(
        config={k: float(v) for k, v in best.params.items()},
        valid_accuracy=float(best.user_attrs["valid_accuracy"]),
        test_accuracy=float(best.user_attrs["test_accuracy"]),
        train_accuracy=float(best.user_attrs[TRAIN_ATTR]),
        trials=len(complete),
        lr_per_epoch=[
            float(s["params"]["lr"]) for s in result.schedule() for _ in range(interval)
        ],
        notes=f"{population} members x {generations} generations of {interval} epoch(s)",
    )


@register("pbt", "PBT", online=True, resumable=False)
def pbt(ctx: RunContext) -> Outcome:
    return _pbt(ctx, pb2=False)


@register("pb2", "PB2 (PBT, GP-UCB explore)", online=True, resumable=False)
def pb2(ctx: RunContext) -> Outcome:
    return _pbt(ctx, pb2=True)
