"""Hyperdyn against a hand-tuned schedule, greedy epoch-based BO and random search 5x.

Paper 002 (Hyperdyn), Table 1 and Figure 1(d), at this machine's scale. Run from the
repository root::

    python -m benchmarks.bench_hyperdyn

For each task (scikit-learn's 8x8 digits and the image form of the random-teacher data of
:func:`optuna_ext.tasks.make_teacher_data` (2-5-5-1 teacher, 2000 points, pixel noise 1.0: with
the default noise 0.1 every method passes 95 % of the best accuracy in the first epoch), both
with :class:`optuna_ext.tasks.SmallCNN`), each
batch size (128 and 1024) and each seed (0, 1, 2; the seed sets the initial weights and the
data order), it trains for ``--epochs`` epochs:

- ``hand SGD``: SGD with momentum 0.9 and a step decay (rate times 0.1 after 50 % and 75 % of
  the iterations, He et al.'s shape), its initial rate picked from a grid by the best final
  validation accuracy on seed 0 (the pick is used for all seeds);
- ``hand Adam``: Adam with the same step decay, its rate picked the same way;
- ``Hyperdyn SGD``: :func:`optuna_ext.hyperdyn.fit_hyperdyn` tuning SGD's rate and momentum
  (paper settings: 5 random starts, window 4, temperature 1, offset 0.01, accuracy in
  percentage points);
- ``Hyperdyn Adam``: the same, tuning Adam's rate and ``beta1``;
- ``greedy BO SGD``: the paper's epoch-based BO (offset infinite: always switch);
- ``random 5x SGD``: the paper's random search with 5 random candidates per epoch.

Each epoch of the Hyperdyn-type runs trains several candidates (5 at epoch 0, then 2, or 5 for
random search); as in the paper, "epochs" count the epochs of the kept trajectory, and the
one-epoch trainings spent are reported beside them. For each run it records the validation
accuracy after each epoch and the learning rate of each epoch, and derives the number of
epochs to reach 85 %, 90 %, 95 % and 99 % of the best validation accuracy of the ``hand SGD``
run of the same task, batch size and seed, and the final validation and test accuracies.
Speed-ups are the hand-tuned run's epochs to a mark divided by the method's (SGD methods
against ``hand SGD``, ``Hyperdyn Adam`` against ``hand Adam``); a run that never reaches a
mark counts as ``epochs + 1``. Runs go to ``--workers`` processes with one torch thread each.

The tables are printed and written, with the command, to
``benchmarks/results/hyperdyn_table1.md``; the curves and rates go to
``benchmarks/results/hyperdyn_table1.json``, the accuracy curves (Figure 1(d)) and the chosen
rates (Figure 2(a)) to ``benchmarks/results/hyperdyn_curves.png``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from collections.abc import Sequence
import concurrent.futures
import json
import os
from pathlib import Path
import platform
import statistics
import sys
import time
from typing import Any

import numpy as np
import optuna
import torch


_RESULTS_DIR = Path(__file__).resolve().parent / "results"
MARKS = (0.85, 0.90, 0.95, 0.99)
TASKS = ("digits", "teacher-image")
HAND_GRIDS = {
    ("sgd", 128): (0.01, 0.03, 0.1, 0.3),
    ("sgd", 1024): (0.03, 0.1, 0.3, 1.0),
    ("adam", 128): (3e-4, 1e-3, 3e-3, 1e-2),
    ("adam", 1024): (1e-3, 3e-3, 1e-2, 3e-2),
}
METHODS = (
    "hand SGD",
    "hand Adam",
    "Hyperdyn SGD",
    "Hyperdyn Adam",
    "greedy BO SGD",
    "random 5x SGD",
)


def _data(task: str) -> Any:
    from optuna_ext.tasks import load_digits
    from optuna_ext.tasks import make_teacher_data

    if task == "digits":
        return load_digits()
    # The 2-5-5-1 teacher's images with pixel noise 1 (the default 0.1 is solved in one epoch).
    return make_teacher_data(
        teacher="2-5-5-1", form="image", n_samples=2000, seed=0, image_noise=1.0
    )


def _step_decay(epochs: int) -> Callable[[torch.optim.Optimizer, int], Any]:
    def schedule(optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> Any:
        total = epochs * steps_per_epoch
        return torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=[total // 2, (3 * total) // 4], gamma=0.1
        )

    return schedule


def _hand(task: str, batch_size: int, seed: int, optimizer: str, lr: float, epochs: int) -> dict:
    from optuna_ext.tasks import build_model
    from optuna_ext.tasks import fit

    data = _data(task)
    model = build_model("cnn", data=data, seed=seed)
    start = time.perf_counter()
    result = fit(
        model,
        data,
        optimizer=optimizer,
        lr=lr,
        momentum=0.9,
        batch_size=batch_size,
        epochs=epochs,
        schedule=_step_decay(epochs),
        seed=seed,
    )
    return {
        "accuracy": result.valid_accuracy,
        "lrs": result.lrs,
        "test_accuracy": result.test_accuracy,
        "trainings": list(range(1, result.epochs + 1)),
        "seconds": time.perf_counter() - start,
        "initial_lr": lr,
    }


def _hyperdyn(task: str, batch_size: int, seed: int, method: str, epochs: int) -> dict:
    from optuna_ext.hyperdyn import fit_hyperdyn
    from optuna_ext.tasks import build_model

    data = _data(task)
    model = build_model("cnn", data=data, seed=seed)
    optimizer = "adam" if "Adam" in method else "sgd"
    start = time.perf_counter()
    result = fit_hyperdyn(
        model,
        data,
        optimizer=optimizer,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        greedy=method.startswith("greedy"),
        random_factor=5 if method.startswith("random") else None,
    )
    return {
        "accuracy": result.accuracy,
        "lrs": result.lrs,
        "params": result.params,
        "switched": result.switched,
        "test_accuracy": result.test_accuracy,
        "trainings": list(np.cumsum(result.n_trained).tolist()),
        "seconds": time.perf_counter() - start,
    }


def _job(args: tuple[str, ...]) -> tuple[tuple[str, ...], dict]:
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    kind = args[0]
    if kind == "grid":
        _, task, bs, optimizer, lr, epochs = args
        return args, _hand(task, int(bs), 0, optimizer, float(lr), int(epochs))
    _, task, bs, seed, method, epochs, lr = args
    if method.startswith("hand"):
        optimizer = "adam" if "Adam" in method else "sgd"
        return args, _hand(task, int(bs), int(seed), optimizer, float(lr), int(epochs))
    return args, _hyperdyn(task, int(bs), int(seed), method, int(epochs))


def _run(jobs: Sequence[tuple[str, ...]], workers: int) -> dict[tuple[str, ...], dict]:
    out: dict[tuple[str, ...], dict] = {}
    if workers <= 1:
        for job in jobs:
            key, value = _job(job)
            out[key] = value
            print(f"done {key} in {value['seconds']:.1f} s", flush=True)
        return out
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
        for key, value in pool.map(_job, jobs):
            out[key] = value
            print(f"done {key} in {value['seconds']:.1f} s", flush=True)
    return out


def _epochs_to(accuracy: list[float], target: float) -> int:
    for i, a in enumerate(accuracy):
        if a >= target:
            return i + 1
    return len(accuracy) + 1


def _fmt(values: list[float], digits: int = 2) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    epochs = args.epochs

    # 1. The hand-tuned rates: a grid on seed 0.
    grid_jobs = [
        ("grid", task, str(bs), opt, repr(lr), str(epochs))
        for task in args.tasks
        for bs in args.batch_sizes
        for opt in ("sgd", "adam")
        for lr in HAND_GRIDS[(opt, bs)]
    ]
    grid = _run(grid_jobs, args.workers)
    picked: dict[tuple[str, int, str], float] = {}
    for task in args.tasks:
        for bs in args.batch_sizes:
            for opt in ("sgd", "adam"):
                scores = {
                    lr: grid[("grid", task, str(bs), opt, repr(lr), str(epochs))]["accuracy"][-1]
                    for lr in HAND_GRIDS[(opt, bs)]
                }
                picked[(task, bs, opt)] = max(scores, key=lambda lr: (scores[lr], -lr))
                print(f"hand {opt} {task} bs={bs}: lr {picked[(task, bs, opt)]} ({scores})")

    # 2. All methods on all seeds.
    jobs = [
        (
            "run",
            task,
            str(bs),
            str(seed),
            method,
            str(epochs),
            repr(picked[(task, bs, "adam" if "Adam" in method else "sgd")]),
        )
        for task in args.tasks
        for bs in args.batch_sizes
        for seed in args.seeds
        for method in METHODS
    ]
    runs = _run(jobs, args.workers)

    def run(task: str, bs: int, seed: int, method: str) -> dict:
        for key, value in runs.items():
            if key[1:5] == (task, str(bs), str(seed), method):
                return value
        raise KeyError((task, bs, seed, method))

    # 3. Tables.
    rows = []
    summary: dict[str, Any] = {}
    for task in args.tasks:
        for bs in args.batch_sizes:
            for method in METHODS:
                baseline = "hand Adam" if method == "Hyperdyn Adam" else "hand SGD"
                per_mark: dict[float, list[float]] = {m: [] for m in MARKS}
                epochs_at: dict[float, list[int]] = {m: [] for m in MARKS}
                trainings_at: dict[float, list[int]] = {m: [] for m in MARKS}
                finals, tests, bests = [], [], []
                for seed in args.seeds:
                    r = run(task, bs, seed, method)
                    b = run(task, bs, seed, baseline)
                    reference = max(run(task, bs, seed, "hand SGD")["accuracy"])
                    for mark in MARKS:
                        e_method = _epochs_to(r["accuracy"], mark * reference)
                        e_base = _epochs_to(b["accuracy"], mark * reference)
                        epochs_at[mark].append(e_method)
                        per_mark[mark].append(e_base / e_method)
                        trainings = r["trainings"]
                        trainings_at[mark].append(
                            trainings[e_method - 1] if e_method <= len(trainings) else -1
                        )
                    finals.append(r["accuracy"][-1])
                    tests.append(r["test_accuracy"])
                    bests.append(max(r["accuracy"]))
                key = f"{task} bs={bs} {method}"
                summary[key] = {
                    "speedup_vs": baseline,
                    "speedup": {str(m): per_mark[m] for m in MARKS},
                    "epochs_to_mark": {str(m): epochs_at[m] for m in MARKS},
                    "trainings_to_mark": {str(m): trainings_at[m] for m in MARKS},
                    "final_valid": finals,
                    "best_valid": bests,
                    "test": tests,
                }
                rows.append(
                    f"| {task} | {bs} | {method} | "
                    + " | ".join(
                        f"{_fmt([float(e) for e in epochs_at[m]], 1)} "
                        f"({statistics.mean(per_mark[m]):.2f}x)"
                        for m in MARKS
                    )
                    + f" | {_fmt(finals, 3)} | {_fmt(tests, 3)} |"
                )
    header = (
        "| task | batch | method | "
        + " | ".join(f"epochs to {int(m * 100)} % (speed-up)" for m in MARKS)
        + " | final valid acc | test acc |"
    )
    table = "\n".join([header, "|---|---:|---|" + "---:|" * (len(MARKS) + 2), *rows])
    print(table)

    # The paper's Table 1 shape: mean speed-up of Hyperdyn over the hand-tuned schedule.
    t1_rows = []
    for task in args.tasks:
        for bs in args.batch_sizes:
            for method in ("Hyperdyn SGD", "Hyperdyn Adam", "greedy BO SGD", "random 5x SGD"):
                s = summary[f"{task} bs={bs} {method}"]["speedup"]
                t1_rows.append(
                    f"| {task} | {bs} | {method} | "
                    + " | ".join(f"{statistics.mean(s[str(m)]):.2f}x" for m in MARKS)
                    + " |"
                )
    table1 = "\n".join(
        [
            "| task | batch | method | " + " | ".join(f"{int(m * 100)} %" for m in MARKS) + " |",
            "|---|---:|---|" + "---:|" * len(MARKS),
            *t1_rows,
        ]
    )
    print(table1)
    elapsed = time.perf_counter() - started
    print(f"total {elapsed:.0f} s")
    if args.no_write:
        return

    command = ("python -m benchmarks.bench_hyperdyn " + " ".join(sys.argv[1:])).strip()
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"torch {torch.__version__}, {args.workers} worker processes with 1 torch thread"
    )
    _RESULTS_DIR.mkdir(exist_ok=True)
    payload = {
        "command": command,
        "machine": machine,
        "seconds": elapsed,
        "hand_tuned_rates": {f"{t} bs={b} {o}": lr for (t, b, o), lr in picked.items()},
        "summary": summary,
        "runs": {" | ".join(k[1:5]): v for k, v in runs.items()},
    }
    (_RESULTS_DIR / "hyperdyn_table1.json").write_text(json.dumps(payload, indent=1) + "\n")
    hand_lines = "\n".join(
        f"- {t}, batch {b}, {o}: initial rate {lr}" for (t, b, o), lr in picked.items()
    )
    (_RESULTS_DIR / "hyperdyn_table1.md").write_text(
        "# Hyperdyn against a hand-tuned schedule (paper 002, Table 1 and Figure 1(d))\n\n"
        f"Command: `{command}` ({elapsed / 60:.0f} min)\n\n"
        f"Machine: {machine}\n\n"
        f"{epochs} epochs per run, seeds {args.seeds}. Marks are shares of the best "
        "validation accuracy of the hand-tuned SGD run (same task, batch size and seed).\n\n"
        "Hand-tuned initial rates (grid on seed 0, best final validation accuracy):\n\n"
        f"{hand_lines}\n\n"
        "## Speed-up over the hand-tuned schedule (mean over seeds; the paper's Table 1)\n\n"
        "SGD methods against hand-tuned SGD, Hyperdyn Adam against hand-tuned Adam. A run "
        "that never reaches a mark counts as epochs + 1.\n\n"
        f"{table1}\n\n"
        "## Epochs to each mark (mean ± sd over seeds), final accuracies\n\n"
        f"{table}\n"
    )
    _plot(payload, args, epochs)


def _plot(payload: dict, args: argparse.Namespace, epochs: int) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is in the benchmark extra
        return
    runs = payload["runs"]
    combos = [(t, b) for t in args.tasks for b in args.batch_sizes]
    fig, axes = plt.subplots(2, len(combos), figsize=(4.2 * len(combos), 7), squeeze=False)
    for col, (task, bs) in enumerate(combos):
        for method in METHODS:
            curves = [runs[f"{task} | {bs} | {seed} | {method}"] for seed in args.seeds]
            acc = np.mean([c["accuracy"] for c in curves], axis=0)
            axes[0][col].plot(range(1, len(acc) + 1), acc, label=method)
            lrs = np.exp(np.mean([np.log(c["lrs"]) for c in curves], axis=0))
            axes[1][col].plot(range(1, len(lrs) + 1), lrs, label=method)
        axes[0][col].set_title(f"{task}, batch {bs}")
        axes[0][col].set_ylabel("validation accuracy (mean over seeds)")
        axes[0][col].set_ylim(0.5, 1.0)
        axes[1][col].set_yscale("log")
        axes[1][col].set_ylabel("learning rate (geometric mean)")
        axes[1][col].set_xlabel("epoch")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(_RESULTS_DIR / "hyperdyn_curves.png", dpi=90)


if __name__ == "__main__":
    main()
