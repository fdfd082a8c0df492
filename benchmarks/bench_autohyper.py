"""autoHyper against random search, the default rate and a grid oracle (issue 3, quality).

The autoHyper paper (``/work/shared/papers/000_fd46360f96287aec.txt``, section 4 and
appendix D) compares the initial learning rate that autoHyper picks with the rate suggested by
each optimizer's authors and with random search. This benchmark makes the same comparison at
this machine's scale. Run from the repository root::

    python -m benchmarks.bench_autohyper

For each task (scikit-learn's 8x8 digits, and the image form of the 2-5-5-1 random-teacher
data of :func:`optuna_ext.tasks.make_teacher_data`, teacher seed 0), each optimizer (Adam,
SGD with momentum 0.9, AdaGrad, RMSProp) and each seed (the seed sets the initial weights of
:class:`optuna_ext.tasks.SmallCNN` and the data order; the data split is fixed), it runs:

- ``autoHyper``: an in-memory study with
  :class:`~optuna_ext.samplers.AutoHyperSampler` (default settings: first grid
  ``[1e-4, 0.1]``, 20 points; ``max_trials=100``) over
  ``trial.suggest_float("lr", 1e-6, 10.0, log=True)``; every trial trains 5 epochs and a
  :class:`~optuna_ext.metrics.KnowledgeGainTracker` measures Z after each epoch, as in
  ``optuna-ext demo --methods autohyper``. It records the trials used and the chosen rate.
- ``random search``: as in the paper's appendix D, as many trials as autoHyper used, with
  rates drawn log-uniformly from autoHyper's initial range ``[1e-4, 0.1]``; each trains 5
  epochs and the rate with the lowest training loss in the 5th epoch is chosen (a diverged
  run counts as an infinite loss).
- ``default``: the usual default rate of each optimizer (PyTorch's for Adam ``1e-3``, AdaGrad
  ``1e-2`` and RMSProp ``1e-2``; SGD has no PyTorch default, so the common ``1e-2`` of Keras).
- ``oracle``: every rate of a dense log grid (13 points from ``1e-5`` to ``1``, ratio 2.6, unless
  told otherwise) trained fully; the one with the best final validation accuracy (ties: lower
  validation loss) is chosen. The first 5 epochs of these runs also give Z(eta) on the grid.

Each chosen rate is then trained fully: ``--epochs`` epochs (20 by default) at a constant
rate, batch 64, no weight decay; RMSProp without momentum and AdaGrad/Adam with PyTorch's other
defaults, as in the paper ("all other hyper-parameters ... default"). The test accuracy of the
final model is reported. A constant rate keeps the first 5 epochs of a full run identical to a
5-epoch search trial with the same rate and seed, which lets the oracle runs double as the
Z(eta) sweep.

Output: the tables (test accuracy mean and 95 % t-interval over the seeds, the trials used and
the chosen rates per seed, paired differences) go to ``benchmarks/results/autohyper_quality.md``,
the raw numbers to ``benchmarks/results/autohyper_quality.json``, and the Z(eta) curves (the
paper's Figure 2: Z against the rate with the default and the autoHyper rates marked) to
``benchmarks/results/autohyper_z_curves.png``. Jobs (one per task, optimizer and seed) go to
``--workers`` processes with one torch thread each.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import concurrent.futures
import dataclasses
import functools
import json
import math
import multiprocessing
import os
from pathlib import Path
import platform
import statistics
import sys
import time
from typing import Any
from typing import TYPE_CHECKING
import warnings

import numpy as np
import optuna
import torch


if TYPE_CHECKING:
    from torch import nn

    from optuna_ext.tasks import DatasetSplit


_RESULTS_DIR = Path(__file__).resolve().parent / "results"
_DEFAULT_PREFIX = _RESULTS_DIR / "autohyper_quality"
_DEFAULT_PLOT = _RESULTS_DIR / "autohyper_z_curves.png"

TASKS = ("digits", "teacher")
OPTIMIZERS = ("adam", "sgd", "adagrad", "rmsprop")
METHODS = ("autoHyper", "random search", "default", "oracle")
OPTIMIZER_LABELS = {"adam": "Adam", "sgd": "SGD (momentum 0.9)", "adagrad": "AdaGrad"}
OPTIMIZER_LABELS["rmsprop"] = "RMSProp"
DEFAULT_LRS = {"adam": 1e-3, "sgd": 1e-2, "adagrad": 1e-2, "rmsprop": 1e-2}
"""Adam, AdaGrad, RMSProp: PyTorch's defaults; SGD (none in PyTorch): Keras' 0.01."""
MOMENTUM = {"adam": 0.0, "sgd": 0.9, "adagrad": 0.0, "rmsprop": 0.0}
"""Momentum passed to :func:`optuna_ext.tasks.fit` (ignored by Adam and AdaGrad)."""
RANDOM_SEARCH_RANGE = (1e-4, 0.1)
"""autoHyper's initial grid, the random search's range in the paper's appendix D."""
AUTOHYPER_SUGGEST_RANGE = (1e-6, 10.0)
"""The distribution autoHyper's trials suggest from (as in the lead's demo)."""
TEACHER = "2-5-5-1"
TEACHER_SEED = 0
MODEL = "cnn"
_T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306}


@dataclasses.dataclass(frozen=True)
class Config:
    """The settings of one benchmark run (see :func:`_parse_args`)."""

    tasks: tuple[str, ...]
    optimizers: tuple[str, ...]
    seeds: tuple[int, ...]
    epochs: int
    search_epochs: int
    grid: tuple[float, ...]
    image_noise: float
    max_trials: int
    workers: int
    relative_width: float | None = None


# --------------------------------------------------------------------------------------------
# One job: one task, optimizer and seed.


@functools.lru_cache(maxsize=4)
def _load(task: str, image_noise: float) -> DatasetSplit:
    from optuna_ext.tasks import load_digits
    from optuna_ext.tasks import make_teacher_data

    if task == "digits":
        return load_digits()
    return make_teacher_data(
        teacher=TEACHER, form="image", seed=TEACHER_SEED, image_noise=image_noise
    )


def _fit(
    data: DatasetSplit,
    optimizer: str,
    lr: float,
    *,
    seed: int,
    epochs: int,
    track_epochs: int = 0,
    trial: optuna.Trial | None = None,
) -> tuple[Any, list[float]]:
    """Train a fresh CNN; return the FitResult and Z_t of the first ``track_epochs`` epochs."""
    from optuna_ext.metrics import KnowledgeGainTracker
    from optuna_ext.tasks import build_model
    from optuna_ext.tasks import fit

    model = build_model(MODEL, data=data, seed=seed)
    tracker = KnowledgeGainTracker(model) if track_epochs > 0 else None

    def callback(epoch: int, _: nn.Module) -> None:
        if tracker is not None and epoch < track_epochs:
            tracker()

    result = fit(
        model,
        data,
        optimizer=optimizer,
        lr=lr,
        momentum=MOMENTUM[optimizer],
        epochs=epochs,
        seed=seed,
        trial=trial,
        epoch_callback=callback,
    )
    if tracker is not None and trial is not None and tracker.snapshots:
        tracker.report(trial)
    return result, ([] if tracker is None else tracker.z_per_epoch)


def _search_loss(result: Any, search_epochs: int) -> float:
    """The training loss of the last search epoch; ``inf`` for a run that diverged."""
    if result.diverged or len(result.train_loss) < search_epochs:
        return math.inf
    loss = float(result.train_loss[search_epochs - 1])
    return loss if math.isfinite(loss) else math.inf


def _full_record(result: Any, lr: float | None) -> dict[str, Any]:
    return {
        "lr": lr,
        "valid_accuracy": result.valid_accuracy[-1],
        "valid_loss": result.valid_loss[-1],
        "test_accuracy": result.test_accuracy,
        "test_loss": result.test_loss,
        "final_train_loss": result.train_loss[-1],
        "diverged": result.diverged,
        "epochs": result.epochs,
    }


def _run_autohyper(
    data: DatasetSplit, optimizer: str, seed: int, config: Config
) -> dict[str, Any]:
    from optuna_ext.metrics import KNOWLEDGE_GAIN_Z_KEY
    from optuna_ext.samplers import AutoHyperSampler

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", *AUTOHYPER_SUGGEST_RANGE, log=True)
        result, zs = _fit(
            data,
            optimizer,
            lr,
            seed=seed,
            epochs=config.search_epochs,
            track_epochs=config.search_epochs,
            trial=trial,
        )
        trial.set_user_attr("train_loss", _search_loss(result, config.search_epochs))
        if not zs:
            # Diverged in the first epoch: no Z. A pruned trial without Z is a failed attempt
            # for the sampler (retried, then skipped).
            raise optuna.TrialPruned("diverged before the first tracked epoch")
        return float(result.valid_accuracy[-1])

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(
            direction="maximize",
            sampler=AutoHyperSampler(
                seed=seed,
                max_trials=config.max_trials,
                relative_width=config.relative_width,
                save_plot=False,
            ),
            pruner=optuna.pruners.NopPruner(),
        )
        study.optimize(objective, n_trials=config.max_trials + 1)
    search = AutoHyperSampler.result(study)
    trials = [
        {
            "lr": t.params.get("lr"),
            "state": t.state.name,
            "z": t.user_attrs.get(KNOWLEDGE_GAIN_Z_KEY),
            "train_loss": t.user_attrs.get("train_loss"),
            "valid_accuracy": t.value,
        }
        for t in study.get_trials(deepcopy=False)
    ]
    return {
        "lr": search.lr,
        "converged": search.converged,
        "reason": search.reason,
        "n_trials": search.n_trials,
        "bounds_reached": list(search.bounds_reached),
        "seconds": time.perf_counter() - start,
        "trials": trials,
    }


def _run_random_search(
    data: DatasetSplit, optimizer: str, seed: int, n_trials: int, config: Config
) -> dict[str, Any]:
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    low, high = RANDOM_SEARCH_RANGE
    lrs = np.exp(rng.uniform(math.log(low), math.log(high), size=n_trials))
    trials = []
    for lr in lrs:
        result, _ = _fit(data, optimizer, float(lr), seed=seed, epochs=config.search_epochs)
        trials.append({"lr": float(lr), "train_loss": _search_loss(result, config.search_epochs)})
    best = min(trials, key=lambda t: t["train_loss"]) if trials else None
    return {
        "n_trials": n_trials,
        "lr": None if best is None else best["lr"],
        "train_loss": None if best is None else best["train_loss"],
        "seconds": time.perf_counter() - start,
        "trials": trials,
    }


def run_job(task: str, optimizer: str, seed: int, config: Config) -> dict[str, Any]:
    """Run every method for one task, optimizer and seed; return the raw record."""
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start = time.perf_counter()
    data = _load(task, config.image_noise)

    autohyper = _run_autohyper(data, optimizer, seed, config)
    random_search = _run_random_search(data, optimizer, seed, autohyper["n_trials"], config)

    grid_start = time.perf_counter()
    grid = []
    for lr in config.grid:
        result, zs = _fit(
            data,
            optimizer,
            lr,
            seed=seed,
            epochs=config.epochs,
            track_epochs=config.search_epochs,
        )
        record = _full_record(result, lr)
        record["z_per_epoch"] = zs
        record["z"] = sum(zs) / len(zs) if zs else None
        record["search_train_loss"] = _search_loss(result, config.search_epochs)
        grid.append(record)
    grid_seconds = time.perf_counter() - grid_start
    oracle = max(grid, key=lambda r: (r["valid_accuracy"], -_finite_or_inf(r["valid_loss"])))

    full: dict[str, dict[str, Any] | None] = {"oracle": dict(oracle)}
    chosen = {
        "autoHyper": autohyper["lr"],
        "random search": random_search["lr"],
        "default": DEFAULT_LRS[optimizer],
    }
    for method, lr in chosen.items():
        if lr is None:
            full[method] = None
            continue
        result, _ = _fit(data, optimizer, float(lr), seed=seed, epochs=config.epochs)
        full[method] = _full_record(result, float(lr))
    return {
        "task": task,
        "optimizer": optimizer,
        "seed": seed,
        "autohyper": autohyper,
        "random_search": random_search,
        "grid": grid,
        "grid_seconds": grid_seconds,
        "full": full,
        "seconds": time.perf_counter() - start,
    }


def _finite_or_inf(value: float) -> float:
    return value if math.isfinite(value) else math.inf


# --------------------------------------------------------------------------------------------
# Summary.


def _interval(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of the 95 % t-interval (NaN half-width for one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    t = _T_975.get(len(values) - 1, 1.96)
    return mean, t * statistics.stdev(values) / math.sqrt(len(values))


def _method_cost(job: dict[str, Any], method: str, config: Config) -> tuple[int, int]:
    """(trials, training epochs) a method spent choosing its rate."""
    if method == "autoHyper":
        n = int(job["autohyper"]["n_trials"])
        return n, n * config.search_epochs
    if method == "random search":
        n = int(job["random_search"]["n_trials"])
        return n, n * config.search_epochs
    if method == "oracle":
        return len(config.grid), len(config.grid) * config.epochs
    return 0, 0


def summarize(jobs: Sequence[dict[str, Any]], config: Config) -> dict[str, Any]:
    """Per task, optimizer and method: test accuracy over seeds, trials, rates; paired gaps."""
    cells: list[dict[str, Any]] = []
    pairs: dict[str, list[float]] = {}
    comparisons = (
        ("autoHyper", "random search"),
        ("autoHyper", "default"),
        ("autoHyper", "oracle"),
        ("random search", "default"),
        ("random search", "oracle"),
        ("default", "oracle"),
    )
    for task in config.tasks:
        for optimizer in config.optimizers:
            group = sorted(
                (j for j in jobs if j["task"] == task and j["optimizer"] == optimizer),
                key=lambda j: j["seed"],
            )
            if not group:
                continue
            for method in METHODS:
                records = [j["full"][method] for j in group]
                accs = [r["test_accuracy"] for r in records if r is not None]
                mean, half = _interval(accs) if accs else (math.nan, math.nan)
                costs = [_method_cost(j, method, config) for j in group]
                cells.append(
                    {
                        "task": task,
                        "optimizer": optimizer,
                        "method": method,
                        "seeds": [j["seed"] for j in group],
                        "test_accuracy": [
                            None if r is None else r["test_accuracy"] for r in records
                        ],
                        "test_mean": mean,
                        "test_ci95": half,
                        "lrs": [None if r is None else r["lr"] for r in records],
                        "trials": [c[0] for c in costs],
                        "epochs_spent": [c[1] for c in costs],
                        "reasons": (
                            [j["autohyper"]["reason"] for j in group]
                            if method == "autoHyper"
                            else None
                        ),
                        "diverged": [bool(r is not None and r["diverged"]) for r in records],
                    }
                )
            for a, b in comparisons:
                for j in group:
                    ra, rb = j["full"][a], j["full"][b]
                    if ra is None or rb is None:
                        continue
                    pairs.setdefault(f"{a} - {b}", []).append(
                        ra["test_accuracy"] - rb["test_accuracy"]
                    )
    paired = {}
    for key, diffs in pairs.items():
        mean, half = _interval(diffs)
        paired[key] = {
            "n": len(diffs),
            "mean": mean,
            "ci95": half,
            "wins": sum(d > 0 for d in diffs),
            "ties": sum(d == 0 for d in diffs),
            "losses": sum(d < 0 for d in diffs),
        }
    return {"cells": cells, "paired": paired}


# --------------------------------------------------------------------------------------------
# Report.


def _pct(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def _lr(value: float | None) -> str:
    return "none" if value is None else f"{value:.2g}"


def _machine() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"torch {torch.__version__}, optuna {optuna.__version__}; one torch thread per worker "
        f"process; load average at start {load} (the machine was shared with other jobs)"
    )


def format_markdown(
    jobs: Sequence[dict[str, Any]],
    summary: dict[str, Any],
    config: Config,
    *,
    command: str,
    machine: str,
    wall_seconds: float,
) -> str:
    grid = config.grid
    lines = [
        "# autoHyper against random search, the default rate and a grid oracle (issue 3)",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine}.",
        "",
        f"Wall time: {wall_seconds / 60:.1f} min with {config.workers} worker processes.",
        "",
        "## Setup",
        "",
        f"- Tasks: {', '.join(config.tasks)} (digits: scikit-learn's 8x8 digits, fixed split "
        f'1079/359/359; teacher: `make_teacher_data(teacher="{TEACHER}", form="image", '
        f"seed={TEACHER_SEED}, image_noise={config.image_noise})`, 1200/400/400). Model: "
        '`build_model("cnn")` (SmallCNN, two 3x3 convolutions). Seeds '
        f"{list(config.seeds)} set the initial weights and the data order.",
        f"- Full training: {config.epochs} epochs at a constant rate, batch 64, no weight decay; "
        "the test accuracy of the final model is reported. SGD with momentum 0.9; RMSProp, "
        "AdaGrad and Adam with PyTorch's other defaults (RMSProp without momentum).",
        "- autoHyper: `AutoHyperSampler(seed=seed, max_trials="
        f"{config.max_trials}, relative_width={config.relative_width})` with its other "
        "defaults (first grid [1e-4, 0.1], 20 points, `lr_delta=3e-5`), trials "
        f"suggest `lr` in [{AUTOHYPER_SUGGEST_RANGE[0]:g}, {AUTOHYPER_SUGGEST_RANGE[1]:g}] "
        f"(log), {config.search_epochs} epochs each with a `KnowledgeGainTracker` per epoch.",
        f"- Random search (paper, appendix D): as many trials as autoHyper used, rates "
        f"log-uniform in [{RANDOM_SEARCH_RANGE[0]:g}, {RANDOM_SEARCH_RANGE[1]:g}] "
        f"(`numpy.random.default_rng(seed)`), {config.search_epochs} epochs each; the rate with "
        f"the lowest training loss of epoch {config.search_epochs} wins (diverged: infinite).",
        "- Default rates: "
        + ", ".join(f"{OPTIMIZER_LABELS[o]} {DEFAULT_LRS[o]:g}" for o in config.optimizers)
        + " (PyTorch's defaults; SGD has none in PyTorch, 0.01 is Keras').",
        f"- Oracle: {len(grid)} rates log-spaced from {grid[0]:g} to {grid[-1]:g} (ratio "
        f"{(grid[-1] / grid[0]) ** (1 / max(1, len(grid) - 1)):.3g}), each trained fully; "
        "the best final validation accuracy (ties: lower validation loss) is chosen and its "
        "test accuracy reported. It costs far more than the others (`epochs spent`).",
        "",
        "## Test accuracy after full training",
        "",
        "Mean over seeds with the 95 % t-interval half-width, in %. `trials` is the number of "
        "rates each method trained to choose its rate (per seed), `epochs spent` the training "
        "epochs of that choice (per seed), `rates` the chosen rate per seed.",
        "",
        "| task | optimizer | method | test acc. % | per seed | trials | epochs spent | rates |",
        "|---|---|---|---:|---|---|---|---|",
    ]
    for cell in summary["cells"]:
        per_seed = " / ".join(_pct(a) for a in cell["test_accuracy"])
        ci = "" if math.isnan(cell["test_ci95"]) else f" ± {100 * cell['test_ci95']:.1f}"
        rates = " / ".join(_lr(x) for x in cell["lrs"])
        if any(cell["diverged"]):
            rates += " (diverged: " + "/".join("y" if d else "n" for d in cell["diverged"]) + ")"
        lines.append(
            f"| {cell['task']} | {OPTIMIZER_LABELS[cell['optimizer']]} | {cell['method']} | "
            f"{_pct(cell['test_mean'])}{ci} | {per_seed} | "
            f"{' / '.join(str(t) for t in cell['trials'])} | "
            f"{' / '.join(str(e) for e in cell['epochs_spent'])} | {rates} |"
        )
    lines += [
        "",
        "## Paired differences in test accuracy",
        "",
        "Over every task, optimizer and seed (same seed, same task: a paired difference), in "
        "percentage points: mean, 95 % t-interval half-width, and wins/ties/losses of the first "
        "method.",
        "",
        "| comparison | pairs | mean (pp) | ± 95 % | wins / ties / losses |",
        "|---|---:|---:|---:|---|",
    ]
    for key, p in summary["paired"].items():
        lines.append(
            f"| {key} | {p['n']} | {100 * p['mean']:+.2f} | {100 * p['ci95']:.2f} | "
            f"{p['wins']} / {p['ties']} / {p['losses']} |"
        )
    lines += [
        "",
        "## autoHyper's searches",
        "",
        "| task | optimizer | seed | trials | stop reason | chosen rate | Z at the chosen rate "
        "| random search's rate (5-epoch train loss) | oracle's rate |",
        "|---|---|---:|---:|---|---:|---:|---|---:|",
    ]
    for job in sorted(
        jobs, key=lambda j: (j["task"], OPTIMIZERS.index(j["optimizer"]), j["seed"])
    ):
        ah = job["autohyper"]
        z_at = _z_at(ah)
        rs = job["random_search"]
        rs_loss = rs["train_loss"]
        lines.append(
            f"| {job['task']} | {OPTIMIZER_LABELS[job['optimizer']]} | {job['seed']} | "
            f"{ah['n_trials']} | {ah['reason']} | {_lr(ah['lr'])} | "
            f"{'-' if z_at is None else f'{z_at:.2f}'} | {_lr(rs['lr'])} "
            f"({'-' if rs_loss is None else f'{rs_loss:.3g}'}) | "
            f"{_lr(job['full']['oracle']['lr'])} |"
        )
    lines += [
        "",
        "## Time per job",
        "",
        "| task | optimizer | seed | autoHyper search (s) | random search (s) | oracle grid (s) "
        "| job (s) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for job in sorted(
        jobs, key=lambda j: (j["task"], OPTIMIZERS.index(j["optimizer"]), j["seed"])
    ):
        lines.append(
            f"| {job['task']} | {OPTIMIZER_LABELS[job['optimizer']]} | {job['seed']} | "
            f"{job['autohyper']['seconds']:.0f} | {job['random_search']['seconds']:.0f} | "
            f"{job['grid_seconds']:.0f} | {job['seconds']:.0f} |"
        )
    lines.append("")
    return "\n".join(lines)


def _job_order(job: dict[str, Any]) -> tuple[str, int, int]:
    return job["task"], OPTIMIZERS.index(job["optimizer"]), job["seed"]


def _z_at(autohyper: dict[str, Any]) -> float | None:
    """Z of the last autoHyper trial at the chosen rate (relative tolerance 1e-9)."""
    lr = autohyper["lr"]
    if lr is None:
        return None
    zs = [
        t["z"]
        for t in autohyper["trials"]
        if t["lr"] is not None and t["z"] is not None and math.isclose(t["lr"], lr, rel_tol=1e-9)
    ]
    return zs[-1] if zs else None


# --------------------------------------------------------------------------------------------
# Figure 2: Z(eta).


def plot_z_curves(jobs: Sequence[dict[str, Any]], config: Config, path: Path, seed: int) -> bool:
    """Z against the rate per task and optimizer (one seed), like the paper's Figure 2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [j for j in jobs if j["seed"] == seed]
    if not chosen:
        return False
    tasks = [t for t in config.tasks if any(j["task"] == t for j in chosen)]
    optimizers = [o for o in config.optimizers if any(j["optimizer"] == o for j in chosen)]
    fig, axes = plt.subplots(
        len(tasks),
        len(optimizers),
        figsize=(4.2 * len(optimizers), 3.6 * len(tasks)),
        squeeze=False,
        sharey=True,
    )
    for row, task in enumerate(tasks):
        for col, optimizer in enumerate(optimizers):
            ax = axes[row][col]
            job = next(
                (j for j in chosen if j["task"] == task and j["optimizer"] == optimizer), None
            )
            if job is None:
                ax.set_axis_off()
                continue
            grid = [g for g in job["grid"] if g["z"] is not None]
            ax.plot(
                [g["lr"] for g in grid],
                [g["z"] for g in grid],
                "o-",
                color="tab:blue",
                label="Z, grid (5 epochs)",
            )
            points = [t for t in job["autohyper"]["trials"] if t["z"] is not None]
            ax.scatter(
                [t["lr"] for t in points],
                [t["z"] for t in points],
                s=14,
                color="tab:gray",
                alpha=0.6,
                zorder=3,
                label="Z, autoHyper trials",
            )
            default = DEFAULT_LRS[optimizer]
            ax.axvline(default, color="tab:red", linestyle="--", label=f"default {default:g}")
            ah = job["autohyper"]["lr"]
            if ah is not None:
                ax.axvline(ah, color="tab:green", linewidth=2, label=f"autoHyper {ah:.2g}")
            oracle = job["full"]["oracle"]["lr"]
            ax.axvline(oracle, color="black", linestyle=":", label=f"oracle {oracle:.2g}")
            acc = ax.twinx()
            acc.plot(
                [g["lr"] for g in job["grid"]],
                [100 * g["test_accuracy"] for g in job["grid"]],
                "s--",
                color="tab:orange",
                markersize=3,
                alpha=0.7,
                label=f"test acc. ({config.epochs} ep.)",
            )
            acc.set_ylim(0, 100)
            if col == len(optimizers) - 1:
                acc.set_ylabel("test accuracy (%)", color="tab:orange")
            else:
                acc.set_yticklabels([])
            ax.set_xscale("log")
            ax.set_ylim(-0.03, 1.03)
            ax.set_title(f"{task}, {OPTIMIZER_LABELS[optimizer]}", fontsize=10)
            if col == 0:
                ax.set_ylabel("Z(eta)")
            if row == len(tasks) - 1:
                ax.set_xlabel("initial learning rate eta")
            handles, labels = ax.get_legend_handles_labels()
            h2, l2 = acc.get_legend_handles_labels()
            ax.legend(handles + h2, labels + l2, fontsize=7, loc="lower left")
    fig.suptitle(
        f"Z(eta) of SmallCNN after {config.search_epochs} epochs, seed {seed}\nlines: default "
        "rate (red), autoHyper's (green), oracle's (black)",
        fontsize=11,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------------------------
# CLI.


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_autohyper",
        description="autoHyper against random search, default rates and a grid oracle.",
    )
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated: digits,teacher")
    parser.add_argument(
        "--optimizers", default=",".join(OPTIMIZERS), help="comma-separated: adam,sgd,..."
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    parser.add_argument("--epochs", type=int, default=20, help="full-training epochs")
    parser.add_argument("--search-epochs", type=int, default=5, help="epochs per search trial")
    parser.add_argument("--grid-points", type=int, default=13, help="oracle grid size")
    parser.add_argument("--grid-min", type=float, default=1e-5, help="oracle grid start")
    parser.add_argument("--grid-max", type=float, default=1.0, help="oracle grid end")
    parser.add_argument(
        "--image-noise", type=float, default=0.1, help="pixel noise of the teacher images"
    )
    parser.add_argument("--max-trials", type=int, default=100, help="autoHyper's trial guard")
    parser.add_argument(
        "--relative-width",
        type=float,
        default=None,
        help="AutoHyperSampler's relative_width stop (default: None, the sampler's default)",
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--plot-seed", type=int, default=0, help="seed of the Z(eta) figure")
    parser.add_argument(
        "--output-prefix",
        default=str(_DEFAULT_PREFIX),
        help="writes PREFIX.md and PREFIX.json (default: %(default)s)",
    )
    parser.add_argument("--plot", default=str(_DEFAULT_PLOT), help="PNG path ('' for none)")
    parser.add_argument(
        "--from-json",
        default="",
        help="rebuild the tables and the figure from a JSON this script wrote, without training",
    )
    return parser.parse_args(argv)


def _config(args: argparse.Namespace) -> Config:
    tasks = _csv(args.tasks)
    optimizers = _csv(args.optimizers)
    for name, values, allowed in (
        ("--tasks", tasks, TASKS),
        ("--optimizers", optimizers, OPTIMIZERS),
    ):
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            raise SystemExit(f"{name}: {bad or 'nothing'} given, choose from {allowed}")
    seeds = tuple(int(s) for s in _csv(args.seeds))
    if not seeds or any(s < 0 for s in seeds):
        raise SystemExit(f"--seeds: {args.seeds!r}, but must be integers >= 0")
    for name, value in (
        ("--epochs", args.epochs),
        ("--search-epochs", args.search_epochs),
        ("--max-trials", args.max_trials),
        ("--workers", args.workers),
    ):
        if value < 1:
            raise SystemExit(f"{name} is {value}, but must be >= 1")
    if args.search_epochs > args.epochs:
        raise SystemExit("--search-epochs must not exceed --epochs (the grid runs give Z)")
    if args.grid_points < 2 or not 0 < args.grid_min < args.grid_max:
        raise SystemExit("--grid-points must be >= 2 and 0 < --grid-min < --grid-max")
    grid = tuple(float(x) for x in np.geomspace(args.grid_min, args.grid_max, args.grid_points))
    return Config(
        tasks=tasks,
        optimizers=optimizers,
        seeds=seeds,
        epochs=args.epochs,
        search_epochs=args.search_epochs,
        grid=grid,
        image_noise=args.image_noise,
        max_trials=args.max_trials,
        workers=args.workers,
        relative_width=args.relative_width,
    )


def _jsonable(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _write(prefix: Path, payload: dict[str, Any], markdown: str | None) -> None:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    json_path = prefix.with_suffix(".json")
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_jsonable(payload), indent=1, allow_nan=False) + "\n")
    tmp.replace(json_path)
    if markdown is not None:
        prefix.with_suffix(".md").write_text(markdown)


def _report_from_json(args: argparse.Namespace) -> int:
    """Rewrite PREFIX.md (and the figure) from a finished run's JSON."""
    payload = json.loads(Path(args.from_json).read_text())
    stored = dict(payload["config"])
    for key in ("tasks", "optimizers", "seeds", "grid"):
        stored[key] = tuple(stored[key])
    config = Config(**stored)
    jobs = payload["jobs"]
    summary = summarize(jobs, config)
    payload["summary"] = summary
    markdown = format_markdown(
        jobs,
        summary,
        config,
        command=payload["command"],
        machine=payload["machine"],
        wall_seconds=float(payload.get("wall_seconds") or math.nan),
    )
    _write(Path(args.output_prefix), payload, markdown)
    print(markdown)
    if args.plot and plot_z_curves(jobs, config, Path(args.plot), args.plot_seed):
        print(f"Z(eta) curves: {args.plot}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.from_json:
        return _report_from_json(args)
    config = _config(args)
    command = "python -m benchmarks.bench_autohyper" + "".join(
        f" {a}" for a in (sys.argv[1:] if argv is None else argv)
    )
    machine = _machine()
    prefix = Path(args.output_prefix)
    jobs_spec = [(t, o, s) for s in config.seeds for t in config.tasks for o in config.optimizers]
    print(f"{len(jobs_spec)} jobs on {config.workers} workers; {machine}", flush=True)
    start = time.perf_counter()
    jobs: list[dict[str, Any]] = []
    payload: dict[str, Any] = {
        "command": command,
        "machine": machine,
        "config": dataclasses.asdict(config),
        "default_lrs": DEFAULT_LRS,
        "jobs": jobs,
    }
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=config.workers, mp_context=context
    ) as pool:
        futures = {pool.submit(run_job, t, o, s, config): (t, o, s) for t, o, s in jobs_spec}
        for future in concurrent.futures.as_completed(futures):
            job = future.result()
            jobs.append(job)
            ah = job["autohyper"]
            print(
                f"[{time.perf_counter() - start:6.0f}s] {len(jobs)}/{len(jobs_spec)} "
                f"{job['task']} {job['optimizer']} seed {job['seed']}: autoHyper "
                f"{_lr(ah['lr'])} ({ah['n_trials']} trials, {ah['reason']}), test "
                + ", ".join(
                    f"{m} {_pct(None if r is None else r['test_accuracy'])}"
                    for m, r in job["full"].items()
                )
                + f" ({job['seconds']:.0f}s)",
                flush=True,
            )
            _write(prefix, payload, None)  # partial results survive a crash
    wall = time.perf_counter() - start
    summary = summarize(jobs, config)
    payload["summary"] = summary
    payload["wall_seconds"] = wall
    markdown = format_markdown(
        jobs, summary, config, command=command, machine=machine, wall_seconds=wall
    )
    _write(prefix, payload, markdown)
    print(markdown)
    if args.plot:
        if plot_z_curves(jobs, config, Path(args.plot), args.plot_seed):
            print(f"Z(eta) curves: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
