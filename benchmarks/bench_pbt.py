"""Paper 004's comparison at this machine's scale: PBT and PB2 against TPE, random and grid search.

Run from the repository root::

    python -m benchmarks.bench_pbt            # 3 tasks x 5 methods x 3 seeds (about 10 min)
    python -m benchmarks.bench_pbt --quick    # a smoke test

Paper 004 (Jacobson and Gonzalez, "Auto-Tune") compares grid search, random search, Bayesian
optimization and population-based training on small networks. Here every method tunes SGD's
learning rate (1e-3..1, log), momentum (0..0.99) and weight decay (1e-6..1e-2, log) with the
same budget of total training epochs:

* PBT and PB2 (:class:`~optuna_ext.samplers.PBTSampler`, ``pb2=True`` for PB2): a population
  of 8 trained for 10 generations of 1 epoch (80 epochs), with :func:`optuna_ext.pbt.run`;
* TPE (Optuna's ``TPESampler``, 4 startup trials instead of 10 so that it models at all), random
  search and a 2x2x2 grid (lr 0.01/0.1, momentum 0.5/0.9, weight decay 1e-5/1e-3): 8 trials of
  10 epochs (80 epochs), no pruning.

Tasks: the digits CNN (:func:`~optuna_ext.tasks.load_digits`, ``SmallCNN``) and paper 004's
2-3-1 and 2-5-5-1 MLPs on teacher data of their own architecture
(:func:`~optuna_ext.tasks.make_teacher_data`, 4000 points). Every model starts from the same
initial weights (``build_model(seed=seed)``).

Measured per run: the final test accuracy of the chosen model (search: the trial with the best
final validation accuracy; PBT: the best member of the last generation); the epochs spent
until any model first reached the task's target validation accuracy, both when the runs
execute one after the other (search: trials in order, epoch by epoch; PBT: segments in the
order they finished) and when each trial or member has a worker of its own; and the wall time.
The table is written with the command to ``benchmarks/results/pbt_comparison.md``, the raw
numbers to ``pbt_comparison.json``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import asdict
from dataclasses import dataclass
import json
import math
from pathlib import Path
import platform
import sys
import tempfile
import time
from typing import Any

import numpy as np
import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import TrialState
import torch

import optuna_ext.pbt
from optuna_ext.samplers._pbt import PBTSampler
from optuna_ext.samplers._pbt._population import GENERATION_KEY
from optuna_ext.tasks import build_model
from optuna_ext.tasks import DatasetSplit
from optuna_ext.tasks import fit
from optuna_ext.tasks import load_digits
from optuna_ext.tasks import make_teacher_data


_RESULTS_DIR = Path(__file__).resolve().parent / "results"
_LR = (1e-3, 1.0)
_MOMENTUM = (0.0, 0.99)
_WEIGHT_DECAY = (1e-6, 1e-2)
_GRID = {"lr": [0.01, 0.1], "momentum": [0.5, 0.9], "weight_decay": [1e-5, 1e-3]}
METHODS = ("pbt", "pb2", "tpe", "random", "grid")


@dataclass(frozen=True)
class Task:
    name: str
    model: str
    target: float
    load: Callable[[], DatasetSplit]


TASKS = {
    "digits-cnn": Task("digits-cnn", "cnn", 0.97, load_digits),
    "teacher-2-3-1-mlp": Task(
        "teacher-2-3-1-mlp",
        "mlp-2-3-1",
        0.98,
        lambda: make_teacher_data(teacher="2-3-1", n_samples=4000, seed=0),
    ),
    "teacher-2-5-5-1-mlp": Task(
        "teacher-2-5-5-1-mlp",
        "mlp-2-5-5-1",
        0.97,
        lambda: make_teacher_data(teacher="2-5-5-1", n_samples=4000, seed=0),
    ),
}


@dataclass
class Run:
    task: str
    method: str
    seed: int
    test_accuracy: float
    valid_accuracy: float
    epochs: int
    epochs_to_target: int | None
    parallel_epochs_to_target: int | None
    seconds: float
    chosen: dict[str, Any]


def _epochs_to_target(curve: list[float], target: float) -> int | None:
    """The 1-based position of the first value >= target in a sequence of epochs, or None."""
    return next((i + 1 for i, v in enumerate(curve) if v >= target), None)


def run_search(
    task: Task, data: DatasetSplit, method: str, seed: int, n_trials: int, epochs: int
) -> Run:
    if method == "tpe":
        sampler: optuna.samplers.BaseSampler = optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=4
        )
    elif method == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        sampler = optuna.samplers.GridSampler(_GRID, seed=seed)
    study = optuna.create_study(sampler=sampler, direction="maximize")

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", *_LR, log=True)
        momentum = trial.suggest_float("momentum", *_MOMENTUM)
        weight_decay = trial.suggest_float("weight_decay", *_WEIGHT_DECAY, log=True)
        result = fit(
            build_model(task.model, data=data, seed=seed),
            data,
            optimizer="sgd",
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            epochs=epochs,
            seed=seed * 1000 + trial.number,
            trial=trial,
        )
        trial.set_user_attr("test_accuracy", result.test_accuracy)
        return result.valid_accuracy[-1]

    start = time.perf_counter()
    study.optimize(objective, n_trials=n_trials)
    seconds = time.perf_counter() - start
    curve: list[float] = []
    parallel: list[int] = []
    for t in study.trials:
        trial_curve = [t.intermediate_values[s] for s in sorted(t.intermediate_values)]
        curve += trial_curve
        reached = _epochs_to_target(trial_curve, task.target)
        if reached is not None:
            parallel.append(reached)
    best = study.best_trial
    return Run(
        task=task.name,
        method=method,
        seed=seed,
        test_accuracy=float(best.user_attrs["test_accuracy"]),
        valid_accuracy=float(best.value),  # type: ignore[arg-type]
        epochs=len(curve),
        epochs_to_target=_epochs_to_target(curve, task.target),
        parallel_epochs_to_target=min(parallel, default=None),
        seconds=seconds,
        chosen=dict(best.params),
    )


def run_pbt(
    task: Task, data: DatasetSplit, method: str, seed: int, population: int, generations: int
) -> Run:
    sampler = PBTSampler(population_size=population, pb2=method == "pb2", seed=seed)
    study = optuna.create_study(sampler=sampler, direction="maximize")
    segment = optuna_ext.pbt.training_segment(
        data,
        model=task.model,
        epochs_per_generation=1,
        seed=seed,
        lr=_LR,
        momentum=_MOMENTUM,
        weight_decay=_WEIGHT_DECAY,
    )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = optuna_ext.pbt.run(
            study,
            segment,
            n_generations=generations,
            artifact_store=FileSystemArtifactStore(tmp),
            save_plots=False,
        )
        seconds = time.perf_counter() - start
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    done.sort(key=lambda t: t.datetime_complete)  # type: ignore[arg-type, return-value]
    curve = [float(t.value) for t in done]  # type: ignore[arg-type]
    best = result.best_trial
    assert best is not None
    return Run(
        task=task.name,
        method=method,
        seed=seed,
        test_accuracy=float(best.user_attrs["test_accuracy"]),
        valid_accuracy=float(best.value),  # type: ignore[arg-type]
        epochs=sum(1 for _ in done),
        epochs_to_target=_epochs_to_target(curve, task.target),
        parallel_epochs_to_target=min(
            (int(t.system_attrs[GENERATION_KEY]) + 1 for t in done if t.value >= task.target),  # type: ignore[operator]
            default=None,
        ),
        seconds=seconds,
        chosen={"schedule": [s["params"] for s in result.schedule()]},
    )


def _reached(values: list[int | None]) -> str:
    reached = [v for v in values if v is not None]
    if not reached:
        return f"- (0/{len(values)})"
    return f"{np.mean(reached):.1f} ({len(reached)}/{len(values)})"


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def summarize(runs: list[Run], tasks: list[str], methods: list[str]) -> str:
    lines = [
        "| task | method | test accuracy | valid accuracy | epochs to target, sequential "
        "(reached/runs) | epochs to target, one worker per member/trial | epochs | "
        "wall time (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for task in tasks:
        target = TASKS[task].target
        for method in methods:
            rs = [r for r in runs if r.task == task and r.method == method]
            if not rs:
                continue
            lines.append(
                f"| {task} (target {target}) | {method} | "
                f"{_mean_std([r.test_accuracy for r in rs])} | "
                f"{_mean_std([r.valid_accuracy for r in rs])} | "
                f"{_reached([r.epochs_to_target for r in rs])} | "
                f"{_reached([r.parallel_epochs_to_target for r in rs])} | "
                f"{rs[0].epochs} | {np.mean([r.seconds for r in rs]):.1f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument("--generations", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="1 seed, 4 members, 3 epochs")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.population, args.generations = 1, 4, 3
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    runs: list[Run] = []
    total_start = time.perf_counter()
    for task_name in tasks:
        task = TASKS[task_name]
        data = task.load()
        for seed in range(args.seeds):
            for method in methods:
                if method in ("pbt", "pb2"):
                    run = run_pbt(task, data, method, seed, args.population, args.generations)
                else:
                    run = run_search(task, data, method, seed, args.population, args.generations)
                runs.append(run)
                print(
                    f"{task_name:>20} {method:>6} seed {seed}: test {run.test_accuracy:.3f} "
                    f"valid {run.valid_accuracy:.3f} to-target {run.epochs_to_target} "
                    f"{run.seconds:.1f}s",
                    flush=True,
                )
    table = summarize(runs, tasks, methods)
    command = "python -m benchmarks.bench_pbt " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    header = (
        f"# PBT and PB2 against TPE, random and grid search (paper 004 at small scale)\n\n"
        f"Command: `{command.strip()}` ({time.perf_counter() - total_start:.0f} s in all).\n"
        f"Machine: {platform.machine()}, {platform.python_version()}, torch "
        f"{torch.__version__}, optuna {optuna.__version__}, 1 torch thread, CPU.\n\n"
        f"Budget per run: {args.population * args.generations} epochs "
        f"(PBT/PB2: {args.population} members x {args.generations} generations of 1 epoch; "
        f"search: {args.population} trials x {args.generations} epochs). Mean ± std over "
        f"{args.seeds} seeds. *Epochs to target, sequential*: epochs spent, running "
        "everything one after the other (search: trial by trial; PBT: generation by "
        "generation), until some model first reached the target validation accuracy (mean "
        "over the runs that reached it). *One worker per member/trial*: the same with "
        f"{args.population} workers in parallel, i.e. the epochs one model had trained when "
        "the first one reached the target (for TPE this assumes it would have proposed the "
        "same trials in parallel, which flatters it).\n"
    )
    print()
    print(table)
    if not args.no_write:
        _RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        (_RESULTS_DIR / "pbt_comparison.md").write_text(header + "\n" + table + "\n")
        payload = {
            "command": command.strip(),
            "population": args.population,
            "generations": args.generations,
            "seeds": args.seeds,
            "targets": {t: TASKS[t].target for t in tasks},
            "runs": [asdict(r) for r in runs],
        }
        (_RESULTS_DIR / "pbt_comparison.json").write_text(json.dumps(payload, indent=1) + "\n")
    return 0 if all(math.isfinite(r.test_accuracy) for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
