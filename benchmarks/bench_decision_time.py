"""How the time of one sampler or pruner decision grows with the study, on PostgreSQL.

Run from the repository root (PostgreSQL at ``--server``; a fresh database is made there and
dropped at the end)::

    nice -n 10 python -m benchmarks.bench_decision_time

For ``n`` = 100, 1,000 and 5,000 trials it fills one study per family with trials that look
like a real study of that method (parameters, values, intermediate values and the system
attrs the methods read), then times, on the same study:

- **samplers**, one decision each: ``study.ask()`` plus the ``suggest_*`` calls that reach
  the sampler, against Optuna's ``TPESampler`` on the same study:

  - ``AutoHyperSampler``: a finished autoHyper search (its real trials, from a sequential
    run on a synthetic Z(lr) with a knee at 1e-2) followed by trials that got the chosen
    rate, as a study that goes on after convergence has; the decision replays the search;
  - ``HyperdynSampler``: five random starts and two candidates per epoch (as
    ``bench_hyperdyn_overhead.py``); the decision is a proposal for the next epoch, a GP over
    the earlier epochs (its default ``max_observations`` bounds what the GP sees);
  - ``PBTSampler``: a synchronous population of 8 whose ``n / 8`` generations are done; the
    decision is the first slot of the next generation (exploit or continue, from the last
    generation's scores).

- **pruners**, one ``trial.should_prune()`` each on a new trial that has just reported the
  first rung end of its bracket (``max_resource=27``, ``eta=3``, rung ends 1, 3, 9, 27; the
  study's trials stopped where successive halving stops them: two thirds at 1, and so on),
  against Optuna's ``SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)`` on the same
  study: ``MORLPruner`` and ``MORLHyperbandPruner``.

- **SynchronousMORL**, one scheduling step (read the trials, find the open round of every
  bracket and the next configuration to train) on a study of finished brackets of 27
  configurations and one bracket waiting in its second round, against the same
  ``SuccessiveHalvingPruner`` decision on that study.

The studies are filled directly through Optuna's SQLAlchemy models in one transaction (the
same rows ``study.add_trials`` writes, in a fraction of the time). Every decision runs through
:func:`optuna_ext._storage.open_storage`, as a worker does: Optuna's ``_CachedStorage`` keeps
finished trials in memory. The first decision of a fresh storage object reads every trial from
the database ("cold", reported once); then ``--repeats`` warm decisions follow, ours and the
baseline interleaved so that the machine's load hits both alike. Each decision is timed
twice: wall clock (the median of the repeats), and the CPU time of the deciding process (its
Python and database-client work; the database server's time is not in it), the least of the
repeats, which the load of other jobs distorts least. The growth is the ratio at the largest
and the smallest ``n``. The tables are printed and written, with the command, to
``benchmarks/results/decision_time.md``; the raw
numbers go to ``benchmarks/results/decision_time.json``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
import datetime
import json
import math
import os
from pathlib import Path
import platform
import statistics
import sys
import tempfile
import time
from typing import Any
import uuid

import numpy as np
import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.distributions import distribution_to_json
from optuna.distributions import FloatDistribution
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial
from optuna.trial import TrialState
import sqlalchemy
import sqlalchemy.orm
import torch

from optuna_ext._storage import open_storage
from optuna_ext.metrics import KNOWLEDGE_GAIN_Z_KEY
from optuna_ext.pruners import MORLHyperbandPruner
from optuna_ext.pruners import MORLPruner
from optuna_ext.pruners import SynchronousMORL
from optuna_ext.pruners._morl import BOUNDARIES_KEY
from optuna_ext.pruners._morl_hyperband import BRACKET_KEY as HB_BRACKET_KEY
from optuna_ext.pruners._morl_hyperband import BRACKETS_KEY
from optuna_ext.pruners._rungs import completed_rung_key
from optuna_ext.pruners._synchronous import BRACKET_KEY as SYNC_BRACKET_KEY
from optuna_ext.pruners._synchronous import CONFIG_KEY as SYNC_CONFIG_KEY
from optuna_ext.pruners._synchronous import LAYOUT_KEY as SYNC_LAYOUT_KEY
from optuna_ext.pruners._synchronous import rung_value_key as sync_rung_key
from optuna_ext.samplers import AutoHyperSampler
from optuna_ext.samplers import HyperdynSampler
from optuna_ext.samplers import PBTSampler
from optuna_ext.samplers._pbt._population import DECISION_KEY
from optuna_ext.samplers._pbt._population import GENERATION_KEY
from optuna_ext.samplers._pbt._population import MEMBER_KEY


_RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
LR = FloatDistribution(1e-4, 1.0, log=True)
AUTOHYPER_LR = FloatDistribution(1e-6, 1.0, log=True)
X = FloatDistribution(-1.0, 1.0)
MOMENTUM = FloatDistribution(0.0, 0.95)
MAX_RESOURCE = 27
ETA = 3
RUNG_ENDS = (1, 3, 9, 27)
POPULATION = 8
SYNC_CONFIGS = 27

Decision = Callable[[], None]


# -- filling a study -----------------------------------------------------------------------------


def _bulk_add(engine: sqlalchemy.engine.Engine, study_id: int, trials: list[FrozenTrial]) -> None:
    """Insert ``trials`` into the study as Optuna's RDB storage stores them, in one transaction."""
    with sqlalchemy.orm.Session(engine) as session:
        start = session.query(models.TrialModel).filter_by(study_id=study_id).count()
        for i, ft in enumerate(trials):
            row = models.TrialModel(
                study_id=study_id,
                number=start + i,
                state=ft.state,
                datetime_start=ft.datetime_start,
                datetime_complete=ft.datetime_complete,
            )
            for name, value in ft.params.items():
                dist = ft.distributions[name]
                row.params.append(
                    models.TrialParamModel(
                        param_name=name,
                        param_value=dist.to_internal_repr(value),
                        distribution_json=distribution_to_json(dist),
                    )
                )
            for objective, value in enumerate(ft.values or ()):
                stored, kind = models.TrialValueModel.value_to_stored_repr(value)
                row.values.append(
                    models.TrialValueModel(objective=objective, value=stored, value_type=kind)
                )
            for step, value in ft.intermediate_values.items():
                stored_iv, kind_iv = (
                    models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(value)
                )
                row.intermediate_values.append(
                    models.TrialIntermediateValueModel(
                        step=step, intermediate_value=stored_iv, intermediate_value_type=kind_iv
                    )
                )
            for key, value in ft.system_attrs.items():
                row.system_attributes.append(
                    models.TrialSystemAttributeModel(key=key, value_json=json.dumps(value))
                )
            for key, value in ft.user_attrs.items():
                row.user_attributes.append(
                    models.TrialUserAttributeModel(key=key, value_json=json.dumps(value))
                )
            session.add(row)
        session.commit()


def _trial(
    *,
    value: float | None,
    params: dict[str, Any],
    distributions: dict[str, Any],
    state: TrialState = TrialState.COMPLETE,
    system_attrs: dict[str, Any] | None = None,
    user_attrs: dict[str, Any] | None = None,
    intermediate_values: dict[int, float] | None = None,
) -> FrozenTrial:
    return optuna.trial.create_trial(
        state=state,
        value=value if state == TrialState.COMPLETE else None,
        params=params,
        distributions=distributions,
        system_attrs=system_attrs or {},
        user_attrs=user_attrs or {},
        intermediate_values=intermediate_values or {},
    )


def knee_z(lr: float) -> float:
    """A synthetic Z(lr): 1 below the knee at 1e-2, a plateau at 0.05 above it."""
    z = 0.05 + 0.95 / (1.0 + (lr / 1e-2) ** 3)
    return round(z * 200) / 200


def autohyper_trials(n: int, rng: np.random.Generator) -> tuple[list[FrozenTrial], dict]:
    """A finished search (sequential, in memory), then trials that got the chosen rate."""
    study = optuna.create_study(
        sampler=AutoHyperSampler(save_plot=False, seed=0), direction="maximize"
    )

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", AUTOHYPER_LR.low, AUTOHYPER_LR.high, log=True)
        x = trial.suggest_float("x", X.low, X.high)
        trial.set_user_attr(KNOWLEDGE_GAIN_Z_KEY, knee_z(lr))
        return 1.0 - knee_z(lr) + 0.01 * x

    study.optimize(objective, n_trials=min(n, 500))
    search = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if len(search) >= n:
        return search[:n], study._storage.get_study_system_attrs(study._study_id)
    final = search[-1]
    out = list(search)
    for _ in range(n - len(search)):
        x = float(rng.uniform(-1, 1))
        out.append(
            _trial(
                value=float(final.values[0]) + 0.01 * x,
                params={"lr": final.params["lr"], "x": x},
                distributions={"lr": AUTOHYPER_LR, "x": X},
                system_attrs=dict(final.system_attrs),
                user_attrs=dict(final.user_attrs),
            )
        )
    return out, study._storage.get_study_system_attrs(study._study_id)


def hyperdyn_trials(n: int, rng: np.random.Generator) -> list[FrozenTrial]:
    """Five random starts at epoch 0, then two candidates per epoch."""
    out = []
    for i in range(n):
        epoch = 0 if i < 5 else 1 + (i - 5) // 2
        lr = float(10 ** rng.uniform(-4, 0))
        momentum = float(rng.uniform(0.0, 0.95))
        gain = 30.0 / (1 + epoch) - 4 * (math.log10(lr) + 1.5) ** 2 - 5 * (momentum - 0.6) ** 2
        out.append(
            _trial(
                value=gain + float(rng.normal(0.0, 1.0)),
                params={"epoch": float(epoch), "lr": lr, "momentum": momentum},
                distributions={
                    "epoch": FloatDistribution(float(epoch), float(epoch)),
                    "lr": LR,
                    "momentum": MOMENTUM,
                },
            )
        )
    return out


def next_epoch(n: int) -> int:
    return 1 + (n - 5 + 1) // 2 if n > 5 else 1


def pbt_trials(n: int, rng: np.random.Generator) -> list[FrozenTrial]:
    """``n // 8`` finished generations of a population of 8, each member continuing itself."""
    out: list[FrozenTrial] = []
    for g in range(n // POPULATION):
        for m in range(POPULATION):
            lr = float(10 ** rng.uniform(-4, 0)) if g == 0 else out[-POPULATION].params["lr"]
            parent = None if g == 0 else len(out) - POPULATION
            decision = {
                "action": "start" if g == 0 else "continue",
                "parent": parent,
                "clone_member": None,
                "params": {"lr": lr},
                "ops": {"lr": "kept"},
            }
            out.append(
                _trial(
                    value=g - abs(math.log10(lr) + 2.0) + float(rng.normal(0, 0.1)),
                    params={"lr": lr},
                    distributions={"lr": LR},
                    system_attrs={GENERATION_KEY: g, MEMBER_KEY: m, DECISION_KEY: decision},
                    user_attrs={
                        "pbt:generation": g,
                        "pbt:member": m,
                        "pbt:parent": parent,
                        "pbt:action": decision["action"],
                    },
                )
            )
    return out


def rung_trials(
    n: int, rng: np.random.Generator, hyperband: MORLHyperbandPruner, study_name: str
) -> list[FrozenTrial]:
    """Trials stopped where successive halving stops them, with every pruner's rung records."""
    out = []
    for number in range(n):
        lr = float(10 ** rng.uniform(-4, 0))
        quality = math.exp(-abs(math.log10(lr) + 2.0)) + float(rng.normal(0, 0.05))
        u = float(rng.uniform())
        last = 1 if u < 2 / 3 else 3 if u < 8 / 9 else 9 if u < 26 / 27 else 27
        curve = {s: quality * (1 - math.exp(-s / 5.0)) for s in range(1, last + 1)}
        attrs: dict[str, Any] = {}
        for k, end in enumerate(RUNG_ENDS):
            if end <= last:
                attrs[f"completed_rung_{k}"] = curve[end]  # Optuna's successive halving
                attrs[completed_rung_key("MORLPruner", k)] = curve[end]
        bracket = hyperband._hash_bracket(study_name, number)
        attrs[HB_BRACKET_KEY] = bracket
        for k, end in enumerate(hyperband.brackets[bracket]):
            if end <= last:
                attrs[completed_rung_key("MORLHyperbandPruner", k)] = curve[end]
        out.append(
            _trial(
                value=curve[last],
                params={"lr": lr},
                distributions={"lr": LR},
                state=TrialState.COMPLETE if last == MAX_RESOURCE else TrialState.PRUNED,
                system_attrs=attrs,
                intermediate_values=curve,
            )
        )
    return out


def synchronous_trials(n: int, rng: np.random.Generator) -> tuple[list[FrozenTrial], int]:
    """Finished brackets of 27, 9, 3 and 1 configurations, then one waiting in round 1."""
    per_rung = (27, 9, 3, 1)
    out: list[FrozenTrial] = []
    bracket = 0
    while True:
        is_open = len(out) + 2 * SYNC_CONFIGS > n
        values = rng.permutation(SYNC_CONFIGS) / SYNC_CONFIGS + 0.5  # distinct: no ties
        order = sorted(range(SYNC_CONFIGS), key=lambda i: -values[i])
        # The number of rounds each configuration took part in (the best ones the most).
        rounds = [0] * SYNC_CONFIGS
        for k, n_k in enumerate(per_rung[:2] if is_open else per_rung):
            for i in order[:n_k]:
                rounds[i] = k + 1
        for i in range(SYNC_CONFIGS):
            done = 1 if is_open else rounds[i]  # an open bracket has done round 0 only
            attrs: dict[str, Any] = {SYNC_BRACKET_KEY: bracket, SYNC_CONFIG_KEY: i}
            curve = {RUNG_ENDS[k]: float(values[i]) * (k + 1) for k in range(done)}
            for k in range(done):
                attrs[sync_rung_key(k)] = curve[RUNG_ENDS[k]]
            if is_open:
                state = TrialState.WAITING if rounds[i] == 2 else TrialState.PRUNED
            else:
                state = TrialState.COMPLETE if rounds[i] == 4 else TrialState.PRUNED
            out.append(
                _trial(
                    value=curve[max(curve)],
                    params={"lr": float(10 ** rng.uniform(-4, 0))},
                    distributions={"lr": LR},
                    state=state,
                    system_attrs=attrs,
                    intermediate_values=curve,
                )
            )
        bracket += 1
        if is_open:
            return out, bracket


# -- timing ---------------------------------------------------------------------------------------


def _timed(decide: Decision) -> tuple[float, float]:
    """Wall-clock and CPU seconds (this process: the decision's Python and client work)."""
    wall, cpu = time.perf_counter(), time.process_time()
    decide()
    return time.perf_counter() - wall, time.process_time() - cpu


def _sampler_decision(
    study: optuna.Study, suggest: Callable[[optuna.Trial], None], value: float
) -> Decision:
    def decide() -> None:
        trial = study.ask()
        suggest(trial)
        decide.last = trial  # type: ignore[attr-defined]

    def after() -> None:
        study.tell(decide.last, value)  # type: ignore[attr-defined]

    decide.after = after  # type: ignore[attr-defined]
    return decide


def _pruner_decision(
    study: optuna.Study, report_to: Callable[[optuna.Trial], int], *, ask: bool = True
) -> Decision:
    """One ``should_prune`` on a new trial; ``ask=False`` makes the trial without
    ``study.ask()``, which would take a WAITING trial (a suspended SynchronousMORL one)."""
    state: dict[str, Any] = {}

    def prepare() -> None:
        if ask:
            trial = study.ask()
        else:
            trial = optuna.Trial(study, study._storage.create_new_trial(study._study_id))
        trial.suggest_float("lr", LR.low, LR.high, log=True)
        last = report_to(trial)
        for step in range(1, last + 1):
            trial.report(0.5 * (1 - math.exp(-step / 5.0)), step)
        state["trial"] = trial

    def decide() -> None:
        state["pruned"] = state["trial"].should_prune()

    def after() -> None:
        study.tell(state["trial"], state=TrialState.PRUNED)

    decide.prepare = prepare  # type: ignore[attr-defined]
    decide.after = after  # type: ignore[attr-defined]
    return decide


def _measure(
    pairs: list[tuple[str, Callable[[], Decision]]], repeats: int
) -> dict[str, dict[str, Any]]:
    """Cold first decision and ``repeats`` warm ones per method, the methods interleaved."""
    deciders = {}
    out: dict[str, dict[str, Any]] = {}
    for name, make in pairs:
        decide = make()
        deciders[name] = decide
        cold, cold_cpu = _run_one(decide)
        out[name] = {"cold": cold, "cold_cpu": cold_cpu, "warm": [], "warm_cpu": []}
    for _ in range(repeats):
        for name, decide in deciders.items():
            wall, cpu = _run_one(decide)
            out[name]["warm"].append(wall)
            out[name]["warm_cpu"].append(cpu)
    for name in out:
        out[name]["median"] = statistics.median(out[name]["warm"])
        out[name]["median_cpu"] = statistics.median(out[name]["warm_cpu"])
        # The least CPU time of the repeats: other jobs only ever add to it.
        out[name]["min_cpu"] = min(out[name]["warm_cpu"])
    return out


def _run_one(decide: Decision) -> tuple[float, float]:
    prepare = getattr(decide, "prepare", None)
    if prepare is not None:
        prepare()
    seconds = _timed(decide)
    after = getattr(decide, "after", None)
    if after is not None:
        after()
    return seconds


# -- the families ---------------------------------------------------------------------------------


def _new_study(url: str, name: str, system_attrs: dict[str, Any] | None = None) -> int:
    storage = optuna.storages.RDBStorage(url)
    study_id = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], name)
    for key, value in (system_attrs or {}).items():
        storage.set_study_system_attr(study_id, key, value)
    storage.engine.dispose()
    return study_id


def _load(url: str, name: str, **kwargs: Any) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url), **kwargs)


def run_size(url: str, engine: sqlalchemy.engine.Engine, n: int, repeats: int) -> dict[str, Any]:
    rng = np.random.default_rng(n)
    results: dict[str, Any] = {}
    fill_seconds = 0.0

    def fill(name: str, trials: list[FrozenTrial], system_attrs: dict | None = None) -> None:
        nonlocal fill_seconds
        start = time.perf_counter()
        study_id = _new_study(url, name, system_attrs)
        _bulk_add(engine, study_id, trials)
        fill_seconds += time.perf_counter() - start

    # autoHyper against TPE.
    trials, attrs = autohyper_trials(n, rng)
    fill(f"autohyper-{n}", trials, attrs)

    def suggest_lr_x(trial: optuna.Trial) -> None:
        trial.suggest_float("lr", AUTOHYPER_LR.low, AUTOHYPER_LR.high, log=True)
        trial.suggest_float("x", X.low, X.high)

    results["AutoHyperSampler"] = _measure(
        [
            (
                "AutoHyperSampler",
                lambda: _sampler_decision(
                    _load(url, f"autohyper-{n}", sampler=AutoHyperSampler(save_plot=False)),
                    suggest_lr_x,
                    0.0,
                ),
            ),
            (
                "TPESampler",
                lambda: _sampler_decision(
                    _load(url, f"autohyper-{n}", sampler=optuna.samplers.TPESampler(seed=0)),
                    suggest_lr_x,
                    0.0,
                ),
            ),
        ],
        repeats,
    )

    # Hyperdyn against TPE.
    fill(f"hyperdyn-{n}", hyperdyn_trials(n, rng))
    epoch = next_epoch(n)

    def suggest_epoch(trial: optuna.Trial) -> None:
        trial.suggest_float("epoch", epoch, epoch)
        trial.suggest_float("lr", LR.low, LR.high, log=True)
        trial.suggest_float("momentum", MOMENTUM.low, MOMENTUM.high)

    results["HyperdynSampler"] = _measure(
        [
            (
                "HyperdynSampler",
                lambda: _sampler_decision(
                    _load(url, f"hyperdyn-{n}", sampler=HyperdynSampler(seed=0)),
                    suggest_epoch,
                    0.0,
                ),
            ),
            (
                "TPESampler",
                lambda: _sampler_decision(
                    _load(url, f"hyperdyn-{n}", sampler=optuna.samplers.TPESampler(seed=0)),
                    suggest_epoch,
                    0.0,
                ),
            ),
        ],
        repeats,
    )

    # PBT against TPE.
    fill(f"pbt-{n}", pbt_trials(n, rng))

    def suggest_lr(trial: optuna.Trial) -> None:
        trial.suggest_float("lr", LR.low, LR.high, log=True)

    results["PBTSampler"] = _measure(
        [
            (
                "PBTSampler",
                lambda: _sampler_decision(
                    _load(url, f"pbt-{n}", sampler=PBTSampler(population_size=POPULATION, seed=0)),
                    suggest_lr,
                    1e6,
                ),
            ),
            (
                "TPESampler",
                lambda: _sampler_decision(
                    _load(url, f"pbt-{n}", sampler=optuna.samplers.TPESampler(seed=0)),
                    suggest_lr,
                    0.0,
                ),
            ),
        ],
        repeats,
    )

    # The pruners against successive halving, all on one study.
    hyperband = MORLHyperbandPruner(
        max_resource=MAX_RESOURCE, min_resource=1, reduction_factor=ETA
    )
    name = f"rungs-{n}"
    fill(
        name,
        rung_trials(n, rng, hyperband, name),
        {BOUNDARIES_KEY: list(RUNG_ENDS), BRACKETS_KEY: [list(b) for b in hyperband.brackets]},
    )

    def first_end(pruner: MORLHyperbandPruner) -> Callable[[optuna.Trial], int]:
        def report_to(trial: optuna.Trial) -> int:
            return pruner.boundaries_for(trial)[0]

        return report_to

    sha = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=ETA)
    results["MORLPruner"] = _measure(
        [
            (
                "MORLPruner",
                lambda: _pruner_decision(
                    _load(url, name, pruner=MORLPruner(max_resource=MAX_RESOURCE, min_resource=1)),
                    lambda trial: 1,
                ),
            ),
            (
                "SuccessiveHalvingPruner",
                lambda: _pruner_decision(_load(url, name, pruner=sha), lambda trial: 1),
            ),
        ],
        repeats,
    )
    hb = MORLHyperbandPruner(max_resource=MAX_RESOURCE, min_resource=1, reduction_factor=ETA)
    results["MORLHyperbandPruner"] = _measure(
        [
            (
                "MORLHyperbandPruner",
                lambda: _pruner_decision(_load(url, name, pruner=hb), first_end(hb)),
            ),
            (
                "SuccessiveHalvingPruner",
                lambda: _pruner_decision(_load(url, name, pruner=sha), lambda trial: 1),
            ),
        ],
        repeats,
    )

    # SynchronousMORL's scheduling step against successive halving, on its own study.
    sync_trials, n_brackets = synchronous_trials(n, rng)
    store = tempfile.mkdtemp(prefix="bench-decision-")
    runner = SynchronousMORL(
        max_resource=MAX_RESOURCE,
        n_configs=SYNC_CONFIGS,
        min_resource=1,
        artifact_store=FileSystemArtifactStore(store),
    )
    fill(f"synchronous-{n}", sync_trials, {SYNC_LAYOUT_KEY: runner._layout})

    def scheduling_step() -> Decision:
        study = _load(url, f"synchronous-{n}")

        def decide() -> None:
            views = runner._views(study, study.get_trials(deepcopy=False), n_brackets)
            unit = runner._next_unit(study, views, None)
            assert unit is not None and unit[0].rung == 1, unit

        return decide

    results["SynchronousMORL"] = _measure(
        [
            ("SynchronousMORL", scheduling_step),
            (
                "SuccessiveHalvingPruner",
                lambda: _pruner_decision(
                    _load(url, f"synchronous-{n}", pruner=sha), lambda t: 1, ask=False
                ),
            ),
        ],
        repeats,
    )
    results["_fill_seconds"] = fill_seconds
    return results


# -- the report -----------------------------------------------------------------------------------


BASELINES = {
    "AutoHyperSampler": "TPESampler",
    "HyperdynSampler": "TPESampler",
    "PBTSampler": "TPESampler",
    "MORLPruner": "SuccessiveHalvingPruner",
    "MORLHyperbandPruner": "SuccessiveHalvingPruner",
    "SynchronousMORL": "SuccessiveHalvingPruner",
}
WHAT = {
    "AutoHyperSampler": "ask + suggest (replay of the search)",
    "HyperdynSampler": "ask + suggest (GP proposal for the next epoch)",
    "PBTSampler": "ask + suggest (next generation's first slot)",
    "MORLPruner": "should_prune at the first rung end",
    "MORLHyperbandPruner": "should_prune at the bracket's first rung end",
    "SynchronousMORL": "one scheduling step",
}


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _table(results: dict[str, Any], sizes: list[int], key: str, cold_key: str) -> list[str]:
    lo, hi = str(sizes[0]), str(sizes[-1])
    lines = [
        "| method | decision | "
        + " | ".join(f"n = {n:,}" for n in sizes)
        + f" | growth {lo} to {hi} | cold at n = {hi} |",
        "|---|---|" + "---:|" * len(sizes) + "---:|---:|",
    ]
    for method, baseline in BASELINES.items():
        for name in (method, baseline):
            cells = [_ms(results[str(n)][method][name][key]) for n in sizes]
            growth = results[hi][method][name][key] / results[lo][method][name][key]
            cold = results[hi][method][name][cold_key]
            label = name if name == method else f"{name} (same study)"
            what = WHAT[method] if name == method else ""
            lines.append(
                f"| {label} | {what} | " + " | ".join(cells) + f" | {growth:.1f}x | {_ms(cold)} |"
            )
    return lines


def _growths(results: dict[str, Any], sizes: list[int], key: str) -> list[str]:
    lo, hi = str(sizes[0]), str(sizes[-1])
    lines = []
    for method, baseline in BASELINES.items():
        ours = results[hi][method][method][key] / results[lo][method][method][key]
        theirs = results[hi][method][baseline][key] / results[lo][method][baseline][key]
        lines.append(
            f"- {method}: {ours:.1f}x against {baseline}'s {theirs:.1f}x ({ours / theirs:.2f})"
        )
    return lines


def report(results: dict[str, Any], sizes: list[int], command: str, machine: str) -> str:
    lo, hi = str(sizes[0]), str(sizes[-1])
    lines = [
        "# Decision time against the size of the study (PostgreSQL)",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine}",
        "",
        "Medians of the warm decisions, ours and the baseline interleaved on the same study;"
        f" growth = median at n = {hi} / median at n = {lo}; cold = the first decision of a"
        " fresh storage object (every trial read from the database).",
        "",
        "## CPU time of the deciding process",
        "",
        "The decision's own work (Python and the database client; the database server's time"
        " is not in it), the least of the repeats: the load of other jobs on the machine only"
        " ever adds to it, so this is the measure to judge the growth by.",
        "",
        *_table(results, sizes, "min_cpu", "cold_cpu"),
        "",
        "Growth against the baseline's (CPU; below 1: grows more slowly than the baseline):",
        "",
        *_growths(results, sizes, "min_cpu"),
        "",
        "## Wall-clock time",
        "",
        "What a worker waits, database round trips included. The machine was loaded: compare"
        " the two rows of a pair and the growth ratios, not the absolute values.",
        "",
        *_table(results, sizes, "median", "cold"),
        "",
        "Growth against the baseline's (wall clock):",
        "",
        *_growths(results, sizes, "median"),
    ]
    fills = ", ".join(f"{results[str(n)]['_fill_seconds']:.1f} s at n = {n:,}" for n in sizes)
    lines += ["", f"Filling the studies took {fills}.", ""]
    return "\n".join(lines)


def _machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"optuna {optuna.__version__}, torch {torch.__version__}, PostgreSQL via psycopg 3, "
        f"load average {load:.1f} at the start (the machine was shared with other jobs), "
        f"run under `nice -n 10`, {datetime.date.today().isoformat()}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--server", default=os.environ.get("OPTUNA_EXT_TEST_POSTGRES_URL", DEFAULT_SERVER)
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--out", default=str(_RESULTS_DIR / "decision_time"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    command = "python -m benchmarks.bench_decision_time " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:]) if "://" not in a
    )
    machine = _machine()
    server = sqlalchemy.engine.make_url(args.server)
    name = f"optuna_ext_bench_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    url = server.set(database=name).render_as_string(hide_password=False)
    results: dict[str, Any] = {}
    try:
        optuna.storages.RDBStorage(url).engine.dispose()  # create the tables
        engine = sqlalchemy.create_engine(url)
        for n in sorted(args.sizes):
            print(f"n = {n} ...", flush=True)
            results[str(n)] = run_size(url, engine, n, args.repeats)
            for method, pairs in results[str(n)].items():
                if method.startswith("_"):
                    continue
                print(
                    "  "
                    + ", ".join(
                        f"{k}: {_ms(v['median'])}, cpu {_ms(v['median_cpu'])} "
                        f"(cold {_ms(v['cold'])})"
                        for k, v in pairs.items()
                    ),
                    flush=True,
                )
        engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()
    sizes = sorted(args.sizes)
    text = report(results, sizes, command.strip(), machine)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(
        json.dumps({"command": command.strip(), "machine": machine, "results": results}, indent=1)
    )


if __name__ == "__main__":
    main()
