"""Tables and plots of the comparison, from the run summaries in the storage alone.

``python -m benchmarks report --storage URL`` writes ``comparison.md`` (per problem: test
accuracy with its 95 % t-interval over the seeds, epochs and wall time to the target, epochs
spent, trials, and paper 004's columns), ``comparison.json`` (the summaries and the table
rows), ``comparison_best_so_far.png`` (best validation accuracy against epochs spent) and
``comparison_lr.png`` (the rate per epoch of the online methods) to ``benchmarks/results/``.
The functions here also serve the comparison notebook.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Sequence
import dataclasses
import json
import math
from pathlib import Path
import statistics
from typing import Any
from typing import TYPE_CHECKING

import numpy as np

from benchmarks.methods import METHODS
from benchmarks.problems import PROBLEMS
from optuna_ext.cli._table import format_table


if TYPE_CHECKING:
    from matplotlib.figure import Figure


RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_NAME = "comparison"
PAPER_004_PROBLEMS = ("linear", "teacher_2_3_1", "teacher_2_5_5_1")


def t_interval(values: Sequence[float]) -> tuple[float, float]:
    """The mean and the half-width of its 95 % Student-t interval (NaN for one value)."""
    from scipy import stats

    a = np.asarray(values, dtype=float)
    if len(a) == 0:
        return math.nan, math.nan
    if len(a) < 2:
        return float(a.mean()), math.nan
    half = float(stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a)))
    return float(a.mean()), half


def _mean(values: Iterable[float | None]) -> float:
    kept = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return statistics.fmean(kept) if kept else math.nan


def _geomean(values: Iterable[float]) -> float:
    kept = [math.log(v) for v in values if v > 0]
    return math.exp(statistics.fmean(kept)) if kept else math.nan


def _order(method: str) -> int:
    names = list(METHODS)
    return names.index(method) if method in names else len(names)


def _problem_order(problem: str) -> int:
    names = list(PROBLEMS)
    return names.index(problem) if problem in names else len(names)


@dataclasses.dataclass(frozen=True)
class Row:
    """One method on one problem at one budget, over its seeds."""

    problem: str
    budget: str
    method: str
    seeds: list[int]
    test_mean: float
    test_half: float
    valid_mean: float
    train_mean: float
    epochs_to_target: float
    reached: int
    seconds_to_target: float
    epochs_spent: float
    final_epochs: float
    wall_seconds: float
    trials: float
    trials_to_convergence: float
    params_optimized: int
    lr: float
    online: bool

    @property
    def n(self) -> int:
        return len(self.seeds)


def groups(summaries: Sequence[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The summaries by (problem, budget), problems in registry order."""
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for s in sorted(summaries, key=lambda s: (_problem_order(s["problem"]), s["problem"])):
        out.setdefault((s["problem"], s["budget"]), []).append(s)
    return out


def rows(summaries: Sequence[dict[str, Any]]) -> list[Row]:
    """One :class:`Row` per (problem, budget, method)."""
    by: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for s in summaries:
        by.setdefault((s["problem"], s["budget"], s["method"]), []).append(s)
    out = []
    for (problem, budget, method), runs in by.items():
        runs.sort(key=lambda s: s["seed"])
        tests = [s["test_accuracy"] for s in runs if s["test_accuracy"] is not None]
        mean, half = t_interval(tests)
        reached = [s for s in runs if s["epochs_to_target"] is not None]
        out.append(
            Row(
                problem=problem,
                budget=budget,
                method=method,
                seeds=[int(s["seed"]) for s in runs],
                test_mean=mean,
                test_half=half,
                valid_mean=_mean(s["valid_accuracy"] for s in runs),
                train_mean=_mean(s["train_accuracy"] for s in runs),
                epochs_to_target=_mean(s["epochs_to_target"] for s in reached),
                reached=len(reached),
                seconds_to_target=_mean(s["seconds_to_target"] for s in reached),
                epochs_spent=_mean(s["epochs_spent"] for s in runs),
                final_epochs=_mean(s["final_epochs"] for s in runs),
                wall_seconds=_mean(s["wall_seconds"] for s in runs),
                trials=_mean(s["trials"] for s in runs),
                trials_to_convergence=_mean(s["trials_to_convergence"] for s in runs),
                params_optimized=int(runs[0]["params_optimized"]),
                lr=_geomean(float(s["config"].get("lr", math.nan)) for s in runs),
                online=bool(runs[0]["online"]),
            )
        )
    out.sort(key=lambda r: (_problem_order(r.problem), r.problem, r.budget, _order(r.method)))
    return out


def _pct(value: float, digits: int = 2) -> str:
    return "-" if not math.isfinite(value) else f"{100 * value:.{digits}f}"


def _num(value: float, fmt: str = ".3g") -> str:
    return "-" if not math.isfinite(value) else format(value, fmt)


def _label(method: str) -> str:
    return METHODS[method].label if method in METHODS else method


def problem_table(group_rows: Sequence[Row]) -> str:
    """The markdown table of one problem at one budget."""
    header = (
        "method",
        "test acc % (95% CI)",
        "train acc %",
        "epochs to target (reached)",
        "s to target",
        "epochs spent",
        "wall s",
        "trials",
        "trials to convergence",
        "params optimized",
        "lr",
    )
    body = []
    for r in group_rows:
        spent = _num(r.epochs_spent, ".4g")
        if r.final_epochs > 0:
            spent += f" + {r.final_epochs:.0f} final"
        body.append(
            (
                _label(r.method),
                _test_cell(r),
                _pct(r.train_mean),
                _target_cell(r),
                _num(r.seconds_to_target, ".3g"),
                spent,
                _num(r.wall_seconds, ".3g"),
                _num(r.trials, ".3g"),
                _num(r.trials_to_convergence, ".2g"),
                str(r.params_optimized),
                _num(r.lr, ".3g"),
            )
        )
    return format_table(header, body)


def _test_cell(r: Row) -> str:
    """The test accuracy % with the 95 % half-width over the seeds, e.g. ``97.96 ± 0.41``."""
    ci = "" if not math.isfinite(r.test_half) else f" ± {100 * r.test_half:.2f}"
    return f"{_pct(r.test_mean)}{ci}"


def _target_cell(r: Row) -> str:
    """The epochs to the target with how many seeds reached it, e.g. ``8 (3/3)``."""
    return f"{_num(r.epochs_to_target, '.4g')} ({r.reached}/{r.n})"


def paper_table(all_rows: Sequence[Row]) -> str:
    """Paper 004's results table (its Figure 4) over its three problems, one line per method."""
    by: dict[str, list[Row]] = {}
    for r in all_rows:
        if r.problem in PAPER_004_PROBLEMS:
            by.setdefault(r.method, []).append(r)
    body = []
    for method in sorted(by, key=_order):
        rs = by[method]
        body.append(
            (
                _label(method),
                _num(_mean(r.trials_to_convergence for r in rs), ".2g"),
                _pct(_mean(r.train_mean for r in rs)),
                _pct(_mean(r.test_mean for r in rs)),
                str(max(r.params_optimized for r in rs)),
                ", ".join(sorted({r.problem for r in rs}, key=_problem_order)),
            )
        )
    header = (
        "method",
        "trials to convergence",
        "training accuracy %",
        "test accuracy %",
        "parameters optimized",
        "problems",
    )
    return format_table(header, body)


def summary_tables(all_rows: Sequence[Row]) -> tuple[str, str]:
    """The headline tables, a row per method and a column per problem (and budget).

    The first gives the final test accuracy (mean ± the 95 % half-width over the seeds), the
    second the epochs spent until the run first reached the problem's target (mean over the
    runs that reached it, and how many of the seeds did).
    """
    columns = sorted(
        {(r.problem, r.budget) for r in all_rows}, key=lambda pb: (_problem_order(pb[0]), pb)
    )
    budgets = {budget for _, budget in columns}
    names = [p if len(budgets) == 1 else f"{p} ({b})" for p, b in columns]
    by = {(r.method, r.problem, r.budget): r for r in all_rows}
    methods = sorted({r.method for r in all_rows}, key=_order)
    accuracy, epochs = [], []
    for method in methods:
        cells_acc, cells_epochs = [_label(method)], [_label(method)]
        for problem, budget in columns:
            r = by.get((method, problem, budget))
            if r is None:
                cells_acc.append("")
                cells_epochs.append("")
                continue
            cells_acc.append(_test_cell(r))
            cells_epochs.append(_target_cell(r))
        accuracy.append(tuple(cells_acc))
        epochs.append(tuple(cells_epochs))
    header = ("method", *names)
    return format_table(header, accuracy), format_table(header, epochs)


def _budget_line(runs: Sequence[dict[str, Any]]) -> str:
    s = runs[0]
    return (
        f"budget `{s['budget']}`: {s['budget_epochs']} epochs per run "
        f"({s['budget_epochs'] // s['epochs_per_run']} full runs of {s['epochs_per_run']} "
        f"epochs), target validation accuracy {100 * s['target']:g} %"
    )


def markdown(summaries: Sequence[dict[str, Any]], *, command: str | None = None) -> str:
    """The whole report as markdown (the content of ``comparison.md``)."""
    if not summaries:
        return "# Comparison\n\nThe storage holds no finished benchmark run.\n"
    all_rows = rows(summaries)
    commands = sorted({s.get("command") or "?" for s in summaries})
    machines = sorted({s.get("machine") or "?" for s in summaries})
    n_seeds = sorted({len(r.seeds) for r in all_rows})
    lines = ["# Comparison of the methods on every problem", ""]
    if command:
        lines += [f"Report: `{command}`", ""]
    lines += ["Runs made by:", ""] + [f"- `{c}`" for c in commands] + [""]
    lines += ["Machine:", ""] + [f"- {m}" for m in machines] + [""]
    lines += [
        f"{len(summaries)} runs, {'/'.join(map(str, n_seeds))} seed(s) per method and problem. "
        "Every method has the same budget of training epochs per run (one pass over the "
        "training set is one epoch, whichever model, trial, candidate or member it trains) and "
        "the same seeds. *test acc*: the final model (the chosen configuration trained for "
        "one full run with one cosine, or the online method's own model), mean and half-width "
        "of the 95 % t-interval over the seeds. *epochs / s to target*: epochs spent and wall "
        "time until some model of the run first reached the target validation accuracy "
        "(mean over the runs that reached it). *epochs spent*: the search's epochs (+ the "
        "final training where the chosen configuration had not been trained fully with one "
        "cosine). *trials to convergence* (paper 004): training runs until the best validation "
        "accuracy came within 0.5 points of the run's final best (1 for an online method's "
        "single run). *lr*: the chosen (online: final) rate, geometric mean over the seeds. "
        "Wall times were measured with other jobs on the machine: compare epochs first.",
        "",
    ]
    accuracy, epochs = summary_tables(all_rows)
    targets = ", ".join(
        f"{problem} {100 * runs[0]['target']:g} %"
        for (problem, _), runs in groups(summaries).items()
    )
    lines += [
        "## Summary",
        "",
        "Final test accuracy % (mean ± half-width of the 95 % t-interval over the seeds):",
        "",
        accuracy,
        "",
        f"Epochs spent until the run first reached the target validation accuracy ({targets}); "
        "mean over the runs that reached it (how many of the seeds did):",
        "",
        epochs,
        "",
    ]
    for (problem, budget), runs in groups(summaries).items():
        description = PROBLEMS[problem].description if problem in PROBLEMS else problem
        lines += [f"## {problem}: {description}", "", _budget_line(runs), ""]
        lines.append(
            problem_table([r for r in all_rows if (r.problem, r.budget) == (problem, budget)])
        )
        lines.append("")
    if any(r.problem in PAPER_004_PROBLEMS for r in all_rows):
        lines += [
            "## Paper 004's table (its Figure 4), over its three problems",
            "",
            "Means over the problems and seeds (the paper reports one number per method).",
            "",
            paper_table(all_rows),
            "",
        ]
    notes = sorted(
        {(s["problem"], s["method"], s["notes"]) for s in summaries if s.get("notes")},
        key=lambda x: (_problem_order(x[0]), _order(x[1])),
    )
    if notes:
        lines += ["## Notes (seed by seed, first seen)", ""]
        seen: set[tuple[str, str]] = set()
        for problem, method, note in notes:
            if (problem, method) in seen:
                continue
            seen.add((problem, method))
            lines.append(f"- {problem}, {_label(method)}: {note}")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Plots.


def _styles() -> dict[str, tuple[Any, str]]:
    """A colour and line style per registered method (the same in every plot)."""
    import matplotlib

    # Sixteen dark, distinct colours: tab10's, then Dark2's.
    tab10, dark2 = matplotlib.colormaps["tab10"], matplotlib.colormaps["Dark2"]
    colors = [tab10(i) for i in range(10)] + [dark2(i) for i in range(8)]
    return {
        m.name: (colors[i % len(colors)], "--" if m.online else "-")
        for i, m in enumerate(METHODS.values())
    }


def _style(method: str) -> tuple[Any, str]:
    return _styles().get(method, ("0.3", ":"))


def _grid_figure(n: int) -> tuple[Figure, list[Any]]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    cols = min(n, 3)
    rows_ = math.ceil(n / cols)
    fig = Figure(figsize=(max(5.2 * cols, 10.0), 3.8 * rows_ + 1.0), dpi=90, layout="constrained")
    axes = fig.subplots(rows_, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _step_mean(curves: Sequence[Sequence[Sequence[float]]], grid: np.ndarray) -> np.ndarray:
    """The mean over runs of step curves ``[[x, y], ...]`` on ``grid``: NaN before a run's
    first point and after its last (where a run has spent all it spent), so the mean is drawn
    only where every run has a value."""
    stacked = np.full((len(curves), len(grid)), np.nan)
    for i, curve in enumerate(curves):
        for x, y in curve:
            stacked[i, grid >= x - 1e-9] = y
        stacked[i, grid > curve[-1][0] + 1e-9] = np.nan
    return stacked.mean(axis=0)


def plot_best_so_far(summaries: Sequence[dict[str, Any]]) -> Figure:
    """Best validation accuracy so far against epochs spent (in full runs), mean over seeds,
    one panel per problem."""
    grouped = groups(summaries)
    fig, axes = _grid_figure(max(len(grouped), 1))
    handles: dict[str, Any] = {}
    for ax, ((problem, budget), runs) in zip(axes, grouped.items(), strict=False):
        total, per_run = runs[0]["budget_epochs"], runs[0]["epochs_per_run"]
        xs = [x for s in runs for x, _ in s["curve"]]
        grid = np.unique(np.concatenate([np.linspace(0, total, 400), np.asarray(xs, float)]))
        finals = []
        for method in sorted({s["method"] for s in runs}, key=_order):
            curves = [s["curve"] for s in runs if s["method"] == method and s["curve"]]
            if not curves:
                continue
            mean = _step_mean(curves, grid)
            if np.isnan(mean).all():
                continue
            color, style = _style(method)
            (line,) = ax.plot(grid / per_run, 100 * mean, style, color=color, lw=1.4)
            handles.setdefault(_label(method), line)
            finals.append(100 * float(np.nanmax(mean)))
        if finals:
            top = max(finals)
            ax.set_ylim(max(0.0, top - 6.0), min(100.0, top) + 0.6)
        ax.axhline(100 * runs[0]["target"], color="0.6", lw=0.8, ls=":")
        ax.set_title(f"{problem} ({budget})", fontsize=10)
        ax.set_xlabel(f"epochs spent (full runs of {per_run} epochs)")
        ax.set_ylabel("best valid. accuracy so far (%)")
        ax.grid(alpha=0.3)
    if handles:
        fig.legend(
            list(handles.values()),
            list(handles),
            loc="outside lower center",
            ncol=min(5, len(handles)),
            fontsize=8,
        )
    fig.suptitle("Best validation accuracy so far against epochs spent (mean over seeds)")
    return fig


def plot_lr(summaries: Sequence[dict[str, Any]]) -> Figure | None:
    """The learning rate of each epoch of the online methods' models (one line per seed), one
    panel per problem; :obj:`None` when no online method ran."""
    online = [s for s in summaries if s.get("lr_per_epoch")]
    if not online:
        return None
    grouped = groups(online)
    fig, axes = _grid_figure(len(grouped))
    handles: dict[str, Any] = {}
    for ax, ((problem, budget), runs) in zip(axes, grouped.items(), strict=True):
        for s in sorted(runs, key=lambda s: (_order(s["method"]), s["seed"])):
            lrs = s["lr_per_epoch"]
            color, _ = _style(s["method"])
            (line,) = ax.plot(range(1, len(lrs) + 1), lrs, "-", color=color, lw=1.0, alpha=0.8)
            handles.setdefault(_label(s["method"]), line)
        ax.set_yscale("log")
        ax.set_title(f"{problem} ({budget})", fontsize=10)
        ax.set_xlabel("epoch of the model (PBT: of its best member's lineage)")
        ax.set_ylabel("learning rate")
        ax.grid(alpha=0.3, which="both")
    fig.legend(
        list(handles.values()), list(handles), loc="outside lower center", ncol=4, fontsize=8
    )
    fig.suptitle("Learning rate per epoch of the online methods (one line per seed)")
    return fig


# --------------------------------------------------------------------------------------------
# Files.


def write(
    summaries: Sequence[dict[str, Any]],
    out_dir: str | Path = RESULTS_DIR,
    *,
    name: str = DEFAULT_NAME,
    command: str | None = None,
) -> list[Path]:
    """Write ``{name}.md``, ``{name}.json`` and the PNG plots to ``out_dir``; return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.md", out / f"{name}.json"]
    paths[0].write_text(markdown(summaries, command=command))
    ordered = sorted(
        summaries,
        key=lambda s: (_problem_order(s["problem"]), s["budget"], _order(s["method"]), s["seed"]),
    )
    payload = {
        "command": command,
        "rows": [dataclasses.asdict(r) for r in rows(summaries)],
        "runs": ordered,
    }
    paths[1].write_text(json.dumps(_finite(payload), indent=1, allow_nan=False) + "\n")
    figures = {"best_so_far": plot_best_so_far(summaries), "lr": plot_lr(summaries)}
    for suffix, figure in figures.items():
        if figure is None:
            continue
        path = out / f"{name}_{suffix}.png"
        figure.savefig(path)
        paths.append(path)
    return paths


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by ``None`` (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
