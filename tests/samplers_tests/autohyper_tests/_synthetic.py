"""A synthetic response Z(lr) with a smooth knee, and a worker script for the storage tests.

``knee_z`` imitates autoHyper's measured Z: 1 for rates far below the knee, a smooth fall
around it, and a plateau at ``floor`` above it, quantised to multiples of 1/200 (the
resolution of a mean over 5 epochs of 2 x 20 unfoldings), so that it is exactly 1 at small
rates, as a real Z is.

Run as ``python -m tests.samplers_tests.autohyper_tests._synthetic STORAGE STUDY N_TRIALS``
(from the repository root) to optimize the synthetic objective in a separate process.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
import os
from pathlib import Path
import time

import optuna

from optuna_ext.metrics._keys import KNOWLEDGE_GAIN_Z_KEY
from optuna_ext.samplers import AutoHyperSampler


KNEE = 1e-2
FLOOR = 0.05
STEEPNESS = 3.0
RESOLUTION = 200
DISTRIBUTION = (1e-6, 1.0)


def knee_z(
    lr: float,
    knee: float = KNEE,
    floor: float = FLOOR,
    steepness: float = STEEPNESS,
    resolution: int = RESOLUTION,
) -> float:
    """``floor + (1 - floor) / (1 + (lr / knee) ** steepness)``, rounded to 1/resolution."""
    z = floor + (1.0 - floor) / (1.0 + (lr / knee) ** steepness)
    return round(z * resolution) / resolution


def plateau_start(knee: float = KNEE, steepness: float = STEEPNESS) -> float:
    """The rate where Z has made 90 % of its fall from 1 to the plateau."""
    return knee * 9.0 ** (1.0 / steepness)


def make_objective(
    *, knee: float = KNEE, sleep: float = 0.0, worker: str = ""
) -> Callable[[optuna.Trial], float]:
    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", *DISTRIBUTION, log=True)
        x = trial.suggest_float("x", -1.0, 1.0)
        if sleep > 0:
            time.sleep(sleep)
        z = knee_z(lr, knee)
        trial.set_user_attr(KNOWLEDGE_GAIN_Z_KEY, z)
        if worker:
            trial.set_user_attr("worker", worker)
        return 1.0 - z + 0.01 * x  # "validation accuracy": any metric will do

    return objective


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("storage")
    parser.add_argument("study_name")
    parser.add_argument("n_trials", type=int)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--worker", default="")
    parser.add_argument("--save-plot", action="store_true")
    parser.add_argument("--barrier", default="", help="directory where workers meet")
    parser.add_argument("--n-workers", type=int, default=1)
    args = parser.parse_args()
    if args.barrier:
        # Start optimizing only when every worker has imported everything, so that the
        # workers really overlap even on a loaded machine.
        barrier = Path(args.barrier)
        (barrier / f"{os.getpid()}.ready").touch()
        deadline = time.monotonic() + 120
        while len(list(barrier.glob("*.ready"))) < args.n_workers:
            if time.monotonic() > deadline:
                raise TimeoutError("the other workers did not start")
            time.sleep(0.01)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=args.storage,
        study_name=args.study_name,
        load_if_exists=True,
        direction="maximize",
        sampler=AutoHyperSampler(seed=args.seed, save_plot=args.save_plot),
    )
    study.optimize(
        make_objective(sleep=args.sleep, worker=args.worker or str(os.getpid())),
        n_trials=args.n_trials,
    )
    print(len(study.trials))


if __name__ == "__main__":
    main()
