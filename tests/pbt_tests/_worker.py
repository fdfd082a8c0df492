"""A PBT worker process for the multi-process tests: ``python -m tests.pbt_tests._worker``.

Arguments: ``URL STUDY_NAME ARTIFACT_DIR N_GENERATIONS SEGMENT_SECONDS RETRY``, where ``RETRY``
is ``retry`` to open the storage with Optuna's ``RetryHeartbeatStaleTrialCallback``. The
segment counts its steps in the checkpoint (``steps``), so a test can check that every segment
continued from its parent's checkpoint, and records the worker's process id.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore

import optuna_ext.pbt
from optuna_ext.samplers._pbt import PBTSampler


POPULATION_SIZE = 4
HEARTBEAT_INTERVAL = 1
GRACE_PERIOD = 2


def segment_score(lr: float, steps: int) -> float:
    """A deterministic score that grows with training and peaks at lr = 0.01."""
    return steps - abs(math.log10(lr) + 2.0)


def make_segment(seconds: float) -> optuna_ext.pbt.SegmentFunction:
    def segment(trial: optuna.Trial, state: dict[str, Any]) -> float:
        lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
        steps = int(state.get("steps", 0)) + 1
        time.sleep(seconds)
        state["steps"] = steps
        trial.set_user_attr("steps", steps)
        trial.set_user_attr("pid", os.getpid())
        return segment_score(lr, steps)

    return segment


def open_study(url: str, study_name: str, retry: bool = False) -> optuna.Study:
    storage = optuna.storages.RDBStorage(
        url,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        grace_period=GRACE_PERIOD,
        heartbeat_stale_trial_callback=(
            optuna.storages.RetryHeartbeatStaleTrialCallback() if retry else None
        ),
    )
    return optuna.load_study(
        study_name=study_name,
        storage=storage,
        sampler=PBTSampler(population_size=POPULATION_SIZE, seed=0),
    )


def main(argv: list[str]) -> int:
    url, study_name, artifact_dir, n_generations, seconds, retry = argv
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(url, study_name, retry == "retry")
    result = optuna_ext.pbt.run(
        study,
        make_segment(float(seconds)),
        n_generations=int(n_generations),
        artifact_store=FileSystemArtifactStore(artifact_dir),
        poll_interval=0.05,
        save_plots=False,  # tested in one process; importing optuna-dashboard takes seconds
    )
    print(f"worker {os.getpid()} ran {result.n_segments} segments", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
