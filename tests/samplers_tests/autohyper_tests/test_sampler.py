"""AutoHyperSampler on Optuna studies (in memory), and Optuna's own sampler contract suites.

About the contract suites (``optuna.testing.pytest_samplers``): AutoHyperSampler tunes one
parameter, ``lr`` by default, and hands every other parameter to its independent sampler. The
suites name their parameters ``x``, ``y``, ``z``, ``category`` and ``a``..``f``, so in
:class:`TestOptunaContract` every ``sample_independent`` call, including the log-scale float
cases of ``test_float`` and ``test_single_parameter_objective``, goes to the independent
sampler (RandomSampler): these cases check the delegation, the hooks (``before_trial`` and
``after_trial`` on trials without a grid point must not raise) and
``SingleOnlySamplerTestCase``'s multi-objective check (which AutoHyperSampler performs
itself), not the autoHyper search. The suites cannot be pointed at the tuned parameter:
``test_float``/``test_int``/``test_categorical`` require any distribution to be accepted,
while AutoHyperSampler rejects anything but a log-scale float for ``lr`` by design.
``RelativeSamplerTestCase`` does not apply (no relative search space), nor does
``MultiObjectiveSamplerTestCase`` (single objective only). The contract for ``lr`` itself
(values inside the distribution, Python floats, one fresh trial at a time) is checked by
``test_lr_contract`` below.
"""

from __future__ import annotations

from collections.abc import Callable
import datetime
import json
import math
from pathlib import Path
import threading
import time
from typing import Any

import numpy as np
import optuna
from optuna.distributions import FloatDistribution
from optuna.distributions import IntDistribution
from optuna.samplers import BaseSampler
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.testing.pytest_samplers import BasicSamplerTestCase
from optuna.testing.pytest_samplers import SingleOnlySamplerTestCase
from optuna.trial import TrialState
import pytest

from optuna_ext.metrics._keys import KNOWLEDGE_GAIN_Z_KEY
from optuna_ext.samplers import AutoHyperResult
from optuna_ext.samplers import AutoHyperSampler
from optuna_ext.samplers._autohyper import sampler as sampler_module
from optuna_ext.samplers._autohyper._search import AutoHyperSearch
from optuna_ext.samplers._autohyper._search import replay
from optuna_ext.samplers._autohyper._search import simulate
from optuna_ext.samplers._autohyper.sampler import _Book
from optuna_ext.samplers._autohyper.sampler import _POINT_KEY
from tests.samplers_tests._storage_matrix import StorageMatrix
from tests.samplers_tests.autohyper_tests._synthetic import DISTRIBUTION
from tests.samplers_tests.autohyper_tests._synthetic import knee_z
from tests.samplers_tests.autohyper_tests._synthetic import make_objective
from tests.samplers_tests.autohyper_tests._synthetic import plateau_start


optuna.logging.set_verbosity(optuna.logging.WARNING)


class TestOptunaContract(StorageMatrix, BasicSamplerTestCase, SingleOnlySamplerTestCase):
    @pytest.fixture
    def sampler(self) -> Callable[[], BaseSampler]:
        return lambda: AutoHyperSampler(seed=0)


def lr_sequence(study: optuna.Study) -> list[float]:
    return [t.params["lr"] for t in study.get_trials(deepcopy=False)]


def replayed(study: optuna.Study) -> Any:
    """The full search state replayed from the study (settings from its storage)."""
    stored = sampler_module._load_stored(study)
    assert stored is not None
    _, z_source, search = stored
    return replay(search, _Book.read(study._get_trials(deepcopy=False), z_source).attempts)


def test_lr_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    # One thread holds every upcoming point: it cannot wait for another worker to finish one
    # (tests/workers_tests/test_autohyper.py tests the wait), so keep the wait short.
    monkeypatch.setattr(sampler_module, "_MAX_WAIT_SECONDS", 0.01)
    distribution = FloatDistribution(1e-6, 1.0, log=True)
    study = optuna.create_study(sampler=AutoHyperSampler())
    values = []
    for _ in range(120):  # more fresh RUNNING trials than the search has points ahead
        trial_id = study._storage.create_new_trial(study._study_id)
        trial = study._storage.get_trial(trial_id)
        values.append(study.sampler.sample_independent(study, trial, "lr", distribution))
    assert all(type(v) is float for v in values)
    assert all(distribution.low <= v <= distribution.high for v in values)
    # Every RUNNING trial got a distinct point until the upcoming points (at most
    # max_trials = 100 ahead) ran out; then, after the wait, the next point is evaluated again.
    points = [tuple(t.system_attrs[_POINT_KEY].values()) for t in study.trials]
    assert len(set(points[:100])) == 100
    assert all(p == points[0] for p in points[100:])


def test_converges_at_the_knee_and_stops_the_study() -> None:
    study = optuna.create_study(sampler=AutoHyperSampler(seed=0), direction="maximize")
    study.optimize(make_objective(), n_trials=500)
    result = AutoHyperSampler.result(study)
    assert isinstance(result, AutoHyperResult)
    assert result.converged and result.lr is not None
    # The same bound as the pure search's knee test (one walk of 20 points + a few zooms).
    assert len(study.trials) == result.n_trials <= 60
    assert plateau_start() / 2 <= result.lr <= 2 * plateau_start()
    assert AutoHyperSampler.best_lr(study) == result.lr
    assert study.user_attrs["autohyper:best_lr"] == result.lr
    assert study.user_attrs["autohyper:converged"] is True
    assert study.user_attrs["autohyper:reason"] == result.reason
    assert study.user_attrs["autohyper:n_trials"] == result.n_trials
    # The sampler reproduces the pure sequential search exactly.
    expected = simulate(AutoHyperSearch(lower_bound=1e-6, upper_bound=1.0), knee_z)
    assert lr_sequence(study) == [e.lr for e in expected.evaluations]
    assert result.lr == expected.lr
    # The measurements behind the answer, with their grid passes (the Z(lr) curve).
    assert result.evaluations == expected.evaluations
    assert len({e.pass_id for e in result.evaluations}) > 1  # it zoomed at least once
    # Small attrs: a few scalars on the study, one small dict per trial.
    assert len(json.dumps(study.user_attrs)) < 300
    assert all(len(json.dumps(t.system_attrs[_POINT_KEY])) < 100 for t in study.trials)


@pytest.mark.parametrize("storage_mode", ["inmemory", "journal"])
@pytest.mark.parametrize("split", [1, 13, 22])
def test_a_new_sampler_continues_where_the_last_stopped(
    storage_mode: str, split: int, tmp_path: Path
) -> None:
    expected = simulate(AutoHyperSearch(lower_bound=1e-6, upper_bound=1.0), knee_z)
    storage: optuna.storages.BaseStorage
    if storage_mode == "journal":
        storage = JournalStorage(JournalFileBackend(str(tmp_path / "journal.log")))
    else:
        storage = optuna.storages.InMemoryStorage()
    first = optuna.create_study(storage=storage, sampler=AutoHyperSampler(save_plot=False))
    first.optimize(make_objective(), n_trials=split)
    second = optuna.load_study(
        study_name=first.study_name, storage=storage, sampler=AutoHyperSampler()
    )
    second.optimize(make_objective(), n_trials=500)
    assert lr_sequence(second) == [e.lr for e in expected.evaluations]
    assert AutoHyperSampler.best_lr(second) == expected.lr


def test_best_lr_is_none_before_convergence_with_a_reason() -> None:
    study = optuna.create_study()
    assert AutoHyperSampler.result(study).reason == "no-trials"
    study.sampler = AutoHyperSampler()
    study.optimize(make_objective(), n_trials=5)
    result = AutoHyperSampler.result(study)
    assert result == AutoHyperResult(
        None,
        False,
        "running",
        result.message,
        n_trials=5,
        bounds_reached=(),
        evaluations=result.evaluations,
    )
    assert [e.lr for e in result.evaluations] == [t.params["lr"] for t in study.trials]
    assert [e.z for e in result.evaluations] == [
        t.user_attrs[KNOWLEDGE_GAIN_Z_KEY] for t in study.trials
    ]
    assert "not converged" in result.message
    assert AutoHyperSampler.best_lr(study) is None
    assert "autohyper:best_lr" not in study.user_attrs


def test_after_convergence_new_trials_get_the_chosen_rate() -> None:
    study = optuna.create_study(sampler=AutoHyperSampler(), direction="maximize")
    study.optimize(make_objective(), n_trials=500)
    best = AutoHyperSampler.best_lr(study)
    n = len(study.trials)
    study.optimize(make_objective(), n_trials=10)  # stops again after one trial
    assert len(study.trials) == n + 1
    assert study.trials[-1].params["lr"] == best
    assert study.trials[-1].system_attrs[_POINT_KEY]["index"] is None
    assert AutoHyperSampler.best_lr(study) == best


def test_ask_and_tell() -> None:
    study = optuna.create_study(sampler=AutoHyperSampler(), direction="maximize")
    objective = make_objective()
    for _ in range(200):
        trial = study.ask()
        study.tell(trial, objective(trial))  # study.stop() is not an error here
        if AutoHyperSampler.result(study).converged:
            break
    assert (
        AutoHyperSampler.best_lr(study)
        == simulate(AutoHyperSearch(lower_bound=1e-6, upper_bound=1.0), knee_z).lr
    )


def test_z_from_the_objective_value() -> None:
    def objective(trial: optuna.Trial) -> float:
        return knee_z(trial.suggest_float("lr", *DISTRIBUTION, log=True))

    study = optuna.create_study(sampler=AutoHyperSampler(z_source="value"))
    study.optimize(objective, n_trials=500)
    expected = simulate(AutoHyperSearch(lower_bound=1e-6, upper_bound=1.0), knee_z)
    assert AutoHyperSampler.best_lr(study) == expected.lr


def test_missing_z_is_a_clear_error() -> None:
    study = optuna.create_study(sampler=AutoHyperSampler())
    with pytest.raises(ValueError) as info:
        study.optimize(lambda t: t.suggest_float("lr", 1e-6, 1.0, log=True), n_trials=1)
    message = str(info.value)
    assert KNOWLEDGE_GAIN_Z_KEY in message
    assert "KnowledgeGainTracker.report(trial)" in message
    assert "z_source='value'" in message


@pytest.mark.parametrize("z", [float("nan"), 1.5, -0.1, "0.3", True])
def test_invalid_z_is_an_error(z: Any) -> None:
    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("lr", 1e-6, 1.0, log=True)
        trial.set_user_attr(KNOWLEDGE_GAIN_Z_KEY, z)
        return 0.0

    study = optuna.create_study(sampler=AutoHyperSampler())
    with pytest.raises(ValueError, match=r"Z=.*\[0, 1\]"):
        study.optimize(objective, n_trials=1)


def test_other_parameters_only_never_need_z() -> None:
    study = optuna.create_study(sampler=AutoHyperSampler())
    study.optimize(lambda t: t.suggest_float("x", 1e-6, 1.0, log=True), n_trials=5)
    assert len(study.trials) == 5
    assert AutoHyperSampler.result(study).reason == "no-trials"


def test_failed_and_pruned_points_are_retried_then_skipped() -> None:
    outcomes: dict[int, str] = {0: "fail", 1: "prune", 3: "prune-with-z"}

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", *DISTRIBUTION, log=True)
        what = outcomes.get(trial.number, "" if lr > 2e-4 else "fail")
        if what == "fail":
            raise RuntimeError("diverged")
        if what == "prune":
            raise optuna.TrialPruned()
        trial.set_user_attr(KNOWLEDGE_GAIN_Z_KEY, knee_z(lr, knee=1e-3))
        if what == "prune-with-z":
            raise optuna.TrialPruned()
        return 0.0

    study = optuna.create_study(sampler=AutoHyperSampler(max_retries=2))
    study.optimize(objective, n_trials=6, catch=(RuntimeError,))
    lrs = lr_sequence(study)
    states = [t.state for t in study.trials]
    # Trials 0..2 fail at the first grid point (1e-4): retried twice, then skipped.
    assert lrs[0] == lrs[1] == lrs[2] == 1e-4
    assert states[:3] == [TrialState.FAIL, TrialState.PRUNED, TrialState.FAIL]
    # Trial 3 (second point) is pruned but has Z: it is used, so trial 4 moves on.
    g = np.geomspace(1e-4, 0.1, 20)
    assert lrs[3] == pytest.approx(g[1]) and lrs[4] == pytest.approx(g[2])
    state = replayed(study)
    assert [e.kind for e in state.events] == ["skipped"]
    assert [e.index for e in state.evaluations] == [1, 2, 3]


def test_a_running_trial_that_died_is_presumed_dead(monkeypatch: pytest.MonkeyPatch) -> None:
    study = optuna.create_study(sampler=AutoHyperSampler())
    study.optimize(make_objective(), n_trials=3)
    zombie = study.ask()
    zombie_lr = zombie.suggest_float("lr", *DISTRIBUTION, log=True)  # then "killed"
    live = study.ask()
    assert live.suggest_float("lr", *DISTRIBUTION, log=True) != zombie_lr
    study.tell(live, state=TrialState.FAIL)
    # Over a minute later (and > 3x the longest trial), the zombie's point is handed out again.
    later = sampler_module._now() + datetime.timedelta(seconds=61)
    monkeypatch.setattr(sampler_module, "_now", lambda: later)
    again = study.ask()
    assert again.suggest_float("lr", *DISTRIBUTION, log=True) == zombie_lr


def test_threads_share_points_and_keep_the_single_worker_decisions() -> None:
    study = optuna.create_study(sampler=AutoHyperSampler(save_plot=False))
    study.optimize(make_objective(sleep=0.01), n_trials=500, n_jobs=3)
    single = simulate(AutoHyperSearch(lower_bound=1e-6, upper_bound=1.0), knee_z)
    state = replayed(study)
    assert state.evaluations == single.evaluations and state.events == single.events
    assert AutoHyperSampler.best_lr(study) == single.lr
    done = [
        (t.system_attrs[_POINT_KEY]["pass"], t.system_attrs[_POINT_KEY]["index"])
        for t in study.trials
        if t.state == TrialState.COMPLETE and t.system_attrs[_POINT_KEY]["index"] is not None
    ]
    assert len(done) == len(set(done))


def test_same_seed_same_trials_and_reseed() -> None:
    def run(sampler: AutoHyperSampler) -> list[tuple[float, float]]:
        study = optuna.create_study(sampler=sampler)
        study.optimize(make_objective(), n_trials=8)
        return [(t.params["lr"], t.params["x"]) for t in study.trials]

    a = run(AutoHyperSampler(seed=3))
    assert a == run(AutoHyperSampler(seed=3))
    other = run(AutoHyperSampler(seed=4))
    assert [lr for lr, _ in other] == [lr for lr, _ in a]  # lr is deterministic
    assert [x for _, x in other] != [x for _, x in a]
    reseeded = AutoHyperSampler(seed=3)
    reseeded.reseed_rng()
    b = run(reseeded)
    assert [lr for lr, _ in b] == [lr for lr, _ in a]
    assert [x for _, x in b] != [x for _, x in a]


def test_independent_sampler_is_used_for_other_parameters() -> None:
    class Fixed(optuna.samplers.RandomSampler):
        def sample_independent(self, *args: Any) -> Any:
            return 0.25

    study = optuna.create_study(sampler=AutoHyperSampler(independent_sampler=Fixed()))
    study.optimize(make_objective(), n_trials=3)
    assert [t.params["x"] for t in study.trials] == [0.25] * 3
    expected = simulate(AutoHyperSearch(lower_bound=1e-6, upper_bound=1.0), knee_z)
    assert lr_sequence(study) == [e.lr for e in expected.evaluations[:3]]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(min_lr=0.0), "min_lr > 0"),
        (dict(max_lr=1e-5), "max_lr > min_lr"),
        (dict(max_lr=float("inf")), "`max_lr` is inf, but must be finite"),
        (dict(num_split=1), "num_split >= 2"),
        (dict(power=-1.0), "power > 0"),
        (dict(min_delta=2.0), "0 < min_delta < 1"),
        (dict(lr_delta=-1.0), "lr_delta > 0"),
        (dict(exit_counter_threshold=-2), "exit_counter_threshold >= 0"),
        (dict(relative_width=-0.1), "relative_width > 0"),
        (dict(max_trials=0), "max_trials >= 1"),
        (dict(max_retries=-1), "max_retries >= 0"),
        (dict(z_source="loss"), "z_source"),
        (dict(param_name=""), "param_name"),
        (dict(independent_sampler="random"), "independent_sampler"),
    ],
)
def test_invalid_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AutoHyperSampler(**kwargs)


def test_sampler_can_be_copied_and_pickled() -> None:
    import copy
    import pickle

    sampler = AutoHyperSampler(seed=2)
    for clone in (copy.deepcopy(sampler), pickle.loads(pickle.dumps(sampler))):
        study = optuna.create_study(sampler=clone)
        study.optimize(make_objective(), n_trials=2)
        assert len(study.trials) == 2


def test_constructor_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        AutoHyperSampler("lr")  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "suggest",
    [
        lambda t: t.suggest_float("lr", 1e-6, 1.0),
        lambda t: t.suggest_float("lr", 1e-6, 1.0, step=1e-6),
        lambda t: t.suggest_int("lr", 1, 100, log=True),
        lambda t: t.suggest_categorical("lr", [1e-3, 1e-2]),
    ],
)
def test_lr_must_be_a_log_float(suggest: Callable[[optuna.Trial], Any]) -> None:
    study = optuna.create_study(sampler=AutoHyperSampler())
    with pytest.raises(ValueError, match="log=True"):
        study.optimize(suggest, n_trials=1)


def test_distribution_outside_the_first_grid_is_an_error() -> None:
    study = optuna.create_study(sampler=AutoHyperSampler())
    with pytest.raises(ValueError, match="does not overlap"):
        study.optimize(lambda t: t.suggest_float("lr", 1.0, 10.0, log=True), n_trials=1)


def test_resuming_with_other_settings_is_an_error() -> None:
    study = optuna.create_study(sampler=AutoHyperSampler())
    study.optimize(make_objective(), n_trials=2)
    study.sampler = AutoHyperSampler(num_split=10)
    with pytest.raises(ValueError, match="num_split: 20 -> 10"):
        study.optimize(make_objective(), n_trials=1)
    study.sampler = AutoHyperSampler()
    with pytest.raises(ValueError, match="upper_bound"):
        study.optimize(lambda t: t.suggest_float("lr", 1e-6, 0.5, log=True), n_trials=1)
    # max_trials may change (to extend or shorten a search).
    study.sampler = AutoHyperSampler(max_trials=4)
    study.optimize(make_objective(), n_trials=100)
    result = AutoHyperSampler.result(study)
    assert result.reason == "max-trials" and result.n_trials == 4 and result.lr is None
    assert study.user_attrs["autohyper:converged"] is False
    study.sampler = AutoHyperSampler(max_trials=100)
    study.optimize(make_objective(), n_trials=500)
    assert AutoHyperSampler.result(study).converged


def test_grid_stays_inside_a_narrow_distribution() -> None:
    low, high = 2e-3, 5e-2

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", low, high, log=True)
        trial.set_user_attr(KNOWLEDGE_GAIN_Z_KEY, knee_z(lr))
        return 0.0

    study = optuna.create_study(sampler=AutoHyperSampler())
    study.optimize(objective, n_trials=500)
    lrs = lr_sequence(study)
    assert all(low <= lr <= high for lr in lrs)
    assert lrs[0] == low
    result = AutoHyperSampler.result(study)
    assert result.converged and result.lr is not None and low <= result.lr <= high
    assert result.bounds_reached == ("lower", "upper")
    assert study.user_attrs["autohyper:bounds_reached"] == ["lower", "upper"]


def test_knee_above_the_upper_bound_is_reported() -> None:
    high = 1e-2

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-6, high, log=True)
        trial.set_user_attr(KNOWLEDGE_GAIN_Z_KEY, knee_z(lr, knee=1.0))
        return 0.0

    study = optuna.create_study(sampler=AutoHyperSampler())
    study.optimize(objective, n_trials=500)
    assert all(lr <= high for lr in lr_sequence(study))
    result = AutoHyperSampler.result(study)
    assert result.converged and result.reason == "upper-bound" and result.lr == high
    assert "upper" in result.bounds_reached
    assert "upper" in study.user_attrs["autohyper:bounds_reached"]
    assert len(study.trials) == result.n_trials < 100


def _saved_figure(study: optuna.Study) -> dict:
    attrs = study._storage.get_study_system_attrs(study._study_id)
    prefix = f"dashboard:plot_data:{sampler_module.PLOT_ID}:"
    chunks = sorted((int(k[len(prefix) :]), v) for k, v in attrs.items() if k.startswith(prefix))
    assert [i for i, _ in chunks] == list(range(len(chunks)))
    return json.loads("".join(v for _, v in chunks))


def test_plot_is_saved_after_each_trial_and_marks_the_chosen_rate() -> None:
    study = optuna.create_study(sampler=AutoHyperSampler(), direction="maximize")
    study.optimize(make_objective(), n_trials=3)
    figure = _saved_figure(study)
    assert figure["layout"]["xaxis"]["type"] == "log"
    assert len(figure["data"]) == 1 and len(figure["data"][0]["x"]) == 3
    study.optimize(make_objective(), n_trials=500)
    figure = _saved_figure(study)
    best = AutoHyperSampler.best_lr(study)
    assert len(figure["data"][0]["x"]) == AutoHyperSampler.result(study).n_trials
    assert figure["data"][1]["x"] == [best, best]
    # One figure, overwritten: no other graph object was stored.
    ids = {
        k.split(":")[2]
        for k in study._storage.get_study_system_attrs(study._study_id)
        if k.startswith("dashboard:plot_data:")
    }
    assert ids == {sampler_module.PLOT_ID}


def test_plot_legend_is_one_row_above_the_plot_clear_of_the_colorbar() -> None:
    study = optuna.create_study(sampler=AutoHyperSampler(), direction="maximize")
    study.optimize(make_objective(), n_trials=500)
    figure = _saved_figure(study)
    assert figure["data"][0]["marker"]["showscale"] is True  # the colorbar, on the right
    legend = figure["layout"]["legend"]
    assert legend["orientation"] == "h" and legend["y"] > 1 and legend["yanchor"] == "bottom"


def test_save_plot_false() -> None:
    study = optuna.create_study(sampler=AutoHyperSampler(save_plot=False))
    study.optimize(make_objective(), n_trials=2)
    assert not any(
        k.startswith("dashboard:") for k in study._storage.get_study_system_attrs(study._study_id)
    )


def test_works_under_hyperband_bracket_studies() -> None:
    # HyperbandPruner hands the sampler a filtered `_BracketStudy`.
    study = optuna.create_study(
        sampler=AutoHyperSampler(), pruner=optuna.pruners.HyperbandPruner(), direction="maximize"
    )
    study.optimize(make_objective(), n_trials=500)
    expected = simulate(AutoHyperSearch(lower_bound=1e-6, upper_bound=1.0), knee_z)
    assert AutoHyperSampler.best_lr(study) == expected.lr
    assert len(study.trials) == expected.n_trials
    _saved_figure(study)


def test_multi_objective_is_rejected_for_lr_too() -> None:
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=AutoHyperSampler())
    with pytest.raises(ValueError, match="multi-objective"):
        study.optimize(lambda t: (t.suggest_float("lr", 1e-6, 1.0, log=True), 0.0), n_trials=1)


def test_concurrent_claims_do_not_collide() -> None:
    # Many threads asking at once on one point: the claim/re-check protocol gives each a
    # different grid point.
    study = optuna.create_study(sampler=AutoHyperSampler())
    barrier = threading.Barrier(6)
    lrs: list[float] = []
    lock = threading.Lock()

    def ask() -> None:
        trial = study.ask()
        barrier.wait()
        lr = trial.suggest_float("lr", *DISTRIBUTION, log=True)
        with lock:
            lrs.append(lr)

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(lrs) == 6 and len(set(lrs)) == 6
    assert set(lrs) <= set(np.geomspace(1e-4, 0.1, 20).tolist())


def test_result_is_a_pure_function_of_the_storage() -> None:
    study = optuna.create_study(sampler=AutoHyperSampler(), direction="maximize")
    study.optimize(make_objective(), n_trials=500)
    started = time.perf_counter()
    results = {AutoHyperSampler.result(study) for _ in range(3)}
    assert len(results) == 1
    assert time.perf_counter() - started < 1.0
    assert math.isfinite(next(iter(results)).lr or math.nan)


def test_integer_distribution_for_another_name_is_delegated() -> None:
    sampler = AutoHyperSampler(param_name="learning_rate", seed=1)
    study = optuna.create_study(sampler=sampler)
    trial = study.ask()
    assert isinstance(trial.suggest_int("lr", 1, 10), int)  # not the tuned name
    with pytest.raises(ValueError, match="log=True"):
        frozen = study._storage.get_trial(trial._trial_id)
        study.sampler.sample_independent(study, frozen, "learning_rate", IntDistribution(1, 9))


def test_after_a_missing_z_the_study_goes_on_with_the_point_retried() -> None:
    """The missing-Z error stops ``optimize``; the trial stays COMPLETE (Optuna finishes it
    before the error reaches the caller), counts as a failed attempt of its grid point, and a
    corrected objective continues the search to the answer of a run without the mistake."""
    study = optuna.create_study(sampler=AutoHyperSampler(save_plot=False), direction="maximize")
    study.optimize(make_objective(), n_trials=3)
    with pytest.raises(ValueError, match=KNOWLEDGE_GAIN_Z_KEY):
        study.optimize(lambda t: t.suggest_float("lr", *DISTRIBUTION, log=True), n_trials=5)
    assert len(study.trials) == 4 and study.trials[3].state == TrialState.COMPLETE
    study.optimize(make_objective(), n_trials=500)
    assert study.trials[4].params["lr"] == study.trials[3].params["lr"]  # retried
    expected = simulate(AutoHyperSearch(lower_bound=1e-6, upper_bound=1.0), knee_z)
    assert AutoHyperSampler.best_lr(study) == expected.lr
