"""The methods compared by ``bench_morl``: one training function, several search protocols.

Every method searches the MORL paper's space (section 4) with the same training function and
the same total budget in epochs, and chooses the configuration with the best validation
accuracy after a full run of ``max_resource`` epochs. The multi-fidelity methods all run
through :class:`~optuna_ext.pruners.SynchronousMORL`, so that they differ only in what the
paper varies: the schedule (recurring or one over the whole run), the first rung, and the
sampler.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field
import math
import time
from typing import Any

import optuna
import torch

from optuna_ext.pruners import SynchronousMORL
from optuna_ext.pruners import SynchronousRound
from optuna_ext.schedules import RecurringLR
from optuna_ext.tasks import build_model
from optuna_ext.tasks import DatasetSplit
from optuna_ext.tasks import evaluate
from optuna_ext.tasks import fit
from optuna_ext.tasks import load_digits
from optuna_ext.tasks import make_loader
from optuna_ext.tasks import make_optimizer
from optuna_ext.tasks import make_teacher_data
from optuna_ext.tasks import train_epoch


TASKS = ("digits", "teacher")
"""``digits``: scikit-learn's 8x8 digits; ``teacher``: 2-5-5-1 teacher data as 8x8 images."""

BASELINE_CONFIG: dict[str, float | int] = {
    "lr": 0.1,
    "weight_decay": 5e-4,
    "one_minus_momentum": 0.1,
    "batch_size": 128,
}
"""The paper's hand-tuned CIFAR configuration (section 4.1), trained with its step schedule."""

METHODS: dict[str, dict[str, Any]] = {
    "random": {"protocol": "full", "sampler": "random"},
    "sha": {"protocol": "sha", "sampler": "random", "recurring": False},
    "hyperband": {"protocol": "hyperband", "sampler": "random", "recurring": False},
    "morl": {"protocol": "sha", "sampler": "random", "recurring": True, "kind": "cosine"},
    "tpe": {"protocol": "full", "sampler": "tpe"},
    "morl_tpe": {"protocol": "sha", "sampler": "tpe", "recurring": True, "kind": "cosine"},
    "morl_step": {"protocol": "sha", "sampler": "random", "recurring": True, "kind": "step"},
    "morl_linear": {"protocol": "sha", "sampler": "random", "recurring": True, "kind": "linear"},
    "morl_cyclic": {"protocol": "sha", "sampler": "random", "recurring": True, "kind": "cyclic"},
    "morl_hyperband": {"protocol": "hyperband", "sampler": "random", "recurring": True},
}
"""The search methods; ``baseline`` (no search) is handled apart."""


@dataclass(frozen=True)
class Setting:
    """The budget: ``max_resource`` epochs per full run, ``budget_runs * max_resource`` in all.

    Args:
        max_resource:
            ``r``, the epochs of a full run.
        reduction_factor:
            ``eta``.
        min_exponent:
            ``s_min`` of SHA and MORL: the first rung ends at ``eta**s_min`` epochs.
        n_configs:
            The configurations per SHA/MORL bracket.
        budget_runs:
            The budget in full runs (the paper's 64).
        n_retrain:
            How many times (initial weights) the chosen configuration is retrained.
    """

    max_resource: int = 27
    reduction_factor: int = 3
    min_exponent: int = 1
    n_configs: int = 81
    budget_runs: int = 64
    n_retrain: int = 3

    @property
    def budget(self) -> int:
        return self.budget_runs * self.max_resource


def load_task(task: str) -> DatasetSplit:
    """The fixed data set of a task (the same split for every seed)."""
    if task == "digits":
        return load_digits()
    if task == "teacher":
        return make_teacher_data(teacher="2-5-5-1", form="image", seed=0)
    raise ValueError(f"The value of `task` is {task!r}, but must be one of {TASKS}.")


def suggest(trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    """The paper's section-4 space: lr and weight decay log [1e-6, 10], 1 - momentum log
    [1e-6, 1], batch size [16, 256]."""
    return {
        "lr": trial.suggest_float("lr", 1e-6, 10.0, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-6, 10.0, log=True),
        "one_minus_momentum": trial.suggest_float("one_minus_momentum", 1e-6, 1.0, log=True),
        "batch_size": trial.suggest_int("batch_size", 16, 256),
    }


def _epoch_seed(seed: int, number: int, epoch: int) -> int:
    return (seed * 1_000_003 + number * 10_007 + epoch) % (2**31 - 1)


@dataclass
class Event:
    """One call of the training function: epochs trained, and the value at the rung end."""

    epochs: int
    value: float
    full: bool
    number: int
    params: dict[str, Any]
    test_accuracy: float | None = None


@dataclass
class Trainer:
    """The training function of every method: SGD on the task's CNN, resumable by rounds.

    Each configuration's initial weights and the data order of each epoch depend only on
    ``seed``, the trial number and the epoch, so that two methods that draw the same
    configurations in the same order (random sampler, same seed) train them identically up to
    the schedule. A configuration whose loss becomes non-finite stops training (its epochs
    are still counted in the budget) and keeps the accuracy it has.
    """

    data: DatasetSplit
    seed: int
    events: list[Event] = field(default_factory=list)
    offset: int = 0

    def __call__(
        self, trial: optuna.trial.Trial, round_: SynchronousRound
    ) -> tuple[float, dict[str, Any]]:
        params = suggest(trial)
        number = trial.number + self.offset
        model = build_model("cnn", data=self.data, seed=_epoch_seed(self.seed, number, 0))
        optimizer = make_optimizer(
            "sgd",
            model.parameters(),
            lr=params["lr"],
            momentum=1.0 - params["one_minus_momentum"],
            weight_decay=params["weight_decay"],
        )
        diverged = False
        if round_.state is not None:
            model.load_state_dict(round_.state["model"])
            optimizer.load_state_dict(round_.state["optimizer"])
            diverged = bool(round_.state["diverged"])
        steps = math.ceil(len(self.data.train) / params["batch_size"])
        scheduler = round_.schedule(optimizer, steps_per_epoch=steps)
        for epoch in round_.epochs:
            if diverged:
                break
            loader = make_loader(
                self.data.train,
                batch_size=params["batch_size"],
                shuffle=True,
                seed=_epoch_seed(self.seed, number, epoch + 1),
            )
            loss = train_epoch(model, loader, optimizer, scheduler=scheduler)
            diverged = not math.isfinite(loss)
        value = evaluate(model, self.data.valid).accuracy
        test = evaluate(model, self.data.test).accuracy if round_.is_last else None
        self.events.append(
            Event(round_.end_epoch - round_.start_epoch, value, round_.is_last, number, params)
        )
        self.events[-1].test_accuracy = test
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "diverged": diverged,
        }
        return value, state


def _sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    raise ValueError(f"unknown sampler {name!r}")


def hyperband_brackets(setting: Setting) -> list[tuple[int, int]]:
    """Hyperband's brackets ``(n, s)`` for min resource 1: ``n = ceil((s_max+1)/(s+1) eta^s)``
    configurations whose first rung ends at ``r * eta^-s`` (Li et al. 2017, Algorithm 1)."""
    eta, r = setting.reduction_factor, setting.max_resource
    s_max = 0
    while eta ** (s_max + 1) <= r:
        s_max += 1
    return [(math.ceil((s_max + 1) / (s + 1) * eta**s), s) for s in range(s_max, -1, -1)]


def run_search(method: str, task: str, seed: int, setting: Setting) -> dict[str, Any]:
    """Run one method on one task with one seed; return what it chose and spent."""
    spec = METHODS[method]
    data = load_task(task)
    trainer = Trainer(data=data, seed=seed)
    r = setting.max_resource
    start = time.perf_counter()
    spent = 0
    if spec["protocol"] == "full":
        runner = SynchronousMORL(max_resource=r, n_configs=1, min_resource=r)
        study = optuna.create_study(direction="maximize", sampler=_sampler(spec["sampler"], seed))
        runner.optimize(study, trainer, n_brackets=setting.budget // r)
        spent = runner.epochs_per_bracket * (setting.budget // r)
    elif spec["protocol"] == "sha":
        runner = SynchronousMORL(
            max_resource=r,
            n_configs=setting.n_configs,
            reduction_factor=setting.reduction_factor,
            min_exponent=setting.min_exponent,
            recurring=spec["recurring"],
            schedule_kind=spec["kind"] if spec["recurring"] else "cosine",
        )
        n_brackets = max(setting.budget // runner.epochs_per_bracket, 1)
        study = optuna.create_study(direction="maximize", sampler=_sampler(spec["sampler"], seed))
        runner.optimize(study, trainer, n_brackets=n_brackets)
        spent = runner.epochs_per_bracket * n_brackets
    else:
        # Hyperband: brackets in Hyperband's order, repeated while the next one fits the budget;
        # each bracket has its own rung layout, hence its own study.
        runners: dict[int, tuple[SynchronousMORL, optuna.Study, int]] = {}
        for n, s in hyperband_brackets(setting):
            runner = SynchronousMORL(
                max_resource=r,
                n_configs=n,
                reduction_factor=setting.reduction_factor,
                min_resource=r // setting.reduction_factor**s,
                recurring=spec["recurring"],
            )
            study = optuna.create_study(
                direction="maximize", sampler=_sampler(spec["sampler"], seed * 100 + s)
            )
            runners[s] = (runner, study, 0)
        order = [s for _, s in hyperband_brackets(setting)]
        i = 0
        while True:
            s = order[i % len(order)]
            runner, study, done = runners[s]
            if spent + runner.epochs_per_bracket > setting.budget:
                break
            # Trial numbers restart in each study: keep the configurations' seeds apart.
            trainer.offset = 10_000 * (s + 1)
            runner.optimize(study, trainer, n_brackets=done + 1)
            runners[s] = (runner, study, done + 1)
            spent += runner.epochs_per_bracket
            i += 1
    seconds = time.perf_counter() - start
    assert spent == sum(e.epochs for e in trainer.events), (spent, method)

    # Best-so-far curve over full runs, and the chosen configuration.
    curve: list[tuple[int, float]] = []
    cumulative = 0
    best: Event | None = None
    for event in trainer.events:
        cumulative += event.epochs
        if event.full and (best is None or event.value > best.value):
            best = event
            curve.append((cumulative, event.value))
    assert best is not None
    retrained = [
        retrain(data, best.params, r, seed=10_000 + 100 * seed + j)
        for j in range(setting.n_retrain)
    ]
    return {
        "method": method,
        "task": task,
        "seed": seed,
        "chosen_params": best.params,
        "chosen_valid_accuracy": best.value,
        "chosen_test_accuracy_as_searched": best.test_accuracy,
        "retrained_test_accuracy": retrained,
        "test_accuracy": sum(retrained) / len(retrained),
        "epochs_spent": spent,
        "n_full_runs": sum(e.full for e in trainer.events),
        "n_trainings": len(trainer.events),
        "best_so_far": curve,
        "search_seconds": seconds,
    }


def retrain(
    data: DatasetSplit,
    params: dict[str, Any],
    epochs: int,
    *,
    seed: int,
    kind: str = "cosine",
) -> float:
    """Train a configuration from scratch with one schedule over all epochs; test accuracy."""
    model = build_model("cnn", data=data, seed=seed)
    result = fit(
        model,
        data,
        optimizer="sgd",
        lr=float(params["lr"]),
        momentum=1.0 - float(params["one_minus_momentum"]),
        weight_decay=float(params["weight_decay"]),
        batch_size=int(params["batch_size"]),
        epochs=epochs,
        schedule=lambda optimizer, steps: RecurringLR(
            optimizer,
            boundaries=[epochs],
            steps_per_epoch=steps,
            kind=kind,  # type: ignore[arg-type]
        ),
        seed=seed,
    )
    return result.test_accuracy


def run_baseline(task: str, seed: int, setting: Setting) -> dict[str, Any]:
    """The hand-tuned configuration, with the paper's step schedule and with one cosine."""
    data = load_task(task)
    r = setting.max_resource
    start = time.perf_counter()
    step = [
        retrain(data, BASELINE_CONFIG, r, seed=10_000 + 100 * seed + j, kind="step")
        for j in range(setting.n_retrain)
    ]
    cosine = [
        retrain(data, BASELINE_CONFIG, r, seed=10_000 + 100 * seed + j)
        for j in range(setting.n_retrain)
    ]
    return {
        "method": "baseline",
        "task": task,
        "seed": seed,
        "chosen_params": dict(BASELINE_CONFIG),
        "retrained_test_accuracy": step,
        "test_accuracy": sum(step) / len(step),
        "cosine_retrained_test_accuracy": cosine,
        "cosine_test_accuracy": sum(cosine) / len(cosine),
        "epochs_spent": 0,
        "search_seconds": time.perf_counter() - start,
    }


def set_threads() -> None:
    """One torch thread per process (the models are tiny; processes run in parallel)."""
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def run_fidelity(task: str, seed: int, setting: Setting, n_configs: int = 27) -> dict[str, Any]:
    """How well the rung-end values rank configurations by their final accuracy.

    ``n_configs`` random configurations are each trained for ``max_resource`` epochs twice,
    with one cosine over the whole run (SHA's view at the rung ends; the final value is the
    reference) and with the recurring schedule (MORL's view), evaluated at every rung end. For
    each rung end, the Spearman correlation of each view with the final accuracy of the
    single-cosine run is returned, over all configurations and over those whose final accuracy
    is above the median, with the share of the final top third that the view's top third keeps.
    """
    from scipy import stats

    data = load_task(task)
    r = setting.max_resource
    runner = SynchronousMORL(
        max_resource=r,
        n_configs=n_configs,
        reduction_factor=setting.reduction_factor,
        min_exponent=setting.min_exponent,
    )
    ends = runner.boundaries
    study = optuna.create_study(direction="maximize", sampler=_sampler("random", seed))
    views: dict[str, list[list[float]]] = {"single": [], "recurring": []}
    start = time.perf_counter()
    for _ in range(n_configs):
        trial = study.ask()
        for view, boundaries in (("single", (r,)), ("recurring", ends)):
            trainer = Trainer(data=data, seed=seed)
            state: dict[str, Any] | None = None
            values = []
            for k, end in enumerate(ends):
                round_ = SynchronousRound(
                    bracket=0,
                    rung=k,
                    start_epoch=ends[k - 1] if k else 0,
                    end_epoch=end,
                    is_last=k == len(ends) - 1,
                    state=state,
                    schedule_boundaries=tuple(boundaries),
                )
                value, state = trainer(trial, round_)
                values.append(value)
            views[view].append(values)
        study.tell(trial, views["single"][-1][-1])
    final = [v[-1] for v in views["single"]]
    good = [i for i, f in enumerate(final) if f > sorted(final)[len(final) // 2]]
    n_top = max(len(final) // setting.reduction_factor, 1)
    true_top = set(sorted(range(len(final)), key=lambda i: -final[i])[:n_top])
    out: dict[str, Any] = {
        "method": "fidelity",
        "task": task,
        "seed": seed,
        "rung_ends": list(ends),
        "final": final,
    }
    for view, rows in views.items():
        for k, end in enumerate(ends[:-1]):
            at = [row[k] for row in rows]
            top = set(sorted(range(len(at)), key=lambda i: (-at[i], i))[:n_top])
            out[f"{view}@{end}"] = {
                "spearman_all": float(stats.spearmanr(at, final).statistic),
                "spearman_good": float(
                    stats.spearmanr([at[i] for i in good], [final[i] for i in good]).statistic
                ),
                "top_third_kept": len(top & true_top) / n_top,
                "best_kept": int(max(range(len(final)), key=lambda i: final[i]) in top),
            }
        out[f"{view}_values"] = rows
    out["seconds"] = time.perf_counter() - start
    return out
