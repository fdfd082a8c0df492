"""One worker process of the many-workers tests: ``python -m tests.workers_tests._worker SPEC``.

``SPEC`` is a JSON object (see :func:`main`): the storage to open, the methods to run, a
barrier directory where the workers meet before each method (so that they really overlap),
this worker's index and the file to write its report to. Every method runs on its own study
(``workers-<method>``) that all workers share, with a cheap synthetic objective. The report
holds, per method, what this worker told the storage (trial number, state, values), anything
method-specific the test checks, and the traceback of an exception, if one was raised; a
method that raised does not stop the others, but the worker then exits with status 1.

The storage is opened as a user on another machine would: the same URL in every worker and
``load_if_exists=True`` (every worker creates the study if it is not there yet).
"""

from __future__ import annotations

from collections.abc import Callable
import json
import math
import os
from pathlib import Path
import sys
import time
import traceback
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import FrozenTrial


BARRIER_TIMEOUT = 120.0

Report = dict[str, Any]


def open_storage(spec: dict[str, Any]) -> optuna.storages.BaseStorage:
    """The storage named by ``spec["storage"]``: RDB (with optional heartbeat) or journal.

    An RDB storage is opened with :func:`optuna_ext._storage.open_storage`, as the CLI and the
    benchmark runner do: four workers on an empty database race to create the tables.
    """
    storage = spec["storage"]
    if storage["kind"] == "journal":
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(storage["path"]))
    from optuna_ext._storage import open_storage as open_rdb

    heartbeat = storage.get("heartbeat")
    kwargs: dict[str, Any] = {}
    if storage.get("engine_kwargs"):
        kwargs["engine_kwargs"] = storage["engine_kwargs"]
    if heartbeat:
        kwargs.update(heartbeat_interval=heartbeat[0], grace_period=heartbeat[1])
    return open_rdb(storage["url"], **kwargs)


def wait_for_the_others(spec: dict[str, Any], name: str) -> None:
    """Block until every worker has reached the barrier ``name``."""
    barrier = Path(spec["barrier"]) / name
    barrier.mkdir(parents=True, exist_ok=True)
    (barrier / f"{spec['index']}.ready").touch()
    deadline = time.monotonic() + BARRIER_TIMEOUT
    while len(list(barrier.glob("*.ready"))) < spec["n_workers"]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the other workers did not reach the barrier {name!r}")
        time.sleep(0.01)


def _told(trial: FrozenTrial) -> list[Any]:
    return [trial.number, trial.state.name, trial.values]


def _recorder(report: Report) -> Callable[[optuna.Study, FrozenTrial], None]:
    told = report.setdefault("told", [])

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        told.append(_told(trial))

    return callback


def _study(storage: optuna.storages.BaseStorage, method: str, **kwargs: Any) -> optuna.Study:
    return optuna.create_study(
        storage=storage,
        study_name=f"workers-{method}",
        load_if_exists=True,
        direction="maximize",
        **kwargs,
    )


# -- the methods --------------------------------------------------------------------------------


def run_autohyper(
    storage: optuna.storages.BaseStorage, spec: dict[str, Any], report: Report
) -> None:
    from optuna_ext.samplers import AutoHyperSampler
    from tests.samplers_tests.autohyper_tests._synthetic import make_objective

    # save_plot: every trial rewrites the Z(lr) figure in the study's system attrs, the
    # concurrent writes of optuna#6065.
    study = _study(storage, "autohyper", sampler=AutoHyperSampler(save_plot=True))
    objective = make_objective(sleep=0.02, worker=str(spec["index"]))
    study.optimize(objective, n_trials=300, callbacks=[_recorder(report)])


def hyperdyn_value(epoch: float, lr: float, momentum: float) -> float:
    return -((math.log10(lr) + 2.0) ** 2) - (momentum - 0.5) ** 2 + 0.1 * epoch


HYPERDYN_EPOCHS = 4
HYPERDYN_CANDIDATES = 2


def run_hyperdyn(
    storage: optuna.storages.BaseStorage, spec: dict[str, Any], report: Report
) -> None:
    from optuna_ext.samplers import HyperdynSampler

    sampler = HyperdynSampler(seed=0, n_startup_trials=3, n_candidates=64, n_local_search=1)
    study = _study(storage, "hyperdyn", sampler=sampler)
    told = report.setdefault("told", [])
    for epoch in range(HYPERDYN_EPOCHS):
        for _ in range(HYPERDYN_CANDIDATES):
            trial = study.ask()
            trial.suggest_float("epoch", epoch, epoch)
            lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
            momentum = trial.suggest_float("momentum", 0.0, 0.95)
            time.sleep(0.01)
            frozen = study.tell(trial, hyperdyn_value(epoch, lr, momentum))
            told.append(_told(frozen))


PBT_POPULATION = 4
PBT_GENERATIONS = 3


def pbt_score(lr: float, steps: int) -> float:
    return steps - abs(math.log10(lr) + 2.0)


def pbt_segment(trial: optuna.Trial, state: dict[str, Any]) -> float:
    lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
    steps = int(state.get("steps", 0)) + 1
    time.sleep(0.02)
    state["steps"] = steps
    trial.set_user_attr("steps", steps)
    trial.set_user_attr("worker", os.getpid())
    return pbt_score(lr, steps)


def run_pbt(storage: optuna.storages.BaseStorage, spec: dict[str, Any], report: Report) -> None:
    import optuna_ext.pbt
    from optuna_ext.samplers import PBTSampler

    study = _study(storage, "pbt", sampler=PBTSampler(population_size=PBT_POPULATION, seed=0))
    store_dir = Path(spec["artifacts"]) / "pbt"
    store_dir.mkdir(parents=True, exist_ok=True)
    result = optuna_ext.pbt.run(
        study,
        pbt_segment,
        n_generations=PBT_GENERATIONS,
        artifact_store=FileSystemArtifactStore(str(store_dir)),
        poll_interval=0.05,
        callbacks=[_recorder(report)],
    )
    report["finished"] = result.finished


def run_pbt_optimize(
    storage: optuna.storages.BaseStorage, spec: dict[str, Any], report: Report
) -> None:
    from optuna_ext.samplers import PBTSampler

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
        time.sleep(0.02)
        return -abs(math.log10(lr) + 2.0)

    study = _study(storage, "pbt-optimize", sampler=PBTSampler(population_size=4, seed=0))
    study.optimize(objective, n_trials=6, callbacks=[_recorder(report)])


MORL_MAX_RESOURCE = 4


def curve(lr: float, step: int) -> float:
    """A learning curve whose height peaks at lr = 1e-2."""
    return (1.0 - math.exp(-step / 3.0)) * math.exp(-abs(math.log10(lr) + 2.0))


def _rung_objective(pruner: Any) -> Callable[[optuna.Trial], float]:
    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
        value = 0.0
        for step in range(1, MORL_MAX_RESOURCE + 1):
            time.sleep(0.001)
            value = curve(lr, step)
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return value

    return objective


def run_morl(storage: optuna.storages.BaseStorage, spec: dict[str, Any], report: Report) -> None:
    from optuna_ext.pruners import MORLPruner

    pruner = MORLPruner(max_resource=MORL_MAX_RESOURCE, min_resource=1, reduction_factor=2)
    sampler = optuna.samplers.RandomSampler(seed=spec["index"])
    study = _study(storage, "morl", sampler=sampler, pruner=pruner)
    study.optimize(_rung_objective(pruner), n_trials=6, callbacks=[_recorder(report)])


def run_morl_hyperband(
    storage: optuna.storages.BaseStorage, spec: dict[str, Any], report: Report
) -> None:
    from optuna_ext.pruners import MORLHyperbandPruner

    pruner = MORLHyperbandPruner(
        max_resource=MORL_MAX_RESOURCE, min_resource=1, reduction_factor=2
    )
    sampler = optuna.samplers.RandomSampler(seed=100 + spec["index"])
    study = _study(storage, "morl-hyperband", sampler=sampler, pruner=pruner)
    study.optimize(_rung_objective(pruner), n_trials=6, callbacks=[_recorder(report)])


SYNC_BRACKETS = 2


def synchronous_value(bracket: int, config: int, epoch: int) -> float:
    """A learning curve per configuration whose ranking changes between the rounds."""
    height = 1.0 + ((config * 7 + bracket * 3) % 9) / 9.0
    return height * (1.0 - math.exp(-epoch / (1.0 + config % 3)))


def make_synchronous_runner(artifact_dir: str) -> Any:
    from optuna_ext.pruners import SynchronousMORL

    # Rounds of 9, 3 and 1 configurations ending at epochs 1, 3 and 9.
    return SynchronousMORL(
        max_resource=9,
        n_configs=9,
        min_exponent=0,
        artifact_store=FileSystemArtifactStore(artifact_dir),
    )


def make_synchronous_train(trained: list[list[Any]] | None, sleep: float) -> Callable[..., Any]:
    from optuna_ext.pruners._synchronous import CONFIG_KEY

    def train_fn(trial: optuna.Trial, round_: Any) -> tuple[float, dict[str, Any]]:
        trial.suggest_float("lr", 1e-4, 1.0, log=True)
        config = int(trial.storage.get_trial_system_attrs(trial._trial_id)[CONFIG_KEY])
        # The state saved at the end of the last round: training goes on from there.
        resumed_from = None if round_.state is None else int(round_.state["epochs"])
        value = 0.0
        for epoch in round_.epochs:
            time.sleep(sleep)
            value = synchronous_value(round_.bracket, config, epoch + 1)
            trial.report(value, epoch + 1)
        if trained is not None:
            trained.append(
                [round_.bracket, config, round_.rung, trial.number, resumed_from, os.getpid()]
            )
        return value, {"epochs": round_.end_epoch, "config": config}

    return train_fn


def run_synchronous(
    storage: optuna.storages.BaseStorage, spec: dict[str, Any], report: Report
) -> None:
    store_dir = Path(spec["artifacts"]) / "synchronous"
    store_dir.mkdir(parents=True, exist_ok=True)
    sampler = optuna.samplers.RandomSampler(seed=spec["index"])
    study = _study(storage, "synchronous", sampler=sampler)
    trained: list[list[Any]] = report.setdefault("trained", [])
    runner = make_synchronous_runner(str(store_dir))
    best = runner.optimize(study, make_synchronous_train(trained, 0.01), n_brackets=SYNC_BRACKETS)
    report["best"] = None if best is None else best.number


FIGURE_POINTS = (20, 200, 800, 1500)
"""Points of each worker's figure: about 7, 8, 14 and 22 thousand characters of JSON (the
last is two chunks)."""


def shared_figure(index: int) -> Any:
    import plotly.graph_objects as go

    points = FIGURE_POINTS[index % len(FIGURE_POINTS)]
    x = [float(i) for i in range(points)]
    return go.Figure(go.Scatter(x=x, y=[float(index)] * points, name=f"worker {index}"))


def run_figures(
    storage: optuna.storages.BaseStorage, spec: dict[str, Any], report: Report
) -> None:
    """Every worker rewrites one figure of the study, a few milliseconds apart."""
    import random

    from optuna_ext._storage import save_dashboard_figure

    study = _study(storage, "figures")
    figure = shared_figure(spec["index"])
    saved = []
    for _ in range(20):
        saved.append(save_dashboard_figure(study, figure, graph_object_id="shared"))
        time.sleep(random.uniform(0.0, 0.02))
    report["saved"] = saved
    report["told"] = []


METHODS: dict[str, Callable[[optuna.storages.BaseStorage, dict[str, Any], Report], None]] = {
    "autohyper": run_autohyper,
    "hyperdyn": run_hyperdyn,
    "pbt": run_pbt,
    "pbt-optimize": run_pbt_optimize,
    "morl": run_morl,
    "morl-hyperband": run_morl_hyperband,
    "synchronous": run_synchronous,
    "figures": run_figures,
}


def main(argv: list[str]) -> int:
    """Run ``spec["methods"]`` in order, meeting the other workers before each one.

    ``spec``: ``{"storage": {"kind": "rdb", "url": ..., "engine_kwargs": {...},
    "heartbeat": [interval, grace]} | {"kind": "journal", "path": ...}, "methods": [...],
    "barrier": DIR, "n_workers": N, "index": I, "artifacts": DIR, "out": FILE}``.
    """
    spec = json.loads(argv[0])
    import torch

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    reports: dict[str, Report] = {}
    failed = False
    storage = open_storage(spec)
    for method in spec["methods"]:
        wait_for_the_others(spec, method)
        report: Report = {"pid": os.getpid(), "error": None}
        reports[method] = report
        start = time.monotonic()
        try:
            METHODS[method](storage, spec, report)
        except Exception:
            failed = True
            report["error"] = traceback.format_exc()
            print(f"worker {spec['index']}: {method} raised:\n{report['error']}", file=sys.stderr)
        report["seconds"] = time.monotonic() - start
        Path(spec["out"]).write_text(json.dumps(reports))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
