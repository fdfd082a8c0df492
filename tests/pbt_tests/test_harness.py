"""Tests of the PBT harness in one process: checkpoints, failures, retention, lineage."""

from __future__ import annotations

from collections.abc import Callable
import datetime
import json
import math
import os
from pathlib import Path
import threading
import time
from typing import Any

import numpy as np
import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import FrozenTrial
from optuna.trial import TrialState
from optuna_dashboard._custom_plot_data import get_plotly_graph_objects
import pytest
import torch

from optuna_ext._checkpoint import load_checkpoint
import optuna_ext.pbt
from optuna_ext.pbt import PopulationFailedError
from optuna_ext.samplers._pbt import PBTSampler
from optuna_ext.samplers._pbt._population import CHECKPOINT_KEY
from optuna_ext.samplers._pbt._population import DECISION_KEY
from optuna_ext.samplers._pbt._population import FAILED_KEY
from optuna_ext.samplers._pbt._population import GENERATION_KEY
from optuna_ext.samplers._pbt._population import INTERRUPTED_KEY
from optuna_ext.samplers._pbt._population import MEMBER_KEY
from optuna_ext.samplers._pbt._population import needed_checkpoint_trials
from optuna_ext.samplers._pbt._population import Population


optuna.logging.set_verbosity(optuna.logging.ERROR)

_X = torch.linspace(-1.0, 1.0, 32).reshape(-1, 1)
_Y = 3.0 * _X - 0.5


def _slot(trial: optuna.Trial | FrozenTrial) -> tuple[int, int]:
    if isinstance(trial, optuna.Trial):
        attrs = trial.study._storage.get_trial_system_attrs(trial._trial_id)
    else:
        attrs = trial.system_attrs
    return int(attrs[GENERATION_KEY]), int(attrs[MEMBER_KEY])


def linear_segment(
    fail_at: Callable[[int, int], bool] = lambda g, m: False,
) -> Callable[[optuna.Trial, dict[str, Any]], float]:
    """Train a 1-D linear regression with SGD for 5 steps; count the steps in the state."""

    def segment(trial: optuna.Trial, state: dict[str, Any]) -> float:
        lr = trial.suggest_float("lr", 1e-3, 0.5, log=True)
        model = torch.nn.Linear(1, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.5)
        with torch.no_grad():
            model.weight.zero_()
            model.bias.zero_()
        optuna_ext.pbt.load_training_state(state, model, optimizer)
        if fail_at(*_slot(trial)):
            raise RuntimeError(f"segment failure at {_slot(trial)}")
        for _ in range(5):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(_X), _Y)
            torch.autograd.backward(loss)
            optimizer.step()
        steps = int(state.get("steps", 0)) + 5
        optuna_ext.pbt.store_training_state(state, model, optimizer, steps=steps)
        trial.set_user_attr("steps", steps)
        with torch.no_grad():
            return -float(torch.nn.functional.mse_loss(model(_X), _Y))

    return segment


def _study(population_size: int = 4, **kwargs: Any) -> optuna.Study:
    sampler = PBTSampler(population_size=population_size, seed=0, **kwargs)
    return optuna.create_study(sampler=sampler, direction="maximize")


def _members(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if GENERATION_KEY in t.system_attrs]


def _complete_by_generation(study: optuna.Study) -> dict[int, list[FrozenTrial]]:
    out: dict[int, list[FrozenTrial]] = {}
    for t in _members(study):
        if t.state == TrialState.COMPLETE:
            out.setdefault(_slot(t)[0], []).append(t)
    return out


def test_run_trains_population_from_parent_checkpoints(tmp_path: Path) -> None:
    study = _study()
    store = FileSystemArtifactStore(str(tmp_path))
    checks: list[int] = []

    def check_retention(study: optuna.Study, trial: FrozenTrial) -> None:
        # Every checkpoint a future segment may load must still be readable.
        population = Population(study.get_trials(deepcopy=False), 4)
        for number in needed_checkpoint_trials(population):
            artifact_id = population.by_number[number].system_attrs[CHECKPOINT_KEY]
            load_checkpoint(artifact_store=store, artifact_id=artifact_id)
            checks.append(number)

    result = optuna_ext.pbt.run(
        study, linear_segment(), n_generations=4, artifact_store=store, callbacks=[check_retention]
    )
    assert result.finished and result.n_segments == 16
    assert checks
    by_generation = _complete_by_generation(study)
    assert sorted(by_generation) == [0, 1, 2, 3]
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    for g, trials in by_generation.items():
        assert sorted(_slot(t)[1] for t in trials) == [0, 1, 2, 3]
        for t in trials:
            # Each segment continued from its parent's checkpoint: 5 more steps each time.
            assert t.user_attrs["steps"] == 5 * (g + 1)
            parent = t.system_attrs[DECISION_KEY]["parent"]
            assert t.user_attrs["pbt:restored_from"] == parent
            if g > 0:
                assert _slot(by_number[parent])[0] == g - 1
    # Only the last generation's checkpoints are left in the store.
    assert len(os.listdir(tmp_path)) == 4
    last = {t.system_attrs[CHECKPOINT_KEY] for t in by_generation[3]}
    assert set(os.listdir(tmp_path)) == last
    # The best member and its lineage.
    assert result.best_trial is not None
    assert result.best_trial.value == max(t.value for t in by_generation[3])  # type: ignore[type-var]
    assert [_slot(t)[0] for t in result.lineage] == [0, 1, 2, 3]
    schedule = result.schedule()
    assert [s["trial"] for s in schedule] == [t.number for t in result.lineage]
    assert schedule[-1]["params"] == result.best_trial.params
    text = result.format_lineage()
    assert len(text.splitlines()) == 5 and f"{result.best_trial.number:>5}" in text


def test_dashboard_figures_are_saved_under_fixed_ids(tmp_path: Path) -> None:
    study = _study()
    optuna_ext.pbt.run(
        study,
        linear_segment(),
        n_generations=3,
        artifact_store=FileSystemArtifactStore(str(tmp_path)),
    )
    figures = get_plotly_graph_objects(study._storage.get_study_system_attrs(study._study_id))
    assert set(figures) == {optuna_ext.pbt.LINEAGE_PLOT_ID, optuna_ext.pbt.SCHEDULE_PLOT_ID}
    lineage = json.loads(figures[optuna_ext.pbt.LINEAGE_PLOT_ID])
    names = [trace.get("name") for trace in lineage["data"]]
    assert "segment" in names and "best member's lineage" in names
    markers = next(t for t in lineage["data"] if t.get("name") == "segment")
    assert len(markers["x"]) == 12
    schedule = json.loads(figures[optuna_ext.pbt.SCHEDULE_PLOT_ID])
    assert [t["x"] for t in schedule["data"]][0] == [0, 1, 2]
    # Saving again replaces the figures instead of adding new ones.
    optuna_ext.pbt.save_dashboard_plots(study)
    again = get_plotly_graph_objects(study._storage.get_study_system_attrs(study._study_id))
    assert set(again) == set(figures)


def test_failing_segment_fails_its_member_and_the_population_goes_on(tmp_path: Path) -> None:
    study = _study()
    result = optuna_ext.pbt.run(
        study,
        linear_segment(fail_at=lambda g, m: (g, m) == (1, 2)),
        n_generations=3,
        artifact_store=FileSystemArtifactStore(str(tmp_path)),
    )
    assert result.finished
    failed = [t for t in _members(study) if t.state == TrialState.FAIL]
    assert len(failed) == 1 and _slot(failed[0]) == (1, 2)
    assert failed[0].system_attrs[FAILED_KEY] is True
    assert "segment failure at (1, 2)" in failed[0].user_attrs["pbt:error"]
    by_generation = _complete_by_generation(study)
    assert [len(by_generation[g]) for g in range(3)] == [4, 3, 4]
    replacement = next(t for t in by_generation[2] if _slot(t)[1] == 2)
    decision = replacement.system_attrs[DECISION_KEY]
    assert decision["action"] == "exploit" and decision["clone_member"] != 2


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_score_fails_the_member(tmp_path: Path, bad: float) -> None:
    segment = linear_segment()

    def nan_segment(trial: optuna.Trial, state: dict[str, Any]) -> float:
        value = segment(trial, state)
        return bad if _slot(trial) == (0, 1) else value

    study = _study()
    result = optuna_ext.pbt.run(
        study, nan_segment, n_generations=2, artifact_store=FileSystemArtifactStore(str(tmp_path))
    )
    assert result.finished
    failed = [t for t in _members(study) if t.state == TrialState.FAIL]
    assert [_slot(t) for t in failed] == [(0, 1)]
    assert "finite" in failed[0].user_attrs["pbt:error"]


def test_every_member_failing_stops_the_run_until_fixed(tmp_path: Path) -> None:
    study = _study()
    store = FileSystemArtifactStore(str(tmp_path))
    with pytest.raises(PopulationFailedError, match="generation 1"):
        optuna_ext.pbt.run(
            study,
            linear_segment(fail_at=lambda g, m: g == 1),
            n_generations=3,
            artifact_store=store,
        )
    # Fixed: the members retry generation 1's segments as generation 2.
    result = optuna_ext.pbt.run(study, linear_segment(), n_generations=3, artifact_store=store)
    assert result.finished
    retries = _complete_by_generation(study)[2]
    assert len(retries) == 4
    for t in retries:
        assert t.system_attrs[DECISION_KEY]["action"] == "retry"
        # Restored from the generation-0 checkpoint the failed segment started from.
        assert t.user_attrs["steps"] == 10


def _damage_after_generation(
    store_dir: Path, generation: int, member: int, how: str
) -> Callable[[optuna.Study, FrozenTrial], None]:
    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        if _slot(trial) != (generation, member):
            return
        path = store_dir / trial.system_attrs[CHECKPOINT_KEY]
        if how == "corrupt":
            path.write_bytes(b"not a checkpoint")
        else:
            path.unlink()

    return callback


@pytest.mark.parametrize("how", ["corrupt", "missing"])
@pytest.mark.parametrize("mode", ["ancestor", "scratch", "fail"])
def test_bad_parent_checkpoint(tmp_path: Path, how: str, mode: str) -> None:
    study = _study(population_size=2, quantile_fraction=0.0)
    result = optuna_ext.pbt.run(
        study,
        linear_segment(),
        n_generations=3,
        artifact_store=FileSystemArtifactStore(str(tmp_path)),
        on_checkpoint_error=mode,  # type: ignore[arg-type]
        remove_checkpoints=False,
        callbacks=[_damage_after_generation(tmp_path, 1, 0, how)],
    )
    assert result.finished
    # quantile_fraction=0: member 0 continues from its own (damaged) generation-1 checkpoint.
    child = next(t for t in _members(study) if _slot(t) == (2, 0))
    parent = next(t for t in _members(study) if _slot(t) == (1, 0))
    grandparent = next(t for t in _members(study) if _slot(t) == (0, 0))
    if mode == "fail":
        assert child.state == TrialState.FAIL
        assert parent.system_attrs[CHECKPOINT_KEY] in child.user_attrs["pbt:error"]
        return
    assert child.state == TrialState.COMPLETE
    message = child.user_attrs["pbt:checkpoint_error"]
    assert parent.system_attrs[CHECKPOINT_KEY] in message
    assert ("corrupt" if how == "corrupt" else "cannot be read") in message
    if mode == "ancestor":
        assert child.user_attrs["pbt:restored_from"] == grandparent.number
        assert child.user_attrs["steps"] == 10
    else:
        assert child.user_attrs["pbt:restored_from"] is None
        assert child.user_attrs["steps"] == 5


def test_interrupted_segment_is_run_again(tmp_path: Path) -> None:
    segment = linear_segment()
    calls = {"n": 0}

    def interrupted_once(trial: optuna.Trial, state: dict[str, Any]) -> float:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return segment(trial, state)

    study = _study()
    store = FileSystemArtifactStore(str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        optuna_ext.pbt.run(study, interrupted_once, n_generations=2, artifact_store=store)
    interrupted = [t for t in _members(study) if t.state == TrialState.FAIL]
    assert len(interrupted) == 1
    assert interrupted[0].system_attrs[INTERRUPTED_KEY] is True
    assert FAILED_KEY not in interrupted[0].system_attrs
    result = optuna_ext.pbt.run(study, interrupted_once, n_generations=2, artifact_store=store)
    assert result.finished
    by_generation = _complete_by_generation(study)
    assert [len(by_generation[g]) for g in (0, 1)] == [4, 4]
    rerun = next(t for t in by_generation[0] if _slot(t) == _slot(interrupted[0]))
    assert rerun.number > interrupted[0].number
    assert rerun.system_attrs[DECISION_KEY] == interrupted[0].system_attrs[DECISION_KEY]


def test_n_segments_stops_and_a_second_call_resumes(tmp_path: Path) -> None:
    study = _study()
    store = FileSystemArtifactStore(str(tmp_path))
    first = optuna_ext.pbt.run(
        study, linear_segment(), n_generations=2, artifact_store=store, n_segments=3
    )
    assert not first.finished and first.n_segments == 3
    second = optuna_ext.pbt.run(study, linear_segment(), n_generations=2, artifact_store=store)
    assert second.finished and second.n_segments == 5
    assert len([t for t in _members(study) if t.state == TrialState.COMPLETE]) == 8


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_generations": 0}, "n_generations"),
        ({"timeout": 0.0}, "timeout"),
        ({"n_segments": 0}, "n_segments"),
        ({"poll_interval": 0.0}, "poll_interval"),
        ({"on_checkpoint_error": "ignore"}, "on_checkpoint_error"),
    ],
)
def test_invalid_run_arguments(tmp_path: Path, kwargs: dict[str, Any], match: str) -> None:
    arguments: dict[str, Any] = {"n_generations": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        optuna_ext.pbt.run(
            _study(),
            linear_segment(),
            artifact_store=FileSystemArtifactStore(str(tmp_path)),
            **arguments,
        )


def test_run_needs_a_pbt_sampler(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="PBTSampler"):
        optuna_ext.pbt.run(
            optuna.create_study(),
            linear_segment(),
            n_generations=2,
            artifact_store=FileSystemArtifactStore(str(tmp_path)),
        )


def test_resume_with_a_smaller_population_is_refused(tmp_path: Path) -> None:
    study = _study(population_size=4)
    store = FileSystemArtifactStore(str(tmp_path))
    optuna_ext.pbt.run(study, linear_segment(), n_generations=1, artifact_store=store)
    study.sampler = PBTSampler(population_size=2)
    with pytest.raises(ValueError, match="population_size"):
        optuna_ext.pbt.run(study, linear_segment(), n_generations=2, artifact_store=store)


def test_load_training_state_keeps_the_new_hyperparameters() -> None:
    model = torch.nn.Linear(2, 1)
    old = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    torch.autograd.backward(model(torch.ones(3, 2)).sum())
    old.step()
    state: dict[str, Any] = {}
    optuna_ext.pbt.store_training_state(state, model, old, epochs=3)
    clone = torch.nn.Linear(2, 1)
    new = torch.optim.SGD(clone.parameters(), lr=0.01, momentum=0.1)
    assert optuna_ext.pbt.load_training_state(state, clone, new)
    assert new.param_groups[0]["lr"] == 0.01 and new.param_groups[0]["momentum"] == 0.1
    assert torch.equal(clone.weight, model.weight)
    buffer = new.state[new.param_groups[0]["params"][0]]["momentum_buffer"]
    assert torch.equal(buffer, old.state[old.param_groups[0]["params"][0]]["momentum_buffer"])
    assert not optuna_ext.pbt.load_training_state({}, clone, new)


# ----------------------------------------------------------------------------------------------
# A toy problem whose best learning rate drops by a decade every 10 generations.

PHASE = 10


def _best_log_lr(generation: int) -> float:
    return -1.0 - generation // PHASE


def _toy_segment(trial: optuna.Trial, state: dict[str, Any]) -> float:
    generation = _slot(trial)[0]
    lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
    gain = math.exp(-((math.log10(lr) - _best_log_lr(generation)) ** 2) / (2 * 0.5**2))
    # Recent gains weigh most, as the accuracy of a network reflects its recent training.
    state["score"] = 0.5 * float(state.get("score", 0.0)) + gain
    return float(state["score"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_population_tracks_a_moving_optimum(tmp_path: Path, seed: int) -> None:
    sampler = PBTSampler(
        population_size=4, quantile_fraction=0.5, perturbation_factors=(2.0, 0.5), seed=seed
    )
    study = optuna.create_study(sampler=sampler, direction="maximize")
    result = optuna_ext.pbt.run(
        study,
        _toy_segment,
        n_generations=3 * PHASE,
        artifact_store=FileSystemArtifactStore(str(tmp_path)),
        save_plots=False,
    )
    log_lrs = [math.log10(s["params"]["lr"]) for s in result.schedule()]
    assert len(log_lrs) == 3 * PHASE
    # At the end of each phase the best member's rate is within half a decade of the optimum.
    for end in (PHASE - 1, 2 * PHASE - 1, 3 * PHASE - 1):
        assert abs(log_lrs[end] - _best_log_lr(end)) < 0.5, (end, log_lrs)
    # The schedule falls with the optimum (phase means, 1e-1 -> 1e-2 -> 1e-3).
    means = [float(np.mean(log_lrs[k * PHASE + 5 : (k + 1) * PHASE])) for k in range(3)]
    assert means[0] > means[1] > means[2]


# ----------------------------------------------------------------------------------------------
# Several workers in one process (threads on an in-memory storage): the claims must still be
# exclusive. The multi-process tests on real databases are in test_workers.py.


def _sleepy_segment(seconds: Callable[[int, int], float]) -> Callable[..., float]:
    segment = linear_segment()

    def sleepy(trial: optuna.Trial, state: dict[str, Any]) -> float:
        time.sleep(seconds(*_slot(trial)))
        trial.set_user_attr("thread", threading.get_ident())
        return segment(trial, state)

    return sleepy


def _run_threads(study: optuna.Study, segment: Callable[..., float], store_dir: Path) -> None:
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            optuna_ext.pbt.run(
                study,
                segment,
                n_generations=4,
                artifact_store=FileSystemArtifactStore(str(store_dir)),
                poll_interval=0.01,
                save_plots=False,
            )
        except BaseException as e:  # pragma: no cover (reported below)
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors


def _assert_one_complete_per_slot(study: optuna.Study, n_generations: int) -> None:
    complete = [t for t in _members(study) if t.state == TrialState.COMPLETE]
    slots = [_slot(t) for t in complete]
    assert len(slots) == len(set(slots))
    assert set(slots) == {(g, m) for g in range(n_generations) for m in range(4)}
    for t in complete:
        assert t.user_attrs["steps"] == 5 * (_slot(t)[0] + 1)


def _start(trial: FrozenTrial) -> datetime.datetime:
    assert trial.datetime_start is not None
    return trial.datetime_start


def _end(trial: FrozenTrial) -> datetime.datetime:
    assert trial.datetime_complete is not None
    return trial.datetime_complete


def test_threads_share_a_synchronous_population(tmp_path: Path) -> None:
    study = _study()
    _run_threads(study, _sleepy_segment(lambda g, m: 0.01 * (m + 1)), tmp_path)
    _assert_one_complete_per_slot(study, 4)
    complete = [t for t in _members(study) if t.state == TrialState.COMPLETE]
    assert len({t.user_attrs["thread"] for t in complete}) > 1
    # Synchronous: no segment of generation g + 1 started before generation g had finished.
    for g in range(1, 4):
        ends = [_end(t) for t in complete if _slot(t)[0] == g - 1]
        starts = [_start(t) for t in complete if _slot(t)[0] == g]
        assert min(starts) >= max(ends)


def test_threads_run_an_asynchronous_population(tmp_path: Path) -> None:
    study = _study(synchronous=False)
    # Member 3 is much slower than the others: they must not wait for it every generation.
    _run_threads(study, _sleepy_segment(lambda g, m: 0.25 if m == 3 else 0.01), tmp_path)
    _assert_one_complete_per_slot(study, 4)
    complete = [t for t in _members(study) if t.state == TrialState.COMPLETE]
    slow_first = next(t for t in complete if _slot(t) == (0, 3))
    ahead = [t for t in complete if _slot(t)[0] == 1 and _slot(t)[1] != 3]
    assert min(_start(t) for t in ahead) < _end(slow_first)
