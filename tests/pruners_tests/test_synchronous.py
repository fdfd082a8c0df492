"""Tests of SynchronousMORL, the MORL paper's synchronous protocol (Algorithm 1)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
import inspect
import math
import os
import subprocess
import sys
import textwrap
from typing import Any
from typing import Literal

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.artifacts import get_all_artifact_meta
from optuna.trial import TrialState
import pytest
import torch

from optuna_ext._checkpoint import load_checkpoint
from optuna_ext.pruners import SynchronousMORL
from optuna_ext.pruners import SynchronousRound
from optuna_ext.pruners._synchronous import BRACKET_KEY
from optuna_ext.pruners._synchronous import checkpoint_key
from optuna_ext.pruners._synchronous import CONFIG_KEY
from optuna_ext.pruners._synchronous import LAYOUT_KEY
from optuna_ext.pruners._synchronous import rung_value_key
from optuna_ext.schedules import RecurringLR


Direction = Literal["minimize", "maximize"]
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _quiet_study(direction: Direction = "maximize", seed: int = 0, **kwargs: Any) -> optuna.Study:
    return optuna.create_study(
        direction=direction, sampler=optuna.samplers.RandomSampler(seed=seed), **kwargs
    )


class _Recorder:
    """A train_fn without torch: value = quality(x) * end; records every call."""

    def __init__(self, quality: Callable[[float], float] = lambda x: x) -> None:
        self.calls: list[tuple[int, int, int, int, dict[str, Any] | None]] = []
        self.quality = quality

    def __call__(
        self, trial: optuna.trial.Trial, round_: SynchronousRound
    ) -> tuple[float, dict[str, Any]]:
        x = trial.suggest_float("x", 0.0, 1.0)
        self.calls.append(
            (trial.number, round_.rung, round_.start_epoch, round_.end_epoch, round_.state)
        )
        return self.quality(x) * round_.end_epoch, {"epochs_done": round_.end_epoch}


# --- trial counts per rung: the paper's formula -------------------------------------------------


def _check_counts(
    study: optuna.Study, runner: SynchronousMORL, recorder: _Recorder, n: int, eta: int
) -> None:
    ends = runner.boundaries
    per_round = Counter(rung for _, rung, _, _, _ in recorder.calls)
    # The paper: n configurations, the top 1/eta promoted each round: n_k = floor(n * eta^-k).
    expected = [max(math.floor(n / eta**k), 1) for k in range(len(ends))]
    assert [per_round[k] for k in range(len(ends))] == expected
    assert list(runner.n_configs_per_rung) == expected
    # Each round trains its configurations from the previous rung end to its own.
    for _, rung, start, end, _ in recorder.calls:
        assert (start, end) == ((ends[rung - 1] if rung else 0), ends[rung])
    trials = study.trials
    for k, end in enumerate(ends):
        assert sum(end in t.intermediate_values for t in trials) == expected[k]
        assert sum(rung_value_key(k) in t.system_attrs for t in trials) == expected[k]
    states = Counter(t.state for t in trials)
    assert states[TrialState.COMPLETE] == expected[-1]
    assert states[TrialState.PRUNED] == n - expected[-1]
    assert len(trials) == n
    # The epochs spent, counted from the calls, are the runner's budget.
    assert sum(end - start for _, _, start, end, _ in recorder.calls) == runner.epochs_per_bracket


@pytest.mark.parametrize(
    "n, eta, s_min, r",
    [
        (81, 3, 2, 81),  # the paper's defaults: rungs 9, 27, 81 with 81, 27, 9 configurations
        (30, 3, 1, 27),  # 30, 10, 3
        (20, 2, 0, 16),  # 20, 10, 5, 2, 1
        (17, 4, 0, 16),  # 17, 4, 1
        (5, 3, 0, 27),  # fewer than eta**K: the last rounds keep the best one
    ],
)
def test_trial_counts_per_rung_follow_the_papers_formula(
    n: int, eta: int, s_min: int, r: int
) -> None:
    runner = SynchronousMORL(max_resource=r, n_configs=n, reduction_factor=eta, min_exponent=s_min)
    assert runner.boundaries == tuple(eta**s for s in range(s_min, round(math.log(r, eta)) + 1))
    study = _quiet_study()
    recorder = _Recorder()
    best = runner.optimize(study, recorder)
    _check_counts(study, runner, recorder, n, eta)
    assert best is not None and best.number == study.best_trial.number


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 40),
    eta=st.integers(2, 4),
    s_min=st.integers(0, 2),
    extra=st.integers(0, 2),
    direction=st.sampled_from(["minimize", "maximize"]),
)
def test_trial_counts_for_any_layout(
    n: int, eta: int, s_min: int, extra: int, direction: Direction
) -> None:
    r = eta ** (s_min + extra)
    runner = SynchronousMORL(max_resource=r, n_configs=n, reduction_factor=eta, min_exponent=s_min)
    study = _quiet_study(direction)
    recorder = _Recorder()
    runner.optimize(study, recorder)
    _check_counts(study, runner, recorder, n, eta)


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_the_top_of_each_round_is_promoted(direction: Direction) -> None:
    """Survivors are exactly the best floor(n_k / eta) by the value at the rung end."""

    # The value at a rung end depends on the rung, so rankings change between rounds.
    def quality_at(x: float, end: int) -> float:
        return math.sin(7.0 * x + end)

    calls: list[tuple[int, int, float]] = []

    def train_fn(trial: optuna.trial.Trial, round_: SynchronousRound) -> tuple[float, dict]:
        value = quality_at(trial.suggest_float("x", 0.0, 1.0), round_.end_epoch)
        calls.append((trial.number, round_.rung, value))
        return value, {}

    runner = SynchronousMORL(max_resource=27, n_configs=30, min_exponent=1)
    study = _quiet_study(direction)
    runner.optimize(study, train_fn)
    for k in range(len(runner.boundaries) - 1):
        this_round = sorted(
            ((v, number) for number, rung, v in calls if rung == k),
            key=lambda vn: -vn[0] if direction == "maximize" else vn[0],
        )
        promoted = {number for number, rung, _ in calls if rung == k + 1}
        assert promoted == {number for _, number in this_round[: len(this_round) // 3]}
    # Losers are PRUNED with their last value; the last round's survivors COMPLETE at r.
    for t in study.trials:
        assert t.last_step is not None
        assert t.value == t.intermediate_values[t.last_step]
        assert t.state == (TrialState.COMPLETE if t.last_step == 27 else TrialState.PRUNED)


def test_trials_run_while_trained_and_get_their_state_back() -> None:
    seen: list[tuple[int, int, Any]] = []

    def train_fn(trial: optuna.trial.Trial, round_: SynchronousRound) -> tuple[float, dict]:
        frozen = trial.study._storage.get_trial(trial._trial_id)
        assert frozen.state == TrialState.RUNNING
        # The configuration of a later round is the one suggested in the first.
        x = trial.suggest_float("x", 0.0, 1.0)
        if round_.rung > 0:
            assert frozen.params == {"x": x}
        seen.append((trial.number, round_.rung, round_.state))
        return x, {"trained_to": round_.end_epoch, "number": trial.number}

    runner = SynchronousMORL(max_resource=9, n_configs=9, min_exponent=0)
    study = _quiet_study()
    runner.optimize(study, train_fn)
    for number, rung, state in seen:
        if rung == 0:
            assert state is None
        else:
            assert state == {"trained_to": runner.boundaries[rung - 1], "number": number}


@pytest.mark.parametrize("recurring", [True, False])
@pytest.mark.parametrize("kind", ["cosine", "step", "linear", "cyclic"])
def test_rounds_continue_one_schedule_exactly(recurring: bool, kind: str) -> None:
    """The rates over the rounds are those of one RecurringLR run over the whole training."""
    steps_per_epoch = 3
    rates: dict[int, list[float]] = {}

    def train_fn(trial: optuna.trial.Trial, round_: SynchronousRound) -> tuple[float, dict]:
        lr = trial.suggest_float("lr", 0.01, 1.0, log=True)
        param = torch.nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.SGD([param], lr=lr, momentum=0.9)
        if round_.state is not None:
            param.data.copy_(round_.state["param"])
            optimizer.load_state_dict(round_.state["optimizer"])
        scheduler = round_.schedule(optimizer, steps_per_epoch=steps_per_epoch)
        for _ in round_.epochs:
            for _ in range(steps_per_epoch):
                rates.setdefault(trial.number, []).append(optimizer.param_groups[0]["lr"])
                param.grad = torch.ones(1)
                optimizer.step()
                scheduler.step()
        return lr, {"param": param.detach().clone(), "optimizer": optimizer.state_dict()}

    runner = SynchronousMORL(
        max_resource=9,
        n_configs=3,
        min_exponent=0,
        recurring=recurring,
        schedule_kind=kind,  # type: ignore[arg-type]
    )
    assert runner.schedule_boundaries == ((1, 3, 9) if recurring else (9,))
    study = _quiet_study()
    best = runner.optimize(study, train_fn)
    assert best is not None
    lr = best.params["lr"]
    reference = RecurringLR(
        torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr),
        boundaries=runner.schedule_boundaries,
        steps_per_epoch=steps_per_epoch,
        kind=kind,  # type: ignore[arg-type]
    )
    expected = [reference.lr_at(i / steps_per_epoch)[0] for i in range(9 * steps_per_epoch)]
    assert rates[best.number] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    if recurring and kind in ("cosine", "linear"):
        # Restarted at every rung end, well annealed in the iteration before it.
        for end in (1, 3):
            assert rates[best.number][end * steps_per_epoch] == pytest.approx(lr)
            assert rates[best.number][end * steps_per_epoch - 1] < 0.5 * lr


def test_docstring_example_runs() -> None:
    doc = inspect.getdoc(SynchronousMORL) or ""
    lines = doc.split(".. testcode::", 1)[1].split("\nArgs:", 1)[0]
    code = textwrap.dedent(lines).strip("\n")
    assert "runner.optimize(study, train_fn)" in code
    exec(compile(code, "<SynchronousMORL example>", "exec"), {})


# --- special values ----------------------------------------------------------------------------


def test_non_finite_values_and_dropped_configurations_never_go_on() -> None:
    def train_fn(trial: optuna.trial.Trial, round_: SynchronousRound) -> tuple[float, dict]:
        x = trial.suggest_float("x", 0.0, 1.0)
        if trial.number == 0:
            return math.nan, {}
        if trial.number == 1:
            raise optuna.TrialPruned()
        return (math.inf if trial.number == 2 else x), {}

    # Minimize: +inf would be the worst anyway, NaN cannot be ranked; both must not go on.
    runner = SynchronousMORL(max_resource=3, n_configs=9, min_exponent=0)
    study = _quiet_study("maximize")
    runner.optimize(study, train_fn)
    trials = study.trials
    assert trials[0].state == TrialState.PRUNED and trials[0].last_step == 1
    assert trials[1].state == TrialState.PRUNED and trials[1].last_step is None
    # With maximize, +inf would rank first: it is still not promoted.
    assert trials[2].state == TrialState.PRUNED and trials[2].last_step == 1
    assert trials[0].system_attrs[rung_value_key(0)] is None
    assert rung_value_key(0) not in trials[1].system_attrs
    # The three of round 1 are the best three finite values of the six others.
    finite = sorted(trials[3:], key=lambda t: -t.intermediate_values[1])
    promoted = {t.number for t in trials if 3 in t.intermediate_values}
    assert promoted == {t.number for t in finite[:3]}


def test_train_fn_must_return_value_and_state() -> None:
    runner = SynchronousMORL(max_resource=3, n_configs=3, min_exponent=0)
    with pytest.raises(ValueError, match=r"pair `\(value, state\)`"):
        runner.optimize(_quiet_study(), lambda trial, round_: 1.0)  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError, match="mapping"):
        runner.optimize(_quiet_study(), lambda trial, round_: (1.0, [1]))  # type: ignore[arg-type,return-value]


# --- arguments ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"n_configs": 0}, "`n_configs`"),
        ({"n_configs": 2.0}, "`n_configs`"),
        ({"reduction_factor": 1}, "`reduction_factor`"),
        ({"min_exponent": -1}, "`min_exponent`"),
        ({"min_resource": 0}, "`min_resource`"),
        ({"min_resource": 3, "min_exponent": 1}, "`min_exponent`"),
        ({"max_resource": 8}, "`max_resource`"),
        ({"last_rung": "merged"}, "`last_rung`"),
        ({"schedule_kind": "exponential"}, "`schedule_kind`"),
        ({"min_lr": -1.0}, "`min_lr`"),
        ({"recurring": "yes"}, "`recurring`"),
        ({"artifact_store": "/tmp/artifacts"}, "`artifact_store`"),
    ],
)
def test_invalid_arguments(kwargs: dict, name: str) -> None:
    arguments: dict[str, Any] = {"max_resource": 27, "n_configs": 9} | kwargs
    with pytest.raises(ValueError, match=name):
        SynchronousMORL(**arguments)


def test_a_huge_min_exponent_is_refused_at_once() -> None:
    # It used to hang computing reduction_factor**min_exponent.
    with pytest.raises(ValueError, match=r"`min_exponent` is 1000000000, .*`min_exponent <= 2`"):
        SynchronousMORL(max_resource=9, n_configs=3, min_exponent=10**9)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_brackets": 0}, "`n_brackets` is 0, but must be `n_brackets >= 1`"),
        ({"max_rounds": 0}, "`max_rounds` is 0, but must be `max_rounds >= 1`"),
    ],
)
def test_invalid_optimize_arguments(kwargs: dict, match: str) -> None:
    runner = SynchronousMORL(max_resource=9, n_configs=3, min_exponent=0)
    with pytest.raises(ValueError, match=match):
        runner.optimize(_quiet_study(), _Recorder(), **kwargs)
    with pytest.raises(ValueError, match="`train_fn`"):
        runner.optimize(_quiet_study(), None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="2 objectives"):
        runner.optimize(optuna.create_study(directions=["minimize"] * 2), _Recorder())


def test_layout_is_stored_and_other_arguments_are_refused() -> None:
    study = _quiet_study()
    SynchronousMORL(max_resource=9, n_configs=3, min_exponent=0).optimize(study, _Recorder())
    assert study._storage.get_study_system_attrs(study._study_id)[LAYOUT_KEY] == {
        "boundaries": [1, 3, 9],
        "n_configs": 3,
        "reduction_factor": 3,
        "recurring": True,
        "schedule_kind": "cosine",
        "min_lr": 0.0,
    }
    for other in (
        SynchronousMORL(max_resource=9, n_configs=4, min_exponent=0),
        SynchronousMORL(max_resource=9, n_configs=3, min_exponent=1),
        SynchronousMORL(max_resource=9, n_configs=3, min_exponent=0, recurring=False),
        SynchronousMORL(max_resource=9, n_configs=3, min_exponent=0, schedule_kind="linear"),
    ):
        with pytest.raises(ValueError, match="was run with the layout"):
            other.optimize(study, _Recorder())


# --- brackets, max_rounds and resuming ----------------------------------------------------------


def test_brackets_repeat_with_fresh_configurations() -> None:
    runner = SynchronousMORL(max_resource=9, n_configs=9, min_exponent=1)  # rungs 3, 9
    study = _quiet_study()
    recorder = _Recorder()
    runner.optimize(study, recorder, n_brackets=3)
    brackets = Counter(t.system_attrs[BRACKET_KEY] for t in study.trials)
    assert brackets == {0: 9, 1: 9, 2: 9}
    assert [t.system_attrs[CONFIG_KEY] for t in study.trials] == list(range(9)) * 3
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 9
    assert len(recorder.calls) == 3 * (9 + 3)
    # A later call with more brackets runs only the new one.
    recorder.calls.clear()
    runner.optimize(study, recorder, n_brackets=4)
    assert len(recorder.calls) == 9 + 3
    assert {t.system_attrs[BRACKET_KEY] for t in study.trials[27:]} == {3}


def test_max_rounds_returns_and_the_same_runner_goes_on_in_memory() -> None:
    runner = SynchronousMORL(max_resource=9, n_configs=9, min_exponent=0)  # 3 rounds
    study = _quiet_study()
    recorder = _Recorder()
    assert runner.optimize(study, recorder, max_rounds=1) is None
    assert len(recorder.calls) == 9
    states = Counter(t.state for t in study.trials)
    assert states == {TrialState.WAITING: 3, TrialState.PRUNED: 6}  # suspended survivors
    best = runner.optimize(study, recorder, max_rounds=5)
    assert [c[1] for c in recorder.calls] == [0] * 9 + [1] * 3 + [2]
    assert best is not None and best.state == TrialState.COMPLETE

    # Another runner without an artifact store cannot resume an interrupted run.
    study = _quiet_study()
    runner.optimize(study, _Recorder(), max_rounds=1)
    fresh = SynchronousMORL(max_resource=9, n_configs=9, min_exponent=0)
    with pytest.raises(RuntimeError, match="not in this runner's memory"):
        fresh.optimize(study, _Recorder())


_TRAIN_MODULE = textwrap.dedent(
    '''
    import torch


    class Train:
        """A deterministic linear regression; a crash after the first epoch of a given call."""

        def __init__(self, fail_at_call=None):
            self.n_calls = 0
            self.fail_at_call = fail_at_call
            generator = torch.Generator().manual_seed(0)
            self.x = torch.randn(48, 3, generator=generator)
            self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3

        def __call__(self, trial, round_):
            self.n_calls += 1
            lr = trial.suggest_float("lr", 1e-3, 0.5, log=True)
            momentum = trial.suggest_float("momentum", 0.0, 0.95)
            model = torch.nn.Linear(3, 1)
            with torch.no_grad():
                model.weight.zero_()
                model.bias.zero_()
            optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
            if round_.state is not None:
                model.load_state_dict(round_.state["model"])
                optimizer.load_state_dict(round_.state["optimizer"])
            scheduler = round_.schedule(optimizer, steps_per_epoch=3)
            for epoch in round_.epochs:
                order = torch.randperm(48, generator=torch.Generator().manual_seed(epoch))
                for batch in order.split(16):
                    optimizer.zero_grad()
                    loss = torch.nn.functional.mse_loss(model(self.x[batch]), self.y[batch])
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                with torch.no_grad():
                    value = torch.nn.functional.mse_loss(model(self.x), self.y).item()
                trial.report(value, step=epoch + 1)
                if self.n_calls == self.fail_at_call:
                    raise KeyboardInterrupt("simulated crash after an epoch")
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
            return value, state
    '''
)


@pytest.fixture
def train_module(tmp_path) -> Any:
    path = tmp_path / "morl_sync_train.py"
    path.write_text(_TRAIN_MODULE)
    sys.path.insert(0, str(tmp_path))
    try:
        import morl_sync_train

        yield morl_sync_train
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("morl_sync_train", None)


def _summary(study: optuna.Study, store: FileSystemArtifactStore) -> list[tuple]:
    rows = []
    for t in study.trials:
        weights = None
        if t.state == TrialState.COMPLETE:
            artifact = t.system_attrs[checkpoint_key(2)]
            weights = load_checkpoint(artifact_store=store, artifact_id=artifact)["model"]
            weights = [w.tolist() for w in weights.values()]
        rows.append((t.number, t.state, t.value, t.params, dict(t.intermediate_values), weights))
    return rows


def _runner(store: FileSystemArtifactStore) -> SynchronousMORL:
    # Rungs 1, 3, 9 with 9, 3 and 1 configurations.
    return SynchronousMORL(max_resource=9, n_configs=9, min_exponent=0, artifact_store=store)


def _new_store(path: Any) -> FileSystemArtifactStore:
    os.makedirs(path, exist_ok=True)
    return FileSystemArtifactStore(path)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"{request.param}_url")


def test_resume_after_a_crash_gives_the_uninterrupted_result(
    train_module: Any, storage_url: str, tmp_path: Any
) -> None:
    # Uninterrupted, in memory.
    store = _new_store(tmp_path / "a")
    reference = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    _runner(store).optimize(reference, train_module.Train())
    expected = _summary(reference, store)

    # A crash in the middle of round 1 (in the 11th call: round 0 has 9), then a fresh runner,
    # a fresh study object and a fresh sampler on the same storage and artifact store.
    store = _new_store(tmp_path / "b")
    study = optuna.create_study(
        storage=storage_url, study_name="s", sampler=optuna.samplers.RandomSampler(seed=1)
    )
    with pytest.raises(KeyboardInterrupt):
        _runner(store).optimize(study, train_module.Train(fail_at_call=11))
    assert not study.get_trials(states=(TrialState.RUNNING,))
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 3  # round 1's configurations: suspended, or released by the crash
    resumed = optuna.load_study(
        storage=storage_url, study_name="s", sampler=optuna.samplers.RandomSampler(seed=99)
    )
    train = train_module.Train()
    # The interrupted round is retrained: its epoch reported before the crash is again.
    with pytest.warns(UserWarning, match="already reported"):
        best = _runner(_new_store(tmp_path / "b")).optimize(resumed, train)
    # Only the rest was trained: round 1's two unfinished configurations and round 2's one.
    assert train.n_calls == 3
    assert _summary(resumed, store) == expected
    assert best is not None and best.number == reference.best_trial.number

    # Checkpoints: pruned trials have none left in the store, the completed one its final.
    for t in resumed.trials:
        ids = [m.artifact_id for m in get_all_artifact_meta(t, storage=resumed._storage)]
        existing = [i for i in ids if os.path.exists(tmp_path / "b" / i)]
        if t.state == TrialState.COMPLETE:
            assert existing == [t.system_attrs[checkpoint_key(2)]]
        else:
            assert existing == []


def test_resume_after_max_rounds_in_a_fresh_process(
    train_module: Any, sqlite_url: str, tmp_path: Any
) -> None:
    store = _new_store(tmp_path / "a")
    reference = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    _runner(store).optimize(reference, train_module.Train())
    expected = _summary(reference, store)

    script = textwrap.dedent(
        """
        import sys

        import optuna
        from optuna.artifacts import FileSystemArtifactStore
        import torch

        from optuna_ext.pruners import SynchronousMORL
        from morl_sync_train import Train

        torch.set_num_threads(1)
        url, path = sys.argv[1], sys.argv[2]
        study = optuna.create_study(
            storage=url, study_name="s", sampler=optuna.samplers.RandomSampler(seed=1)
        )
        runner = SynchronousMORL(
            max_resource=9, n_configs=9, min_exponent=0,
            artifact_store=FileSystemArtifactStore(path),
        )
        assert runner.optimize(study, Train(), max_rounds=1) is None
        """
    )
    store = _new_store(tmp_path / "b")
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([REPO_ROOT, str(tmp_path), os.environ.get("PYTHONPATH", "")]),
    )
    subprocess.run(
        [sys.executable, "-c", script, sqlite_url, str(tmp_path / "b")],
        check=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=300,
    )
    study = optuna.load_study(storage=sqlite_url, study_name="s")
    assert Counter(t.state for t in study.trials) == {
        TrialState.WAITING: 3,
        TrialState.PRUNED: 6,
    }
    train = train_module.Train()
    _runner(store).optimize(study, train)
    assert train.n_calls == 3 + 1
    assert _summary(study, store) == expected


def test_a_run_interrupted_right_after_taking_a_trial_releases_it(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The run is interrupted (Ctrl-C) between creating a configuration's trial and training
    # it: the trial is released (WAITING, its bracket and index recorded), so the resumed
    # runner trains it at once, and the run ends with the trials, numbers included, of an
    # uninterrupted one (the sampler draws per trial from the storage).
    from optuna_ext.samplers import StorageSeededRandomSampler

    def summary(study: optuna.Study) -> list[tuple[int, TrialState, float | None, dict]]:
        return [(t.number, t.state, t.value, t.params) for t in study.trials]

    reference = optuna.create_study(sampler=StorageSeededRandomSampler(seed=4))
    _runner(_new_store(tmp_path / "a")).optimize(reference, _Recorder())

    store = _new_store(tmp_path / "b")
    study = optuna.create_study(sampler=StorageSeededRandomSampler(seed=4))
    init = optuna.trial.Trial.__init__
    made = {"n": 0}

    def dying_init(self: optuna.trial.Trial, *args: Any, **kwargs: Any) -> None:
        made["n"] += 1
        if made["n"] == 5:
            raise KeyboardInterrupt("interrupted after the trial was created, before training")
        init(self, *args, **kwargs)

    monkeypatch.setattr(optuna.trial.Trial, "__init__", dying_init)
    recorder = _Recorder()
    with pytest.raises(KeyboardInterrupt):
        _runner(store).optimize(study, recorder)
    monkeypatch.undo()
    orphan = study.trials[-1]
    assert orphan.state == TrialState.WAITING
    assert orphan.system_attrs[BRACKET_KEY] == 0 and orphan.system_attrs[CONFIG_KEY] == 4
    assert len(recorder.calls) == 4
    _runner(store).optimize(study, _Recorder())
    assert summary(study) == summary(reference)


def test_a_configuration_whose_trial_failed_goes_on_in_a_marked_copy(tmp_path: Any) -> None:
    # A worker killed while training leaves its trial RUNNING; once it is failed (by the
    # heartbeat, or here by hand), the configuration goes on from its last round in a copy
    # marked as Optuna marks a retry, so the later configurations draw what they would have.
    from optuna_ext.samplers import StorageSeededRandomSampler

    def by_config(study: optuna.Study) -> dict[tuple[int, int], tuple[Any, ...]]:
        return {
            (t.system_attrs[BRACKET_KEY], t.system_attrs[CONFIG_KEY]): (t.state, t.value, t.params)
            for t in study.trials
            if t.state != TrialState.FAIL
        }

    reference = optuna.create_study(sampler=StorageSeededRandomSampler(seed=4))
    _runner(_new_store(tmp_path / "a")).optimize(reference, _Recorder())

    store = _new_store(tmp_path / "b")
    study = optuna.create_study(sampler=StorageSeededRandomSampler(seed=4))
    _runner(store).optimize(study, _Recorder(), max_rounds=1)
    waiting = [t for t in study.trials if t.state == TrialState.WAITING]
    assert len(waiting) == 3
    lost = waiting[1]
    # What a killed worker leaves: the trial taken (RUNNING), then failed as stale.
    assert study._storage.set_trial_state_values(lost._trial_id, state=TrialState.RUNNING)
    study.tell(lost.number, state=TrialState.FAIL)
    _runner(store).optimize(study, _Recorder())
    copies = [t for t in study.trials if t.system_attrs.get("SynchronousMORL:copy_of") is not None]
    assert [t.system_attrs["SynchronousMORL:copy_of"] for t in copies] == [lost.number]
    assert copies[0].system_attrs["failed_trial"] == lost.number
    assert (
        optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(copies[0])
        == lost.number
    )
    assert copies[0].params == lost.params
    assert copies[0].system_attrs[checkpoint_key(0)] == lost.system_attrs[checkpoint_key(0)]
    assert by_config(study) == by_config(reference)
    assert len(study.trials) == len(reference.trials) + 1


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_resume_with_a_lost_checkpoint_names_the_artifact(tmp_path, damage: str) -> None:
    """A resumed run whose state artifact is gone or damaged stops with the artifact's id,
    before training anything; the rounds already told stay as they are."""
    from optuna_ext._checkpoint import CheckpointError

    store = _new_store(tmp_path / "artifacts")
    study = _quiet_study()
    _runner(store).optimize(study, _Recorder(), max_rounds=1)
    promoted = [t for t in study.trials if t.state == TrialState.WAITING]
    assert len(promoted) == 3
    artifact_id = promoted[0].system_attrs[checkpoint_key(0)]
    path = tmp_path / "artifacts" / artifact_id
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[:16])
    before = [(t.number, t.state, t.value, t.intermediate_values) for t in study.trials]
    recorder = _Recorder()
    with pytest.raises(CheckpointError, match=f"'{artifact_id}'"):
        _runner(store).optimize(study, recorder, max_rounds=5)
    assert recorder.calls == []
    assert [(t.number, t.state, t.value, t.intermediate_values) for t in study.trials] == before
