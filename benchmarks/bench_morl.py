"""MORL against successive halving, Hyperband, random search and a hand-tuned baseline.

The MORL paper's Table 1 (with Figure 4, section 5.2 and Table 7) at the scale of a 2-core CPU.
Run from the repository root::

    python -m benchmarks.bench_morl --methods all --seeds 5 --jobs 2

Every method searches the paper's space (section 4: learning rate and weight decay log
``[1e-6, 10]``, 1 - momentum log ``[1e-6, 1]``, batch size ``[16, 256]``; SGD) for the small
CNN on two tasks (scikit-learn's digits; 2-5-5-1 teacher data as 8x8 images) with the same
budget of 64 full runs (``64 r`` epochs, ``r = 27``), chooses the configuration with the best
validation accuracy after a full run, and that configuration is then retrained from scratch
for ``r`` epochs with one cosine schedule (3 initial weights) and tested. The multi-fidelity
methods are synchronous (the paper's protocol, :class:`~optuna_ext.pruners.SynchronousMORL`):
MORL and SHA have the same rungs (3, 9, 27 epochs; ``eta = 3``, ``s_min = 1``), the same
configurations (same random sampler seed) and the same initial weights and data order, and
differ only in the schedule: recurring (MORL) or one cosine over the whole run (SHA, as with
Optuna's pruner). Results go to ``benchmarks/results/morl_results.{md,json}`` and the
best-so-far plot to ``benchmarks/results/morl_best_so_far.png``. Runs are cached (one JSON
per method, task and seed) so an interrupted benchmark goes on where it stopped.
"""

from __future__ import annotations

import argparse
from concurrent.futures import as_completed
from concurrent.futures import ProcessPoolExecutor
import json
import math
import multiprocessing
import os
from pathlib import Path
import platform
import sys
import time
from typing import Any

import numpy as np
from scipy import stats

from benchmarks._morl_methods import BASELINE_CONFIG
from benchmarks._morl_methods import hyperband_brackets
from benchmarks._morl_methods import METHODS
from benchmarks._morl_methods import run_baseline
from benchmarks._morl_methods import run_fidelity
from benchmarks._morl_methods import run_search
from benchmarks._morl_methods import set_threads
from benchmarks._morl_methods import Setting
from benchmarks._morl_methods import TASKS


_RESULTS_DIR = Path(__file__).resolve().parent / "results"
TABLE1 = ("baseline", "random", "sha", "hyperband", "morl")
EXTRAS = ("tpe", "morl_tpe", "morl_step", "morl_linear", "morl_cyclic", "morl_hyperband")
LABELS = {
    "baseline": "Baseline (hand-tuned, step LR)",
    "random": "Random (full training)",
    "sha": "SHA (one cosine over r)",
    "hyperband": "Hyperband (one cosine over r)",
    "morl": "MORL (cosine)",
    "tpe": "TPE (full training)",
    "morl_tpe": "MORL + TPE",
    "morl_step": "MORL (step)",
    "morl_linear": "MORL (linear)",
    "morl_cyclic": "MORL (cyclic)",
    "morl_hyperband": "MORL + Hyperband",
}

_COLORS = {m: f"C{i}" for i, m in enumerate(m for m in TABLE1 + EXTRAS if m != "baseline")}


def _run_job(job: tuple[str, str, int], setting: Setting, cache: str) -> dict[str, Any]:
    set_threads()
    method, task, seed = job
    if method == "baseline":
        result = run_baseline(task, seed, setting)
    elif method == "fidelity":
        result = run_fidelity(task, seed, setting)
    else:
        result = run_search(method, task, seed, setting)
    path = Path(cache) / f"{method}-{task}-{seed}.json"
    path.write_text(json.dumps(result))
    return result


def t_interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% Student-t interval."""
    a = np.asarray(values, dtype=float)
    if len(a) < 2:
        return float(a.mean()), math.nan
    half = stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a))
    return float(a.mean()), float(half)


def _fmt(values: list[float], scale: float = 100.0) -> str:
    mean, half = t_interval(values)
    return f"{scale * mean:.2f} ± {scale * half:.2f}"


def _by(results: list[dict[str, Any]], method: str, task: str) -> list[dict[str, Any]]:
    return sorted(
        (r for r in results if r["method"] == method and r["task"] == task),
        key=lambda r: r["seed"],
    )


def write_markdown(
    results: list[dict[str, Any]], setting: Setting, command: str, wall: dict[str, float]
) -> str:
    methods = [m for m in TABLE1 + EXTRAS if any(r["method"] == m for r in results)]
    tasks = [t for t in TASKS if any(r["task"] == t for r in results)]
    lines = [
        "# MORL benchmark: the paper's Table 1 at a 2-core CPU's scale",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; one torch thread per process. Other jobs shared the "
        "machine, so the wall times are noisy.",
        "",
        "## Setting",
        "",
        f"- Budget: {setting.budget_runs} r = {setting.budget} epochs per method, task and seed "
        f"(r = {setting.max_resource} epochs), as the paper's 64 r.",
        "- Space (paper section 4): lr and weight decay log [1e-6, 10], 1 - momentum log "
        "[1e-6, 1], batch size [16, 256]; SGD; the small CNN (2 conv layers with BN).",
        "- Tasks: `digits` (scikit-learn's 8x8 digits, 1079/359/359 train/valid/test) and "
        "`teacher` (2-5-5-1 teacher network, 2000 points embedded as 8x8 images, "
        "1200/400/400).",
        f"- SHA and MORL: synchronous successive halving (SynchronousMORL), eta = "
        f"{setting.reduction_factor}, s_min = {setting.min_exponent}: rungs "
        f"{setting.reduction_factor**setting.min_exponent}, ..., {setting.max_resource} with "
        f"{setting.n_configs} configurations per bracket, brackets repeated with fresh "
        "configurations while they fit the budget. SHA anneals one cosine over [0, r] (as "
        "Optuna's pruner would be used); MORL restarts the schedule at every rung end. With "
        "the same seed both see the same configurations, initial weights and data order.",
        "- Hyperband: synchronous brackets "
        + ", ".join(
            f"(n={n}, first rung {setting.max_resource // 3**s})"
            for n, s in hyperband_brackets(setting)
        )
        + ", one cosine over [0, r], cycled while the next bracket fits the budget.",
        "- Random / TPE: full training (one cosine over r) of 64 configurations.",
        f"- Baseline: the paper's hand-tuned configuration {BASELINE_CONFIG} "
        "(momentum 0.9) with the paper's step schedule (x0.1 at 81/164 and 122/164 of r), "
        "no search.",
        "- Reported: the configuration with the best validation accuracy after a full run is "
        f"retrained from scratch for r epochs with **one cosine schedule** ({setting.n_retrain} "
        "initial weights, mean), and its test accuracy (%) is given as mean ± half-width of the "
        "95% t-interval over the seeds (the baseline: its step schedule). 'As searched' is the "
        "test accuracy of the chosen model as trained during the search (for MORL, with the "
        "recurring schedule).",
        "",
    ]
    for title, group in (
        ("Table 1", TABLE1),
        ("TPE (paper 5.2) and schedule kinds (paper Table 7)", EXTRAS),
    ):
        present = [m for m in methods if m in group]
        if not present:
            continue
        if group is EXTRAS:
            present = ["morl", *present]
        lines += [f"## {title}", ""]
        header = (
            "| Method | "
            + " | ".join(
                f"{t}: test (retrained) | {t}: test (as searched) | {t}: valid" for t in tasks
            )
            + " | seeds |"
        )
        lines += [header, "|---" * (1 + 3 * len(tasks)) + "|---|"]
        for m in present:
            cells = []
            n_seeds = 0
            for t in tasks:
                runs = _by(results, m, t)
                n_seeds = max(n_seeds, len(runs))
                if not runs:
                    cells += ["", "", ""]
                    continue
                cells.append(_fmt([r["test_accuracy"] for r in runs]))
                if m == "baseline":
                    cells.append(
                        "(cosine: " + _fmt([r["cosine_test_accuracy"] for r in runs]) + ")"
                    )
                    cells.append("")
                else:
                    cells.append(_fmt([r["chosen_test_accuracy_as_searched"] for r in runs]))
                    cells.append(_fmt([r["chosen_valid_accuracy"] for r in runs]))
            lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + f" | {n_seeds} |")
        lines.append("")

    # Paired differences: same seed, same configurations for the random-sampler methods.
    lines += ["## Paired differences (same seed), test accuracy retrained, points", ""]
    lines += ["| Comparison | " + " | ".join(tasks) + " |", "|---" * (1 + len(tasks)) + "|"]
    for a, b in (
        ("morl", "sha"),
        ("morl", "hyperband"),
        ("morl", "random"),
        ("morl", "baseline"),
        ("morl_tpe", "tpe"),
        ("morl_tpe", "morl"),
    ):
        cells = []
        for t in tasks:
            ra = {r["seed"]: r["test_accuracy"] for r in _by(results, a, t)}
            rb = {r["seed"]: r["test_accuracy"] for r in _by(results, b, t)}
            seeds = sorted(set(ra) & set(rb))
            if len(seeds) < 2:
                cells.append("")
                continue
            diffs = [ra[s] - rb[s] for s in seeds]
            mean, half = t_interval(diffs)
            verdict = "beyond the interval" if abs(mean) > half else "within the interval"
            cells.append(_fmt(diffs) + f" (n={len(seeds)}, {verdict})")
        if any(cells):
            lines.append(f"| {LABELS[a]} − {LABELS[b]} | " + " | ".join(cells) + " |")
    lines.append("")

    lines += ["## Search statistics (mean over seeds)", ""]
    lines += [
        "| Method | task | epochs spent | trainings | full runs | search wall s |",
        "|---|---|---|---|---|---|",
    ]
    for m in methods:
        if m == "baseline":
            continue
        for t in tasks:
            runs = _by(results, m, t)
            if runs:
                lines.append(
                    f"| {LABELS[m]} | {t} | {np.mean([r['epochs_spent'] for r in runs]):.0f} | "
                    f"{np.mean([r['n_trainings'] for r in runs]):.0f} | "
                    f"{np.mean([r['n_full_runs'] for r in runs]):.0f} | "
                    f"{np.mean([r['search_seconds'] for r in runs]):.0f} |"
                )
    lines.append("")
    if wall:
        lines.append(
            "Wall time of the invocations that produced the cached runs: "
            + ", ".join(f"{k}: {v:.0f} s" for k, v in wall.items())
            + "."
        )
        lines.append("")
    return "\n".join(lines)


def fidelity_markdown(runs: list[dict[str, Any]]) -> str:
    """The low-fidelity ranking diagnostic: does an annealed rung end rank better?"""
    if not runs:
        return ""
    lines = [
        "## Low-fidelity ranking: what the recurring schedule is for",
        "",
        "27 random configurations per task and seed, each trained for r epochs twice: with one "
        "cosine over r (SHA's view at the rung ends) and with the recurring cosine (MORL's "
        "view). Each view's validation accuracy at a rung end is compared with the final "
        "validation accuracy of the one-cosine run (the quantity the search should rank by): "
        "Spearman correlation over all configurations and over the better half, the share of "
        "the true top third that the view's top third keeps, and how often the best "
        "configuration is kept (mean ± 95% t-interval over seeds).",
        "",
        "| task | rung end | view | Spearman (all) | Spearman (better half) | top third kept "
        "| best kept | seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task in TASKS:
        task_runs = [r for r in runs if r["task"] == task]
        if not task_runs:
            continue
        for end in task_runs[0]["rung_ends"][:-1]:
            for view in ("single", "recurring"):
                rows = [r[f"{view}@{end}"] for r in task_runs]
                name = "one cosine (SHA)" if view == "single" else "recurring (MORL)"
                lines.append(
                    f"| {task} | {end} | {name} | "
                    f"{_fmt([x['spearman_all'] for x in rows], 1.0)} | "
                    f"{_fmt([x['spearman_good'] for x in rows], 1.0)} | "
                    f"{_fmt([x['top_third_kept'] for x in rows], 1.0)} | "
                    f"{_fmt([x['best_kept'] for x in rows], 1.0)} | {len(rows)} |"
                )
    lines.append("")
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], setting: Setting, path: Path) -> None:
    """Best-so-far validation accuracy of a full run against epochs spent (paper Figure 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in TASKS if any(r["task"] == t for r in results)]
    groups = [("Table 1 methods", [m for m in TABLE1 if m != "baseline"])]
    if any(r["method"] in EXTRAS for r in results):
        groups.append(("TPE and schedule kinds", ["morl", *EXTRAS]))
    grid = np.arange(0, setting.budget + 1, 3)
    fig, axes = plt.subplots(
        len(groups), len(tasks), figsize=(6.5 * len(tasks), 4.5 * len(groups)), squeeze=False
    )
    for row, (title, group) in enumerate(groups):
        for ax, task in zip(axes[row], tasks, strict=True):
            tops: list[float] = []
            for method in group:
                runs = _by(results, method, task)
                if not runs:
                    continue
                curves = []
                for r in runs:
                    y = np.full(len(grid), np.nan)
                    for epochs, value in r["best_so_far"]:
                        y[grid >= epochs] = value
                    curves.append(y)
                stacked = np.array(curves)
                # Only where every seed has a full run.
                mask = ~np.isnan(stacked).any(axis=0)
                mean = stacked[:, mask].mean(axis=0)
                tops.append(100 * float(mean.max()))
                ax.plot(
                    grid[mask] / setting.max_resource,
                    100 * mean,
                    "-" if method in TABLE1 else "--",
                    color=_COLORS[method],
                    label=f"{LABELS[method]} (n={len(runs)})",
                )
            if tops:
                # The early curves of full training start near chance: show the last 3 points.
                ax.set_ylim(max(tops) - 3.0, max(tops) + 0.3)
            ax.set_title(f"{task}, {title}", fontsize=10)
            ax.set_xlabel(f"epochs spent (units of r = {setting.max_resource} epochs)")
            ax.set_ylabel("best valid. accuracy of a full run (%)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Best-so-far validation accuracy, mean over seeds (cf. MORL paper Figure 4)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["table1"],
        help="method names, 'table1', 'extras' or 'all'",
    )
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--max-resource", type=int, default=27)
    parser.add_argument("--n-configs", type=int, default=81)
    parser.add_argument("--budget-runs", type=int, default=64)
    parser.add_argument(
        "--fidelity-seeds",
        type=int,
        default=0,
        help="seeds of the low-fidelity ranking diagnostic (27 configurations, 2 schedules)",
    )
    parser.add_argument("--cache-dir", default=str(_RESULTS_DIR / "morl_runs"))
    parser.add_argument("--output-prefix", default=str(_RESULTS_DIR / "morl_results"))
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="write the report from the cached runs without running any",
    )
    args = parser.parse_args(argv)

    methods: list[str] = []
    for m in args.methods:
        methods += {
            "table1": list(TABLE1),
            "extras": list(EXTRAS),
            "all": list(TABLE1 + EXTRAS),
        }.get(m, [m])
    unknown = [m for m in methods if m != "baseline" and m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}")
    setting = Setting(
        max_resource=args.max_resource, n_configs=args.n_configs, budget_runs=args.budget_runs
    )
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    # Seed-major, so that an interrupted benchmark has whole seeds for every method.
    jobs = [(m, t, s) for s in range(args.seeds) for t in args.tasks for m in methods]
    jobs += [("fidelity", t, s) for s in range(args.fidelity_seeds) for t in args.tasks]
    todo = [j for j in jobs if not (cache / f"{j[0]}-{j[1]}-{j[2]}.json").exists()]
    print(f"{len(jobs)} runs, {len(todo)} to do, {args.jobs} processes", flush=True)
    start = time.perf_counter()
    if todo and not args.report_only:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
            futures = {pool.submit(_run_job, j, setting, str(cache)): j for j in todo}
            for n, future in enumerate(as_completed(futures), 1):
                result = future.result()
                print(
                    f"[{n}/{len(todo)}] {time.perf_counter() - start:6.0f}s "
                    f"{'-'.join(map(str, futures[future]))}: test "
                    f"{100 * result.get('test_accuracy', math.nan):.2f}",
                    flush=True,
                )
        wall_path = cache / "wall_seconds.json"
        wall = json.loads(wall_path.read_text()) if wall_path.exists() else {}
        wall[" ".join(sys.argv[1:]) or "(defaults)"] = time.perf_counter() - start
        wall_path.write_text(json.dumps(wall))

    results = [json.loads(p.read_text()) for p in sorted(cache.glob("*-*-*.json"))]
    results = [r for r in results if r["task"] in args.tasks]
    fidelity = [r for r in results if r["method"] == "fidelity"]
    results = [r for r in results if r["method"] != "fidelity"]
    wall_path = cache / "wall_seconds.json"
    wall = json.loads(wall_path.read_text()) if wall_path.exists() else {}
    given = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--report-only"]
    command = "python -m benchmarks.bench_morl " + " ".join(given)
    prefix = Path(args.output_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    markdown = write_markdown(results, setting, command.strip(), wall)
    markdown += "\n" + fidelity_markdown(fidelity)
    Path(f"{prefix}.md").write_text(markdown)
    Path(f"{prefix}.json").write_text(
        json.dumps(
            {
                "setting": setting.__dict__,
                "command": command.strip(),
                "runs": results,
                "fidelity": fidelity,
            },
            indent=1,
        )
    )
    plot(results, setting, prefix.parent / "morl_best_so_far.png")
    print(markdown)


if __name__ == "__main__":
    main()
