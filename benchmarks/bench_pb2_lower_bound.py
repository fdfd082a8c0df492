"""Why PB2's best member ends at the lower bound of the rate at the ``small`` budget.

Run from the repository root::

    python -m benchmarks.bench_pb2_lower_bound [--seeds 6] [--problems teacher_2_3_1 linear]

Three measurements (one torch thread), printed and written, with the command, to
``benchmarks/results/pb2_lower_bound.md`` (raw numbers in ``.json`` next to it):

1. **Synthetic.** :class:`~optuna_ext.samplers.PBTSampler` with and without ``pb2=True`` under
   ``study.optimize``, the harness's ``small`` budget (4 members, 9 generations) and its space
   (``lr`` in ``[1e-3, 1]`` on the log scale, ``momentum``, ``weight_decay``, the last two
   without effect). A segment's score is the score it started from plus a gain
   ``amp * exp(-log10(lr / 0.05)^2 / (2 * 0.5^2))`` plus Gaussian noise: the best rate is 0.05,
   in the middle of the range. Reported: the share of GP-UCB proposals at a bound of ``lr``,
   and the final best member's rate.
2. **One segment's gain against the rate** on each real problem: from a checkpoint of 3
   epochs (lr 0.05, momentum 0.9, weight decay 1e-4), one epoch with each rate (momentum
   0.9), the change of the validation accuracy, over 4 data orders.
3. **PB2 on each real problem** as the harness runs it (``small`` budget,
   :func:`optuna_ext.pbt.training_segment`, 1 epoch a generation), each GP-UCB proposal split
   into the GP's mean and ``kappa * variance`` at the proposal, the largest mean over 2,000
   random points, and how much the score of a segment trained at the lowest rate moved
   against the others.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from pathlib import Path
import sys
from typing import Any

import numpy as np
import optuna
import torch

from benchmarks.problems import PROBLEMS


_RESULTS_DIR = Path(__file__).resolve().parent / "results"
_BEST_LR = 0.05
_LOW, _HIGH = 1e-3, 1.0


def _unit(lr: float) -> float:
    return math.log(lr / _LOW) / math.log(_HIGH / _LOW)


def _synthetic(pb2: bool, seed: int, amp: float, noise: float) -> dict[str, Any]:
    from optuna_ext.samplers import PBTSampler

    rng = np.random.default_rng(seed)
    study = optuna.create_study(
        sampler=PBTSampler(population_size=4, pb2=pb2, seed=seed), direction="maximize"
    )

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", _LOW, _HIGH, log=True)
        trial.suggest_float("momentum", 0.0, 0.99)
        trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
        parent = trial.user_attrs.get("pbt:parent")
        before = float(study.trials[parent].value) if parent is not None else 0.0
        gain = amp * math.exp(-(math.log10(lr / _BEST_LR) ** 2) / (2 * 0.5**2))
        return before + gain + noise * float(rng.standard_normal())

    study.optimize(objective, n_trials=4 * 9)
    exploits = [t.params["lr"] for t in study.trials if t.user_attrs["pbt:action"] == "exploit"]
    last = [t for t in study.trials if t.user_attrs["pbt:generation"] == 8]
    best = max(last, key=lambda t: float(t.value or -math.inf))
    return {
        "pb2": pb2,
        "seed": seed,
        "amp": amp,
        "noise": noise,
        "explored_lrs": exploits,
        "final_best_lr": float(best.params["lr"]),
    }


def _gain_against_lr(name: str) -> dict[str, Any]:
    from optuna_ext.tasks import evaluate
    from optuna_ext.tasks import make_loader
    from optuna_ext.tasks import make_optimizer
    from optuna_ext.tasks import train_epoch

    problem = PROBLEMS[name]
    net = problem.build_model(0)
    opt = make_optimizer("sgd", net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    for epoch in range(3):
        loader = make_loader(
            problem.data.train, batch_size=problem.batch_size, shuffle=True, seed=100 + epoch
        )
        train_epoch(net, loader, opt)
    base = evaluate(net, problem.data.valid).accuracy
    state = copy.deepcopy(net.state_dict())
    gains: dict[str, list[float]] = {}
    for lr in (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0):
        for s in range(4):
            net.load_state_dict(state)
            opt = make_optimizer("sgd", net.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
            loader = make_loader(
                problem.data.train, batch_size=problem.batch_size, shuffle=True, seed=s
            )
            train_epoch(net, loader, opt)
            gains.setdefault(str(lr), []).append(evaluate(net, problem.data.valid).accuracy - base)
    return {"problem": name, "checkpoint_valid": base, "gains": gains}


def _pb2_real(name: str, seed: int) -> dict[str, Any]:
    from optuna_ext.hyperdyn import MemoryArtifactStore
    import optuna_ext.pbt
    from optuna_ext.samplers import PBTSampler
    from optuna_ext.samplers._pbt import _pb2

    proposals: list[dict[str, Any]] = []
    original_gp, original_propose = _pb2._GP, _pb2.propose
    fitted: list[Any] = []

    class RecordingGP(original_gp):  # type: ignore[misc, valid-type]
        def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
            super().__init__(x, y)
            fitted.append(self)

    def recording_propose(
        rows_x: Any, rows_y: Any, fixed: Any, rng: Any, *, pending: Any = ()
    ) -> np.ndarray:
        h = original_propose(rows_x, rows_y, fixed, rng, pending=pending)
        gp = fitted[-1]
        x = np.asarray(rows_x, dtype=float)[-_pb2.MAX_ROWS :]
        columns = [x[:, :2], np.asarray(fixed, dtype=float).reshape(1, 2)]
        if len(pending):
            columns.append(np.asarray(pending, dtype=float)[:, :2])
        both = np.vstack(columns)
        low, high = both.min(axis=0), both.max(axis=0)
        fixed_n = (np.asarray(fixed, dtype=float) - low) / np.where(high > low, high - low, 1.0)
        kappa = math.sqrt(0.2 + max(0.0, math.log(0.4 * len(x))))
        variance = gp.variance_function(None)
        grid = np.random.RandomState(0).uniform(size=(2000, len(h)))
        q = np.hstack([np.broadcast_to(fixed_n, (len(grid), 2)), grid])
        means = gp.mean(q)
        at = np.hstack([fixed_n, h]).reshape(1, -1)
        proposals.append(
            {
                "rows": len(x),
                "h": [round(float(v), 3) for v in h],
                "mean": float(gp.mean(at)[0]),
                "kappa_variance": float(kappa * variance(at)[0]),
                "best_mean": float(means.max()),
                "best_mean_h": [round(float(v), 3) for v in grid[int(means.argmax())]],
                "lengthscale": gp.lengthscale,
                "noise": gp.noise,
            }
        )
        return h

    problem = PROBLEMS[name]
    budget = problem.budget("small")
    space = problem.space
    setattr(_pb2, "_GP", RecordingGP)  # noqa: B010 (a recording stand-in)
    setattr(_pb2, "propose", recording_propose)  # noqa: B010
    try:
        study = optuna.create_study(
            sampler=PBTSampler(population_size=budget.population, pb2=True, seed=seed),
            direction="maximize",
        )
        segment = optuna_ext.pbt.training_segment(
            problem.data,
            model=problem.model,
            epochs_per_generation=budget.pbt_interval,
            seed=seed,
            batch_size=problem.batch_size,
            lr=(space["lr"].low, space["lr"].high),
            momentum=(space["momentum"].low, space["momentum"].high),
            weight_decay=(space["weight_decay"].low, space["weight_decay"].high),
        )
        result = optuna_ext.pbt.run(
            study,
            segment,
            n_generations=budget.generations,
            artifact_store=MemoryArtifactStore(),
            save_plots=False,
        )
    finally:
        setattr(_pb2, "_GP", original_gp)  # noqa: B010
        setattr(_pb2, "propose", original_propose)  # noqa: B010
    moves: dict[str, list[float]] = {"lowest_rate": [], "others": []}
    for trial in study.trials:
        parent = trial.user_attrs.get("pbt:parent")
        if parent is None or trial.value is None:
            continue
        change = abs(float(trial.value) - float(study.trials[parent].value or 0.0))
        key = "lowest_rate" if trial.params["lr"] < 1.01 * space["lr"].low else "others"
        moves[key].append(change)
    best = result.best_trial
    assert best is not None
    return {
        "problem": name,
        "seed": seed,
        "proposals": proposals,
        "score_moves": moves,
        "best_params": dict(best.params),
        "best_value": best.value,
    }


def _markdown(raw: dict[str, Any]) -> str:
    lines = [
        "# PB2's rate at the lower bound: measurements",
        "",
        f"Command: `{raw['command']}` (one torch thread).",
        "",
        "## 1. Synthetic: the best rate is 0.05 (unit 0.57), 4 members x 9 generations",
        "",
        "| explore | amp | noise | explored rates at a bound | median abs(unit - 0.57) of the"
        " explored rates | final best rate per seed | at 1e-3 |",
        "|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[bool, float, float], list[dict[str, Any]]] = {}
    for run in raw["synthetic"]:
        groups.setdefault((run["pb2"], run["amp"], run["noise"]), []).append(run)
    for (pb2, amp, noise), runs in groups.items():
        explored = [lr for r in runs for lr in r["explored_lrs"]]
        bounds = sum(1 for lr in explored if _unit(lr) < 0.01 or _unit(lr) > 0.99)
        distance = float(np.median([abs(_unit(lr) - _unit(_BEST_LR)) for lr in explored]))
        finals = [r["final_best_lr"] for r in runs]
        low = sum(1 for lr in finals if lr < 1.01 * _LOW)
        lines.append(
            f"| {'PB2 (GP-UCB)' if pb2 else 'PBT (x0.8/x1.2, resample)'} | {amp} | {noise} |"
            f" {bounds}/{len(explored)} | {distance:.2f} |"
            f" {' '.join(f'{lr:.3g}' for lr in finals)} | {low}/{len(finals)} |"
        )
    lines += [
        "",
        "## 2. One segment's gain of validation accuracy against the rate (mean +- std, 4 orders)",
        "",
    ]
    for entry in raw["gains"]:
        lines.append(
            f"- {entry['problem']} (checkpoint {entry['checkpoint_valid']:.4f}): "
            + ", ".join(
                f"{lr}: {np.mean(v):+.4f} +- {np.std(v):.4f}" for lr, v in entry["gains"].items()
            )
        )
    lines += ["", "## 3. PB2 on the real problems (small budget): each GP-UCB proposal", ""]
    for entry in raw["real"]:
        moves = entry["score_moves"]
        low = moves["lowest_rate"]
        lines += [
            f"### {entry['problem']}, seed {entry['seed']}",
            "",
            f"Best member: {entry['best_params']} (valid {entry['best_value']:.4f}). Mean"
            f" abs change of a segment's score: at the lowest rate"
            f" {np.mean(low) if low else float('nan'):.4f} ({len(low)} segments), other"
            f" segments {np.mean(moves['others']):.4f} ({len(moves['others'])}).",
            "",
            "| rows | proposal (lr, momentum, wd in [0,1]) | mean | kappa*var | largest mean"
            " (at) | lengthscale | noise |",
            "|---|---|---|---|---|---|---|",
        ]
        for p in entry["proposals"]:
            lines.append(
                f"| {p['rows']} | {p['h']} | {p['mean']:+.2f} | {p['kappa_variance']:.2f} |"
                f" {p['best_mean']:+.2f} ({p['best_mean_h']}) | {p['lengthscale']} |"
                f" {p['noise']} |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--problems", nargs="+", default=["teacher_2_3_1", "linear", "digits_cnn"])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    command = "python -m benchmarks.bench_pb2_lower_bound " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    raw: dict[str, Any] = {"command": command.strip(), "synthetic": [], "gains": [], "real": []}
    for amp, noise in ((1.0, 0.05), (1.0, 0.5)):
        for pb2 in (False, True):
            for seed in range(args.seeds):
                raw["synthetic"].append(_synthetic(pb2, seed, amp, noise))
        print(f"synthetic amp={amp} noise={noise} done", flush=True)
    for name in args.problems:
        raw["gains"].append(_gain_against_lr(name))
        raw["real"].append(_pb2_real(name, 0))
        print(f"{name} done", flush=True)
    table = _markdown(raw)
    print(table)
    _RESULTS_DIR.mkdir(exist_ok=True)
    (_RESULTS_DIR / "pb2_lower_bound.md").write_text(table)
    (_RESULTS_DIR / "pb2_lower_bound.json").write_text(json.dumps(raw, indent=1) + "\n")


if __name__ == "__main__":
    main()
