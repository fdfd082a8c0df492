"""The studies of the resume tests, one per method, as functions and as a worker script.

``python -m tests.resume_tests._workers METHOD URL ARTIFACT_DIR [--kill POINT]`` (or
:func:`run_logged` in a forked process, as the tests do) runs (or resumes) the study of
``METHOD`` on ``URL`` to its end, opened with heartbeats and Optuna's retry of stale trials
(``_harness.open_storage``), and kills itself at the decision point ``POINT`` if it gets
there. The tests run the same functions in-process, uninterrupted, for the reference. Every
objective is deterministic and cheap, and no decision depends on wall time (the sleeps only
make a kill from outside land inside the objective often).

Decision points (the ``--kill`` strings):

- ``autohyper``: ``objective:I`` (inside the objective of the trial with draw index ``I``,
  after it measured ``Z``), ``after:I`` (in a callback once that trial is finished);
- ``morl``: ``epoch:I:E`` (trial ``I`` reported epoch ``E`` and was not pruned),
  ``pruned:I`` (trial ``I`` was just told to prune, and has not raised yet);
- ``synchronous_morl``: ``train:B:K:C`` (bracket ``B``, round ``K``, configuration ``C``, at
  the end of ``train_fn``, before it returns);
- ``hyperdyn``: ``train:T:J`` (the ``J``-th one-epoch training of epoch ``T``, before it
  returns), ``tell:T:J`` (after the ``J``-th candidate of epoch ``T`` was told);
- ``pbt``: ``segment:G:M`` (inside the segment of generation ``G``, member ``M``),
  ``after:G:M`` (once that segment is finished).

The draw index (``optuna_ext.samplers._storage_seeded.draw_index``) is the trial number an
uninterrupted run would give the trial: a retry of a killed trial has its original's.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
import json
import math
import os
from pathlib import Path
import sys
import time
from typing import Any
import warnings

import optuna
from optuna.artifacts import FileSystemArtifactStore
import torch

from optuna_ext.pruners import MORLPruner
from optuna_ext.pruners import SynchronousMORL
from optuna_ext.pruners._synchronous import CONFIG_KEY
from optuna_ext.samplers import AutoHyperSampler
from optuna_ext.samplers import PBTSampler
from optuna_ext.samplers._pbt._population import GENERATION_KEY
from optuna_ext.samplers._pbt._population import MEMBER_KEY
from optuna_ext.samplers._storage_seeded import draw_index
from optuna_ext.samplers._storage_seeded import StorageSeededRandomSampler
from tests.hyperdyn_tests import _toy
from tests.resume_tests._harness import Killer
from tests.resume_tests._harness import open_storage
from tests.samplers_tests.autohyper_tests._synthetic import make_objective


STUDY = "resume"
SEED = 7
NoKill = Killer(None)


def _study(storage: Any, artifacts: Path, **kwargs: Any) -> optuna.Study:
    artifacts.mkdir(parents=True, exist_ok=True)
    return optuna.create_study(
        storage=storage, study_name=STUDY, load_if_exists=True, direction="maximize", **kwargs
    )


def _index(trial: optuna.Trial) -> int:
    frozen = trial.study._storage.get_trial(trial._trial_id)
    return draw_index(trial.study.get_trials(deepcopy=False), frozen)


# -- autoHyper ------------------------------------------------------------------------------


def autohyper(storage: Any, artifacts: Path, killer: Killer = NoKill) -> optuna.Study:
    study = _study(storage, artifacts, sampler=AutoHyperSampler(seed=SEED, save_plot=False))
    objective = make_objective()

    def killable(trial: optuna.Trial) -> float:
        value = objective(trial)
        time.sleep(0.01)
        killer(f"objective:{_index(trial)}", trial._trial_id)
        return value

    def after(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        killer(f"after:{draw_index(study.get_trials(deepcopy=False), trial)}")

    study.optimize(killable, n_trials=500, callbacks=[after])
    return study


# -- MORL, asynchronous -----------------------------------------------------------------------

MORL_EPOCHS = 9
MORL_TRIALS = 30


def curve(lr: float, momentum: float, epoch: int) -> float:
    """A validation accuracy after ``epoch`` epochs: fast rates learn fast and end lower."""
    x = math.log10(lr) + 2.0
    final = 0.9 - 0.1 * x * x + 0.05 * momentum
    speed = 0.2 * 10.0 ** (0.5 * x) * (1.0 + momentum)
    return final * (1.0 - math.exp(-speed * epoch))


def morl_pruner() -> MORLPruner:
    return MORLPruner(max_resource=MORL_EPOCHS, min_resource=1, reduction_factor=3)  # 1, 3, 9


def morl(storage: Any, artifacts: Path, killer: Killer = NoKill) -> optuna.Study:
    study = _study(
        storage, artifacts, sampler=StorageSeededRandomSampler(seed=SEED), pruner=morl_pruner()
    )

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
        momentum = trial.suggest_float("momentum", 0.0, 0.99)
        index = _index(trial)
        value = math.nan
        for epoch in range(1, MORL_EPOCHS + 1):
            time.sleep(0.003)
            value = curve(lr, momentum, epoch)
            trial.report(value, epoch)
            if trial.should_prune():
                killer(f"pruned:{index}", trial._trial_id)
                raise optuna.TrialPruned()
            killer(f"epoch:{index}:{epoch}", trial._trial_id)
        return value

    # Count the trials an uninterrupted run would have: a killed trial and its retry are one.
    while len(_logical_finished(study)) < MORL_TRIALS:
        study.optimize(objective, n_trials=1)
    return study


def _logical_finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    from tests.resume_tests._harness import logical_trials

    trials = study.get_trials(deepcopy=False)
    return [t for t in logical_trials(trials) if t.state.is_finished()]


# -- MORL, synchronous ------------------------------------------------------------------------

SYNC_BRACKETS = 2


def synchronous_runner(artifacts: Path) -> SynchronousMORL:
    return SynchronousMORL(
        max_resource=9,
        n_configs=9,
        min_resource=1,
        reduction_factor=3,  # rounds of 9, 3 and 1 configurations, ending at epochs 1, 3, 9
        artifact_store=FileSystemArtifactStore(str(artifacts)),
    )


def synchronous_morl(storage: Any, artifacts: Path, killer: Killer = NoKill) -> optuna.Study:
    study = _study(storage, artifacts, sampler=StorageSeededRandomSampler(seed=SEED))
    runner = synchronous_runner(artifacts)

    def train_fn(trial: optuna.Trial, round: Any) -> tuple[float, dict[str, Any]]:
        lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
        momentum = trial.suggest_float("momentum", 0.0, 0.99)
        epochs = 0 if round.state is None else int(round.state["epochs"])
        assert epochs == round.start_epoch, (epochs, round.start_epoch)
        value = math.nan
        for epoch in round.epochs:
            time.sleep(0.003)
            value = curve(lr, momentum, epoch + 1)
            trial.report(value, epoch + 1)
        config = trial.study._storage.get_trial_system_attrs(trial._trial_id)[CONFIG_KEY]
        killer(f"train:{round.bracket}:{round.rung}:{config}")
        return value, {"epochs": round.end_epoch, "weights": torch.full((3,), value)}

    runner.optimize(study, train_fn, n_brackets=SYNC_BRACKETS)
    return study


# -- Hyperdyn ---------------------------------------------------------------------------------

HYPERDYN_EPOCHS = 6
HYPERDYN_SEED = 1  # with window=2, offset=0.5: proposals inside the box, and switches


def hyperdyn(storage: Any, artifacts: Path, killer: Killer = NoKill) -> optuna.Study:
    study = _study(storage, artifacts, sampler=_toy.cheap_sampler(seed=HYPERDYN_SEED))
    calls: dict[int, int] = {}
    tells: dict[int, int] = {}

    def train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, epoch: int) -> object:
        loss = _toy.train_epoch(model, optimizer, epoch)
        calls[epoch] = calls.get(epoch, 0) + 1
        killer(f"train:{epoch}:{calls[epoch] - 1}")
        return loss

    tell = study.tell

    def killable_tell(*args: Any, **kwargs: Any) -> optuna.trial.FrozenTrial:
        frozen = tell(*args, **kwargs)
        if frozen.state == optuna.trial.TrialState.COMPLETE:
            epoch = int(frozen.user_attrs["hyperdyn:epoch"])
            tells[epoch] = tells.get(epoch, 0) + 1
            killer(f"tell:{epoch}:{tells[epoch] - 1}")
        return frozen

    study.tell = killable_tell  # type: ignore[method-assign]
    tuner, model, _ = _toy.make_tuner(
        study,
        FileSystemArtifactStore(str(artifacts)),
        train=train,
        n_random_start=3,
        window=2,
        offset=0.5,
        seed=HYPERDYN_SEED,
    )
    tuner.run(epochs=HYPERDYN_EPOCHS)
    torch.save(model.state_dict(), artifacts / "final-weights.pt")
    return study


# -- PBT --------------------------------------------------------------------------------------

PBT_POPULATION = 4
PBT_GENERATIONS = 4


def pbt(storage: Any, artifacts: Path, killer: Killer = NoKill) -> optuna.Study:
    import optuna_ext.pbt

    study = _study(
        storage, artifacts, sampler=PBTSampler(population_size=PBT_POPULATION, seed=SEED)
    )

    def slot(trial: optuna.Trial | optuna.trial.FrozenTrial) -> str:
        if isinstance(trial, optuna.Trial):
            attrs = trial.study._storage.get_trial_system_attrs(trial._trial_id)
        else:
            attrs = trial.system_attrs
        return f"{attrs[GENERATION_KEY]}:{attrs[MEMBER_KEY]}"

    def segment(trial: optuna.Trial, state: dict[str, Any]) -> float:
        lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
        momentum = trial.suggest_float("momentum", 0.0, 0.99)
        steps = int(state.get("steps", 0)) + 1
        time.sleep(0.02)
        score = float(state.get("score", 0.0)) + curve(lr, momentum, 2)
        state["steps"] = steps
        state["score"] = score
        trial.set_user_attr("steps", steps)
        killer(f"segment:{slot(trial)}", trial._trial_id)
        return score

    def after(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        killer(f"after:{slot(trial)}")

    optuna_ext.pbt.run(
        study,
        segment,
        n_generations=PBT_GENERATIONS,
        artifact_store=FileSystemArtifactStore(str(artifacts)),
        poll_interval=0.02,
        save_plots=False,
        callbacks=[after],
    )
    return study


METHODS: dict[str, Callable[..., optuna.Study]] = {
    "autohyper": autohyper,
    "morl": morl,
    "synchronous_morl": synchronous_morl,
    "hyperdyn": hyperdyn,
    "pbt": pbt,
}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("method", choices=sorted(METHODS))
    parser.add_argument("url")
    parser.add_argument("artifacts")
    parser.add_argument("--kill", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    # Ask-and-tell methods on a storage with heartbeats: Optuna warns that only `optimize`
    # records them; those methods resume their RUNNING trials themselves.
    warnings.filterwarnings("ignore", message="Heartbeat of storage")
    storage = open_storage(args.url)
    artifacts = Path(args.artifacts)
    artifacts.mkdir(parents=True, exist_ok=True)
    METHODS[args.method](storage, artifacts, Killer(args.kill, storage))
    print(json.dumps({"pid": os.getpid(), "done": True}), flush=True)
    return 0


def run_logged(argv: list[str], log_path: str) -> None:
    """:func:`main` with the process's output in ``log_path`` (a forked worker's entry)."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    if code:
        sys.exit(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
