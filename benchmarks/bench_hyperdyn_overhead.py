"""Time of one Hyperdyn proposal against Optuna's ``GPSampler`` on the same observations.

Run from the repository root::

    python -m benchmarks.bench_hyperdyn_overhead

For ``n`` = 50, 200 and 500 finished trials, it builds an in-memory study holding Hyperdyn-like
observations (a learning rate on a log scale, a momentum, the epoch as a fixed parameter, two
candidates per epoch after five random starts, and a noisy accuracy change as the value) and
times the sampling of one new trial's parameters (the GP fit plus the acquisition search) by:

- ``HyperdynSampler`` (defaults: GP over (lr, momentum, epoch) with the time kernel, one fit
  start, 1024 Sobol candidates and 4 L-BFGS-B polishes, expected improvement at the next
  epoch), "cold" (no earlier proposal in the study) and "warm" (the last observation carries
  the kernel fitted by a proposal on the first ``n - 1`` observations, which starts the fit,
  as in a running Hyperdyn study);
- ``GPSampler`` "cold": a new sampler object (no kernel cache), as in a new process. Its search
  space is (lr, momentum): the epoch's distribution differs between trials, so Optuna's
  intersection search space drops it;
- ``GPSampler`` "warm": the same sampler after it proposed once on ``n - 1`` observations (its
  in-memory kernel cache starts the fit), its usual state inside one long-running process;
- ``GPSampler 3-D``: cold, on the same trials with the epoch stored as an ordinary
  ``FloatDistribution(0, epochs)``, so that it models the same three inputs as Hyperdyn.

Each time is the median of ``--repeats`` runs, the methods interleaved. All samplers run in
the same process with
torch's default thread count; both samplers limit torch to one thread during the GP work
themselves, and ``HyperdynSampler`` also limits the BLAS threads of SciPy's L-BFGS-B through
``threadpoolctl`` (``GPSampler`` sets ``OPENBLAS_NUM_THREADS``, which does not reach an OpenBLAS
that is already loaded). The rows ``GPSampler ..., BLAS limited`` time ``GPSampler`` inside
``threadpoolctl.threadpool_limits(1)`` to separate that effect from the algorithms. The table
is printed and written, with the command, to ``benchmarks/results/hyperdyn_overhead.md``; the
raw numbers go to ``benchmarks/results/hyperdyn_overhead.json``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
import contextlib
import json
import math
import os
from pathlib import Path
import platform
import statistics
import sys
import time
from typing import Any

import numpy as np
import optuna
from optuna.distributions import FloatDistribution
import threadpoolctl
import torch

from optuna_ext.samplers._hyperdyn import HyperdynSampler
from optuna_ext.samplers._hyperdyn.sampler import PROPOSAL_KEY


_RESULTS_DIR = Path(__file__).resolve().parent / "results"
LR = FloatDistribution(1e-4, 1.0, log=True)
MOMENTUM = FloatDistribution(0.0, 0.95)


def _observations(n: int, seed: int = 0) -> list[tuple[float, float, float, float]]:
    """``n`` (lr, momentum, epoch, acc_diff) rows: 5 random starts, then 2 per epoch."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        epoch = 0 if i < 5 else 1 + (i - 5) // 2
        lr = float(10 ** rng.uniform(-4, 0))
        momentum = float(rng.uniform(0.0, 0.95))
        # Accuracy gains shrink with the epoch; best near lr = 0.03, momentum = 0.6.
        gain = 30.0 / (1 + epoch) - 4 * (math.log10(lr) + 1.5) ** 2 - 5 * (momentum - 0.6) ** 2
        rows.append((lr, momentum, float(epoch), gain + float(rng.normal(0.0, 1.0))))
    return rows


def _study(
    rows: list[tuple[float, float, float, float]],
    sampler: optuna.samplers.BaseSampler,
    epoch_as_param: bool,
    last_system_attrs: dict[str, Any] | None = None,
) -> optuna.Study:
    study = optuna.create_study(direction="maximize", sampler=sampler)
    max_epoch = max(r[2] for r in rows) + 1
    trials = []
    for i, (lr, momentum, epoch, value) in enumerate(rows):
        epoch_distribution = (
            FloatDistribution(0.0, max_epoch)
            if epoch_as_param
            else FloatDistribution(epoch, epoch)
        )
        trials.append(
            optuna.trial.create_trial(
                params={"epoch": epoch, "lr": lr, "momentum": momentum},
                distributions={"epoch": epoch_distribution, "lr": LR, "momentum": MOMENTUM},
                value=value,
                system_attrs=last_system_attrs if i == len(rows) - 1 else None,
            )
        )
    study.add_trials(trials)
    return study


def _time_proposal(
    study: optuna.Study, next_epoch: float, epoch_as_param: bool
) -> tuple[float, dict[str, Any]]:
    trial = study.ask()
    if not epoch_as_param:
        trial.suggest_float("epoch", next_epoch, next_epoch)
    start = time.perf_counter()
    trial.suggest_float("lr", LR.low, LR.high, log=True)  # triggers the relative sampling
    trial.suggest_float("momentum", MOMENTUM.low, MOMENTUM.high)
    if epoch_as_param:
        trial.suggest_float("epoch", 0.0, next_epoch)
    elapsed = time.perf_counter() - start
    frozen = study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return elapsed, frozen.system_attrs


def _measure_once(
    n: int,
    make_sampler: Callable[[], optuna.samplers.BaseSampler],
    *,
    epoch_as_param: bool = False,
    warm: bool = False,
    blas_limited: bool = False,
) -> float:
    rows = _observations(n)
    next_epoch = max(r[2] for r in rows) + 1
    limit = threadpoolctl.threadpool_limits(limits=1) if blas_limited else contextlib.nullcontext()
    with limit:
        sampler = make_sampler()
        last_attrs = None
        if warm:
            # One proposal on the first n - 1 observations: GPSampler keeps its fitted kernel
            # in memory, HyperdynSampler in the proposal trial's system attrs, which here go
            # onto the last observation (as when that proposal is evaluated and told).
            _, attrs = _time_proposal(
                _study(rows[:-1], sampler, epoch_as_param), next_epoch, False
            )
            last_attrs = {k: v for k, v in attrs.items() if k == PROPOSAL_KEY}
        study = _study(rows, sampler, epoch_as_param, last_attrs)
        elapsed, _ = _time_proposal(study, next_epoch, epoch_as_param)
    return elapsed


METHODS: dict[str, dict[str, Any]] = {
    "HyperdynSampler cold": {"make": lambda: HyperdynSampler(seed=0)},
    "HyperdynSampler warm": {"make": lambda: HyperdynSampler(seed=0), "warm": True},
    "GPSampler cold": {"make": lambda: optuna.samplers.GPSampler(seed=0)},
    "GPSampler warm": {"make": lambda: optuna.samplers.GPSampler(seed=0), "warm": True},
    "GPSampler 3-D cold": {
        "make": lambda: optuna.samplers.GPSampler(seed=0),
        "epoch_as_param": True,
    },
    "GPSampler cold, BLAS limited": {
        "make": lambda: optuna.samplers.GPSampler(seed=0),
        "blas_limited": True,
    },
    "GPSampler warm, BLAS limited": {
        "make": lambda: optuna.samplers.GPSampler(seed=0),
        "warm": True,
        "blas_limited": True,
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 500])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)

    results: dict[str, dict[str, list[float]]] = {
        name: {str(n): [] for n in args.sizes} for name in METHODS
    }
    # Interleave the methods so that a change in the machine's load hits all of them.
    for repeat in range(args.repeats):
        for n in args.sizes:
            for name, spec in METHODS.items():
                options = {k: v for k, v in spec.items() if k != "make"}
                elapsed = _measure_once(n, spec["make"], **options)
                results[name][str(n)].append(elapsed)
                print(f"repeat {repeat} {name:30s} n={n:4d}: {elapsed:.3f} s", flush=True)

    def median(name: str, n: int) -> float:
        return statistics.median(results[name][str(n)])

    header = "| sampler | " + " | ".join(f"n = {n}" for n in args.sizes) + " |"
    lines = [header, "|---|" + "---:|" * len(args.sizes)]
    for name in results:
        cells = [f"{median(name, n):.3f} s" for n in args.sizes]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    ratios = {
        f"{gp} / {hd}": {str(n): median(gp, n) / median(hd, n) for n in args.sizes}
        for gp, hd in [
            ("GPSampler cold", "HyperdynSampler cold"),
            ("GPSampler cold, BLAS limited", "HyperdynSampler cold"),
            ("GPSampler warm", "HyperdynSampler warm"),
            ("GPSampler warm, BLAS limited", "HyperdynSampler warm"),
        ]
    }
    print(table)
    if args.no_write:
        return
    command = ("python -m benchmarks.bench_hyperdyn_overhead " + " ".join(sys.argv[1:])).strip()
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"torch {torch.__version__}, optuna {optuna.__version__}, "
        f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}"
    )
    _RESULTS_DIR.mkdir(exist_ok=True)
    (_RESULTS_DIR / "hyperdyn_overhead.json").write_text(
        json.dumps(
            {"command": command, "machine": machine, "seconds": results, "ratios": ratios},
            indent=2,
        )
        + "\n"
    )
    ratio_lines = "\n".join(
        f"- {key}: " + ", ".join(f"{r:.2f}x at n = {n}" for n, r in by_n.items())
        for key, by_n in ratios.items()
    )
    (_RESULTS_DIR / "hyperdyn_overhead.md").write_text(
        "# Hyperdyn: time for one proposal against GPSampler\n\n"
        f"Command: `{command}` (median of {args.repeats} interleaved runs per cell)\n\n"
        f"Machine: {machine}\n\n"
        f"{table}\n\n"
        "Ratios of the medians (above 1: HyperdynSampler is faster):\n\n"
        f"{ratio_lines}\n"
    )


if __name__ == "__main__":
    main()
