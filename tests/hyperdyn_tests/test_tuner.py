from __future__ import annotations

from collections.abc import Callable
import math
import os
import subprocess
import sys
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.artifacts import get_all_artifact_meta
from optuna.distributions import CategoricalDistribution
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from optuna_dashboard._named_objectives import get_objective_names
import pytest
import torch
from torch import nn

from optuna_ext._checkpoint import CheckpointError
from optuna_ext._checkpoint import load_checkpoint
from optuna_ext._checkpoint import MemoryArtifactStore
from optuna_ext._gp.box import UnitBox
from optuna_ext.hyperdyn import check_accuracy_trend
from optuna_ext.hyperdyn import HyperdynTuner
from optuna_ext.hyperdyn import keep_probability
from optuna_ext.hyperdyn import PLOT_ID
from optuna_ext.hyperdyn._tuner import CONFIG_KEY
from optuna_ext.hyperdyn._tuner import EPOCH_KEY_PREFIX
from optuna_ext.optim import AdamHD
from optuna_ext.optim import SGDHD
from tests.hyperdyn_tests import _toy


optuna.logging.set_verbosity(optuna.logging.WARNING)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _study(storage: str | None = None, **kwargs: Any) -> optuna.Study:
    return optuna.create_study(
        direction="maximize",
        sampler=kwargs.pop("sampler", None) or _toy.cheap_sampler(),
        storage=storage,
        **kwargs,
    )


def _records(study: optuna.Study) -> list[dict[str, Any]]:
    attrs = study._storage.get_study_system_attrs(study._study_id)
    out = []
    t = 0
    while f"{EPOCH_KEY_PREFIX}{t}" in attrs:
        out.append(attrs[f"{EPOCH_KEY_PREFIX}{t}"])
        t += 1
    return out


def _lead(study: optuna.Study, record: dict[str, Any]) -> float:
    """The incumbent's accuracy minus the proposal's in an epoch, from the epoch's trials."""
    by_role = {
        study.trials[n].user_attrs["hyperdyn:role"]: study.trials[n].user_attrs
        for n in record["candidates"]
    }
    return by_role["incumbent"]["hyperdyn:accuracy"] - by_role["proposal"]["hyperdyn:accuracy"]


def test_run_records_every_candidate_as_a_trial() -> None:
    study = _study()
    store = MemoryArtifactStore()
    tuner, model, _ = _toy.make_tuner(study, store)
    result = tuner.run(epochs=5)

    trials = study.trials
    assert len(trials) == 3 + 2 * 4  # Random-Start k=3, then incumbent + proposal per epoch
    assert all(t.state == TrialState.COMPLETE for t in trials)
    roles = [t.user_attrs["hyperdyn:role"] for t in trials]
    assert roles[:3] == ["random-start"] * 3
    assert sorted(roles[3:]) == ["incumbent"] * 4 + ["proposal"] * 4
    assert result.epochs == 5 and len(result.lrs) == 5

    records = _records(study)
    previous = result.initial_accuracy
    for t, record in enumerate(records):
        epoch_trials = [x for x in trials if x.user_attrs["hyperdyn:epoch"] == t]
        assert {x.number for x in epoch_trials} == set(record["candidates"])
        for x in epoch_trials:
            assert x.params["epoch"] == float(t)
            # The value is the paper's acc_diff, in percentage points (metric_scale=100).
            assert x.value == pytest.approx(100.0 * (x.user_attrs["hyperdyn:accuracy"] - previous))
        kept = [x for x in epoch_trials if x.user_attrs["hyperdyn:kept"]]
        assert [x.number for x in kept] == [record["kept_trial"]]
        assert kept[0].user_attrs["hyperdyn:accuracy"] == record["accuracy"]
        assert {k: kept[0].params[k] for k in record["params"]} == record["params"]
        if t == 0:  # Random-Start keeps the best candidate
            assert record["accuracy"] == max(
                x.user_attrs["hyperdyn:accuracy"] for x in epoch_trials
            )
        else:
            incumbent = next(
                x for x in epoch_trials if x.user_attrs["hyperdyn:role"] == "incumbent"
            )
            assert {k: incumbent.params[k] for k in record["params"]} == records[t - 1]["params"]
        metas = get_all_artifact_meta(kept[0], storage=study._storage)
        assert [m.artifact_id for m in metas] == [record["checkpoint"]]
        previous = record["accuracy"]

    # The model holds the last checkpoint's weights.
    state = load_checkpoint(artifact_store=store, artifact_id=records[-1]["checkpoint"])
    for key, value in model.state_dict().items():
        assert torch.equal(value, state["model"][key])
    assert _toy.evaluate(model) == result.accuracy[-1]


def test_decisions_follow_check_accuracy_trend() -> None:
    study = _study()
    tuner, _, _ = _toy.make_tuner(study, MemoryArtifactStore(), window=2, offset=0.5)
    result = tuner.run(epochs=8)
    records = _records(study)
    for t in range(1, 8):
        record = records[t]
        keep = check_accuracy_trend(
            result.accuracy[:t], window=2, offset=0.5, metric_scale=100.0, u=record["u"]
        )
        assert record["switched"] == (not keep)
        kept = study.trials[record["kept_trial"]]
        assert kept.user_attrs["hyperdyn:role"] == ("incumbent" if keep else "proposal")
        assert record["last_change"] == max(e for e in range(t + 1) if records[e]["switched"])


def test_compare_decisions_weigh_the_incumbents_lead() -> None:
    study = _study()
    tuner, _, _ = _toy.make_tuner(
        study, MemoryArtifactStore(), window=2, offset=0.5, trend_test="compare"
    )
    result = tuner.run(epochs=5)
    records = _records(study)
    overruled = 0  # epochs where the paper's test would have kept the incumbent
    for t in range(1, 5):
        record = records[t]
        lead = _lead(study, record)
        assert record["lead"] == pytest.approx(lead)
        history = result.accuracy[:t]
        settings: dict[str, Any] = dict(window=2, offset=0.5, metric_scale=100.0)
        keep = check_accuracy_trend(history, lead=lead, u=record["u"], **settings)
        assert record["keep_probability"] == pytest.approx(
            keep_probability(history, lead=lead, **settings)
        )
        assert record["switched"] == (not keep)
        kept = study.trials[record["kept_trial"]]
        assert kept.user_attrs["hyperdyn:role"] == ("incumbent" if keep else "proposal")
        if not keep and check_accuracy_trend(history, u=record["u"], **settings):
            overruled += 1
    # The toy run exercises the variant: the proposal's lead overrules the trend at least once.
    assert overruled >= 1


@pytest.mark.parametrize("trend_test", ["paper", "compare"])
def test_the_switch_guard_refuses_a_proposal_that_scored_far_below(trend_test: str) -> None:
    # A large offset makes the test switch often, also to proposals that did worse.
    settings: dict[str, Any] = dict(window=2, offset=2.0, metric_scale=100.0)
    drop = 0.0  # percentage points: refuse every switch to a proposal that did worse
    study = _study()
    tuner, _, _ = _toy.make_tuner(
        study, MemoryArtifactStore(), max_switch_drop=drop, trend_test=trend_test, **settings
    )
    result = tuner.run(epochs=8)
    records = _records(study)
    assert records[0]["guarded"] is False
    guarded = 0
    for t in range(1, 8):
        record = records[t]
        lead = _lead(study, record)
        history = result.accuracy[:t]
        keep = check_accuracy_trend(
            history,
            lead=lead if trend_test == "compare" else None,
            u=record["u"],
            **settings,
        )
        refused = not keep and 100.0 * lead > drop
        assert record["guarded"] is refused
        assert record["switched"] is (not keep and not refused)
        kept = study.trials[record["kept_trial"]]
        assert kept.user_attrs["hyperdyn:role"] == (
            "proposal" if record["switched"] else "incumbent"
        )
        guarded += refused
    # The toy run exercises the guard: the test alone would have switched to a worse proposal.
    assert guarded >= 1


def test_the_switch_guard_is_part_of_the_stored_settings() -> None:
    study = _study()
    tuner, _, _ = _toy.make_tuner(study, MemoryArtifactStore(), max_switch_drop=5.0)
    tuner.run(epochs=2)
    other, _, _ = _toy.make_tuner(study, MemoryArtifactStore())
    with pytest.raises(ValueError, match="max_switch_drop: stored 5.0, given None"):
        other.run(epochs=3)


def test_paper_test_records_no_lead() -> None:
    study = _study()
    tuner, _, _ = _toy.make_tuner(study, MemoryArtifactStore())
    tuner.run(epochs=3)
    assert [r["lead"] for r in _records(study)] == [None, None, None]


def test_resume_of_a_run_stored_without_trend_test_uses_the_paper_test() -> None:
    study = _study()
    tuner, _, _ = _toy.make_tuner(study, MemoryArtifactStore())
    tuner.run(epochs=2)
    # A study written before the option existed has no `trend_test` in its stored config.
    config = study._storage.get_study_system_attrs(study._study_id)[CONFIG_KEY]
    del config["trend_test"]
    study._storage.set_study_system_attr(study._study_id, CONFIG_KEY, config)
    tuner.run(epochs=3)
    assert len(_records(study)) == 3
    other, _, _ = _toy.make_tuner(study, MemoryArtifactStore(), trend_test="compare")
    with pytest.raises(ValueError, match="trend_test"):
        other.run(epochs=4)


def test_greedy_always_switches_to_the_proposal() -> None:
    study = _study()
    tuner, _, _ = _toy.make_tuner(study, MemoryArtifactStore(), greedy=True)
    result = tuner.run(epochs=4)
    assert all(result.switched)
    for record in _records(study)[1:]:
        assert study.trials[record["kept_trial"]].user_attrs["hyperdyn:role"] == "proposal"


def test_random_factor_keeps_the_best_of_r_random_candidates() -> None:
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    tuner, _, _ = _toy.make_tuner(study, MemoryArtifactStore(), random_factor=4)
    result = tuner.run(epochs=3)
    assert result.n_trained == [3, 4, 4]
    for t, record in enumerate(_records(study)):
        candidates = [study.trials[n] for n in record["candidates"]]
        assert all(
            c.user_attrs["hyperdyn:role"] == ("random-start" if t == 0 else "random")
            for c in candidates
        )
        assert record["accuracy"] == max(c.user_attrs["hyperdyn:accuracy"] for c in candidates)
    # The random draws are the tuner's, identical in a second run with the same seed.
    again = optuna.create_study(direction="maximize")
    tuner2, _, _ = _toy.make_tuner(again, MemoryArtifactStore(), random_factor=4)
    assert tuner2.run(epochs=3).params == result.params


def _lr_tracking_task(
    bad: Callable[[float], bool],
) -> tuple[
    Callable[[nn.Module, torch.optim.Optimizer, int], object], Callable[[nn.Module], float]
]:
    current: dict[str, float] = {"lr": 0.0}  # the initial weights are evaluated untrained

    def train(model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int) -> object:
        current["lr"] = optimizer.param_groups[0]["lr"]
        return _toy.train_epoch(model, optimizer, epoch)

    def evaluate(model: nn.Module) -> float:
        return math.nan if bad(current["lr"]) else _toy.evaluate(model)

    return train, evaluate


def test_nan_evaluation_fails_the_candidate_and_is_never_kept() -> None:
    train, evaluate = _lr_tracking_task(lambda lr: lr > 0.05)
    study = _study()
    tuner, _, _ = _toy.make_tuner(
        study, MemoryArtifactStore(), train=train, evaluate_fn=evaluate, n_random_start=4
    )
    result = tuner.run(epochs=5)
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert failed, "the search space reaches rates above 0.05, some candidates must fail"
    for t in failed:
        assert t.params["lr"] > 0.05
        assert t.user_attrs["hyperdyn:failure"] == "evaluate returned nan"
        assert t.user_attrs["hyperdyn:kept"] is False
    assert all(p["lr"] <= 0.05 for p in result.params)
    assert all(math.isfinite(a) for a in result.accuracy)


def test_all_candidates_failing_raises_and_does_not_commit() -> None:
    train, evaluate = _lr_tracking_task(lambda lr: lr > 0.0)
    study = _study()
    tuner, _, _ = _toy.make_tuner(study, MemoryArtifactStore(), train=train, evaluate_fn=evaluate)
    with pytest.raises(RuntimeError, match="Every candidate of epoch 0 failed"):
        tuner.run(epochs=3)
    assert _records(study) == []
    assert all(t.state == TrialState.FAIL for t in study.trials)


def test_nan_metric_of_the_initial_weights_raises() -> None:
    train, evaluate = _lr_tracking_task(lambda lr: True)
    tuner, _, _ = _toy.make_tuner(
        _study(), MemoryArtifactStore(), train=train, evaluate_fn=evaluate
    )
    with pytest.raises(RuntimeError, match="initial weights"):
        tuner.run(epochs=2)


def test_diverged_training_loss_fails_the_candidate() -> None:
    def train(model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int) -> float:
        _toy.train_epoch(model, optimizer, epoch)
        return math.inf if optimizer.param_groups[0]["lr"] > 0.05 else 1.0

    study = _study()
    tuner, _, _ = _toy.make_tuner(study, MemoryArtifactStore(), train=train, n_random_start=4)
    result = tuner.run(epochs=4)
    assert all(p["lr"] <= 0.05 for p in result.params)
    for t in study.trials:
        if t.state == TrialState.FAIL:
            assert t.user_attrs["hyperdyn:failure"] == "train_epoch returned inf"


def test_non_numeric_metric_raises_type_error() -> None:
    study = _study()
    tuner, _, _ = _toy.make_tuner(
        study,
        MemoryArtifactStore(),
        evaluate_fn=lambda m: "0.5",  # type: ignore[arg-type,return-value]
    )
    with pytest.raises(TypeError, match="must return a float"):
        tuner.run(epochs=2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"window": 0}, "window"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"offset": -0.5}, "offset"),
        ({"metric_scale": 0.0}, "metric_scale"),
        ({"n_random_start": 0}, "n_random_start"),
        ({"random_factor": 0}, "random_factor"),
        ({"greedy": True, "random_factor": 5}, "at most one baseline"),
        ({"trend_test": "trend"}, "trend_test"),
        ({"trend_test": "compare", "greedy": True}, "run no trend test"),
        ({"trend_test": "compare", "random_factor": 5}, "run no trend test"),
        ({"max_switch_drop": -1.0}, "max_switch_drop"),
        ({"max_switch_drop": math.nan}, "max_switch_drop"),
        ({"max_switch_drop": math.inf}, "max_switch_drop"),
        ({"max_switch_drop": True}, "max_switch_drop"),
        ({"max_switch_drop": "5"}, "max_switch_drop"),
        ({"max_switch_drop": 5.0, "greedy": True}, "run no trend test"),
        ({"max_switch_drop": 5.0, "random_factor": 5}, "run no trend test"),
        ({"seed": -1}, "seed"),
        ({"search_space": {"nesterov_lr": FloatDistribution(0.1, 1.0)}}, "no `nesterov_lr`"),
        ({"search_space": {"epoch": FloatDistribution(0.0, 1.0)}}, "time parameter"),
        ({"search_space": {"lr": CategoricalDistribution([0.1, 0.2])}}, "FloatDistribution"),
        ({"search_space": {"lr": FloatDistribution(0.1, 0.1)}}, "more than one value"),
        ({"search_space": {}}, "empty"),
    ],
)
def test_bad_arguments_raise(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _toy.make_tuner(_study(), MemoryArtifactStore(), **kwargs)


def test_the_objective_is_named_acc_diff_for_the_dashboard() -> None:
    study = _study()
    tuner, _, _ = _toy.make_tuner(study, MemoryArtifactStore())
    assert study.metric_names is None
    tuner.run(epochs=1)
    assert study.metric_names == ["acc_diff"]
    # optuna-dashboard reads it from the study's system attrs (instead of "Objective 0").
    attrs = study._storage.get_study_system_attrs(study._study_id)
    assert get_objective_names(attrs) == ["acc_diff"]
    # A name the user chose is kept, on a fresh run and on a resume.
    named = _study()
    named.set_metric_names(["gain"])
    tuner, _, _ = _toy.make_tuner(named, MemoryArtifactStore())
    tuner.run(epochs=1)
    assert named.metric_names == ["gain"]


@pytest.mark.parametrize("optimizer_cls", [SGDHD, AdamHD])
def test_a_hypergradient_optimizer_is_refused(optimizer_cls: type) -> None:
    model = _toy.make_model()
    study = _study()
    with pytest.raises(
        ValueError, match=f"`optimizer` is a {optimizer_cls.__name__}, but Hyperdyn"
    ):
        HyperdynTuner(
            study=study,
            model=model,
            optimizer=optimizer_cls(model.parameters(), lr=0.01),
            train_epoch=_toy.train_epoch,
            evaluate=_toy.evaluate,
            artifact_store=MemoryArtifactStore(),
        )
    assert study.trials == []
    assert study._storage.get_study_system_attrs(study._study_id) == {}


def test_log_bounds_must_be_positive() -> None:
    # Optuna refuses such a distribution when it is built ...
    with pytest.raises(ValueError, match="low > 0"):
        FloatDistribution(0.0, 1.0, log=True)
    # ... and the tuner and the GP's box refuse one whose bounds were changed afterwards.
    lr = FloatDistribution(1e-3, 1.0, log=True)
    lr.low = 0.0
    with pytest.raises(ValueError, match="`0 < low < high`"):
        _toy.make_tuner(_study(), MemoryArtifactStore(), search_space={"lr": lr})
    with pytest.raises(ValueError, match="positive bounds"):
        UnitBox(lows=[0.0], highs=[1.0], logs=[True])


def test_study_must_maximize_with_a_hyperdyn_sampler() -> None:
    with pytest.raises(ValueError, match="maximize"):
        _toy.make_tuner(optuna.create_study(sampler=_toy.cheap_sampler()), MemoryArtifactStore())
    with pytest.raises(ValueError, match="HyperdynSampler"):
        _toy.make_tuner(optuna.create_study(direction="maximize"), MemoryArtifactStore())


def test_epochs_must_be_positive() -> None:
    tuner, _, _ = _toy.make_tuner(_study(), MemoryArtifactStore())
    with pytest.raises(ValueError, match="epochs"):
        tuner.run(epochs=0)


def test_resume_with_other_settings_raises() -> None:
    study = _study()
    tuner, _, _ = _toy.make_tuner(study, MemoryArtifactStore())
    tuner.run(epochs=2)
    other, _, _ = _toy.make_tuner(study, MemoryArtifactStore(), window=3)
    with pytest.raises(ValueError, match="window"):
        other.run(epochs=3)


def test_resume_with_another_artifact_store_names_the_problem() -> None:
    study = _study()
    tuner, _, _ = _toy.make_tuner(study, MemoryArtifactStore())
    tuner.run(epochs=2)
    other, _, _ = _toy.make_tuner(study, MemoryArtifactStore())
    with pytest.raises(CheckpointError, match="store of the earlier run"):
        other.run(epochs=3)


def test_plot_is_saved_for_the_dashboard() -> None:
    study = _study()
    tuner, _, _ = _toy.make_tuner(study, MemoryArtifactStore(), plot=True)
    tuner.run(epochs=3)
    keys = study._storage.get_study_system_attrs(study._study_id)
    assert any(PLOT_ID in key for key in keys)


class _Crash(Exception):
    pass


def test_crash_mid_epoch_resumes_identically(tmp_path: Any) -> None:
    reference_study = _study()
    ref_tuner, ref_model, _ = _toy.make_tuner(reference_study, MemoryArtifactStore())
    reference = ref_tuner.run(epochs=6)

    calls = {"n": 0}

    def crashing_train(model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int) -> object:
        if epoch == 3:
            calls["n"] += 1
            if calls["n"] == 2:  # the second candidate of epoch 3
                raise _Crash
        return _toy.train_epoch(model, optimizer, epoch)

    storage = f"sqlite:///{tmp_path}/crash.db"
    store = FileSystemArtifactStore(str(tmp_path))
    study = _study(storage, study_name="crash")
    tuner, _, _ = _toy.make_tuner(study, store, train=crashing_train)
    with pytest.raises(_Crash):
        tuner.run(epochs=6)
    assert len(_records(study)) == 3
    # A fresh process: new study object, new sampler, a model with other initial weights.
    study = optuna.load_study(study_name="crash", storage=storage, sampler=_toy.cheap_sampler())
    other_model = _toy.make_model()
    with torch.no_grad():
        for p in other_model.parameters():
            p.add_(1.0)
    tuner, model, _ = _toy.make_tuner(study, store, model=other_model)
    resumed = tuner.run(epochs=6)
    assert resumed.params == reference.params
    assert resumed.accuracy == reference.accuracy
    for key, value in ref_model.state_dict().items():
        assert torch.equal(value, model.state_dict()[key])
    stale = [
        t
        for t in study.trials
        if t.user_attrs["hyperdyn:epoch"] == 3 and t.state == TrialState.FAIL
    ]
    assert len(stale) == 2  # the proposal and incumbent trials of the interrupted epoch 3


def test_stale_waiting_trial_is_discarded_on_resume() -> None:
    study = _study()
    store = MemoryArtifactStore()
    tuner, _, _ = _toy.make_tuner(study, store)
    tuner.run(epochs=2)
    # An incumbent trial enqueued by a process that died before asking for it.
    study.enqueue_trial(
        {"epoch": 2.0, "lr": 0.1, "momentum": 0.5}, user_attrs={"hyperdyn:epoch": 2}
    )
    tuner, _, _ = _toy.make_tuner(study, store)
    tuner.run(epochs=3)
    waiting = [t for t in study.trials if t.state == TrialState.WAITING]
    assert waiting == []
    roles = [
        t.user_attrs.get("hyperdyn:role") for t in study.trials if t.state == TrialState.COMPLETE
    ]
    assert roles.count("proposal") == 2 and roles.count("incumbent") == 2


def _run_script(storage: str, artifacts: str, epochs: int, out: str) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO_ROOT)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.hyperdyn_tests._toy",
            "--storage",
            storage,
            "--artifacts",
            artifacts,
            "--epochs",
            str(epochs),
            "--out",
            out,
        ],
        check=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=300,
    )
    return torch.load(out, weights_only=True)


@pytest.mark.slow
def test_restart_from_sqlite_in_a_new_process_ends_identical(tmp_path: Any) -> None:
    """Run 3 epochs in one process, 7 in a second one: identical to 7 uninterrupted epochs."""
    study = _study()
    tuner, model, _ = _toy.make_tuner(study, MemoryArtifactStore())
    whole = tuner.run(epochs=7)  # one torch thread here (conftest) and in the script
    storage = f"sqlite:///{tmp_path}/b.db"
    _run_script(storage, str(tmp_path), 3, str(tmp_path / "part.pt"))
    resumed = _run_script(storage, str(tmp_path), 7, str(tmp_path / "resumed.pt"))
    assert resumed["params"] == [[p[k] for k in sorted(p)] for p in whole.params]
    assert resumed["accuracy"] == whole.accuracy
    assert resumed["switched"] == [float(s) for s in whole.switched]
    for key, value in model.state_dict().items():
        assert torch.equal(value, resumed["weights"][key]), key


def _candidates(study: optuna.Study) -> list[tuple[int, str, dict[str, Any], float | None]]:
    """(epoch, role, params, value) of every candidate that finished, in order."""
    return [
        (t.user_attrs["hyperdyn:epoch"], t.user_attrs["hyperdyn:role"], t.params, t.value)
        for t in study.trials
        if t.state == TrialState.COMPLETE
    ]


@pytest.mark.parametrize("n_told", [1, 2])
def test_crash_while_telling_the_candidates_of_an_epoch_resumes_identically(
    n_told: int,
) -> None:
    # A process that dies after telling some candidates of epoch 3 must not leave COMPLETE
    # trials of an epoch that is then run again: the GP of the later epochs would observe that
    # epoch twice, and the random streams of the redone epoch would shift. The epoch's record
    # is written first, and the next run tells the rest from it.
    settings: dict[str, Any] = dict(window=2, offset=0.5, seed=1)
    reference = _study(sampler=_toy.cheap_sampler(seed=1))
    _toy.make_tuner(reference, MemoryArtifactStore(), **settings)[0].run(epochs=6)
    assert any(r["switched"] for r in _records(reference)[1:])  # the decisions vary

    store = MemoryArtifactStore()
    study = _study(sampler=_toy.cheap_sampler(seed=1))
    tell = study.tell
    told = {"n": 0}

    def crashing_tell(*args: Any, **kwargs: Any) -> optuna.trial.FrozenTrial:
        frozen = tell(*args, **kwargs)
        if frozen.user_attrs["hyperdyn:epoch"] == 3 and frozen.state == TrialState.COMPLETE:
            told["n"] += 1
            if told["n"] == n_told:
                raise _Crash
        return frozen

    study.tell = crashing_tell  # type: ignore[method-assign]
    with pytest.raises(_Crash):
        _toy.make_tuner(study, store, **settings)[0].run(epochs=6)
    running = [t.number for t in study.trials if t.state == TrialState.RUNNING]
    assert len(running) == 2 - n_told
    resumed = optuna.load_study(
        study_name=study.study_name, storage=study._storage, sampler=_toy.cheap_sampler(seed=1)
    )
    result = _toy.make_tuner(resumed, store, **settings)[0].run(epochs=6)
    assert result.params == [r["params"] for r in _records(reference)]
    assert result.accuracy == [r["accuracy"] for r in _records(reference)]
    assert _candidates(resumed) == _candidates(reference)
    assert len(resumed.trials) == len(reference.trials)  # nothing run twice, nothing failed
    for number in running:
        assert resumed.trials[number].user_attrs == reference.trials[number].user_attrs


def test_a_trial_asked_by_a_killed_process_is_discarded_on_resume() -> None:
    # Killed right after `ask` (before the tuner could say what the trial is for): the trial
    # already carries its epoch, so the next run fails it instead of leaving it RUNNING (which
    # would shift the random streams of the candidates asked after it).
    settings: dict[str, Any] = dict(window=2, offset=0.5, seed=1)
    reference = _study(sampler=_toy.cheap_sampler(seed=1))
    _toy.make_tuner(reference, MemoryArtifactStore(), **settings)[0].run(epochs=4)
    store = MemoryArtifactStore()
    study = _study(sampler=_toy.cheap_sampler(seed=1))
    _toy.make_tuner(study, store, **settings)[0].run(epochs=2)
    ask = study.ask

    def crashing_ask(*args: Any, **kwargs: Any) -> optuna.Trial:
        ask(*args, **kwargs)
        raise _Crash

    study.ask = crashing_ask  # type: ignore[method-assign]
    with pytest.raises(_Crash):
        _toy.make_tuner(study, store, **settings)[0].run(epochs=4)
    orphan = study.trials[-1]
    assert orphan.state == TrialState.RUNNING and orphan.user_attrs["hyperdyn:epoch"] == 2
    resumed = optuna.load_study(
        study_name=study.study_name, storage=study._storage, sampler=_toy.cheap_sampler(seed=1)
    )
    result = _toy.make_tuner(resumed, store, **settings)[0].run(epochs=4)
    assert resumed.trials[orphan.number].state == TrialState.FAIL
    assert result.params == [r["params"] for r in _records(reference)]
    assert _candidates(resumed) == _candidates(reference)
