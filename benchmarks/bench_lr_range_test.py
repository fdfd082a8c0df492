"""The range test's suggestions on the comparison's problems, and how well each trains.

Run from the repository root::

    python -m benchmarks.bench_lr_range_test [--problems linear teacher_2_3_1] [--seeds 3]
        [--epochs 6] [--no-train]

For each problem and seed it runs :func:`optuna_ext.optim.lr_range_test` as the comparison's
``lr_range_test`` method does (SGD, 200 steps from 1e-5 to 10, the baseline's momentum and
weight decay, the problem's batch size), prints the ``"steepest"`` and ``"min_div_10"``
suggestions and what produced the steepest one (:attr:`LRRangeTestResult.suggested_by`), then
trains a fresh model for ``--epochs`` epochs with one cosine from each suggestion (the
method's final training; 6 is the ``small`` budget's ``E``) and reports the final validation
and test accuracy. The table is printed and written, with the command, to
``benchmarks/results/lr_range_test_rules.md``; the raw numbers go to ``.json`` next to it.
One torch thread.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import sys
from typing import Any

import numpy as np
import torch

from benchmarks.problems import PROBLEMS


_RESULTS_DIR = Path(__file__).resolve().parent / "results"
_DEFAULT_PROBLEMS = ("linear", "teacher_2_3_1", "teacher_2_5_5_1", "digits_cnn")
_RULES = ("steepest", "min_div_10")


def _run(name: str, seed: int, epochs: int, train: bool) -> dict[str, Any]:
    from optuna_ext.optim import lr_range_test
    from optuna_ext.schedules import RecurringLR
    from optuna_ext.tasks import fit

    problem = PROBLEMS[name]
    baseline = problem.baseline
    result = lr_range_test(
        problem.build_model(seed),
        problem.data,
        optimizer="sgd",
        min_lr=1e-5,
        max_lr=10.0,
        num_steps=200,
        rule="steepest",
        batch_size=problem.batch_size,
        momentum=baseline["momentum"],
        weight_decay=baseline["weight_decay"],
        seed=seed,
    )
    row: dict[str, Any] = {
        "problem": name,
        "seed": seed,
        "steps": len(result.lrs),
        "diverged": result.diverged,
        "suggested_by": result.suggested_by,
    }
    for rule in _RULES:
        lr = result.suggest(rule)
        row[f"{rule}_lr"] = lr
        if not train:
            continue
        trained = fit(
            problem.build_model(seed),
            problem.data,
            optimizer="sgd",
            lr=lr,
            momentum=baseline["momentum"],
            weight_decay=baseline["weight_decay"],
            batch_size=problem.batch_size,
            epochs=epochs,
            schedule=lambda opt, steps: RecurringLR(
                opt, boundaries=[epochs], steps_per_epoch=steps
            ),
            seed=seed,
        )
        row[f"{rule}_valid"] = trained.valid_accuracy[-1] if trained.valid_accuracy else 0.0
        row[f"{rule}_test"] = trained.test_accuracy
    return row


def _markdown(rows: list[dict[str, Any]], command: str, train: bool) -> str:
    lines = [
        "# LR range test: the steepest rule against min/10",
        "",
        f"Command: `{command}` (one torch thread).",
        "",
        "| problem | seed | steps | steepest by | steepest lr | min/10 lr"
        + (" | steepest valid / test | min/10 valid / test |" if train else " |"),
        "|---|---|---|---|---|---" + ("|---|---|" if train else "|"),
    ]
    for r in rows:
        steps = f"{r['steps']}{' (diverged)' if r['diverged'] else ''}"
        line = (
            f"| {r['problem']} | {r['seed']} | {steps}"
            f" | {r['suggested_by']} | {r['steepest_lr']:.3g} | {r['min_div_10_lr']:.3g} |"
        )
        if train:
            line += (
                f" {r['steepest_valid']:.4f} / {r['steepest_test']:.4f} |"
                f" {r['min_div_10_valid']:.4f} / {r['min_div_10_test']:.4f} |"
            )
        lines.append(line)
    if train:
        lines += ["", "Mean over seeds (validation / test accuracy):", ""]
        for name in dict.fromkeys(r["problem"] for r in rows):
            mine = [r for r in rows if r["problem"] == name]
            parts = []
            for rule in _RULES:
                valid = float(np.mean([r[f"{rule}_valid"] for r in mine]))
                test = float(np.mean([r[f"{rule}_test"] for r in mine]))
                parts.append(f"{rule} {valid:.4f} / {test:.4f}")
            lines.append(f"- {name}: " + "; ".join(parts))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--problems", nargs="+", default=list(_DEFAULT_PROBLEMS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--no-train", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    train = not args.no_train
    rows = []
    for name in args.problems:
        for seed in range(args.seeds):
            row = _run(name, seed, args.epochs, train)
            print(json.dumps(row), flush=True)
            rows.append(row)
    command = "python -m benchmarks.bench_lr_range_test " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    table = _markdown(rows, command.strip(), train)
    print(table)
    _RESULTS_DIR.mkdir(exist_ok=True)
    (_RESULTS_DIR / "lr_range_test_rules.md").write_text(table)
    raw = {"command": command.strip(), "rows": rows}
    (_RESULTS_DIR / "lr_range_test_rules.json").write_text(json.dumps(raw, indent=1) + "\n")


if __name__ == "__main__":
    main()
