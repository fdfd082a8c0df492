"""AutoHyperSampler with four workers on one study: each grid point once, one worker's answer."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
import threading
import time

import optuna
from optuna.trial import TrialState
import pytest

from optuna_ext.metrics import KNOWLEDGE_GAIN_Z_KEY
from optuna_ext.samplers import AutoHyperSampler
from optuna_ext.samplers._autohyper import sampler as sampler_module
from optuna_ext.samplers._autohyper._search import AutoHyperSearch
from optuna_ext.samplers._autohyper._search import replay
from optuna_ext.samplers._autohyper._search import simulate
from optuna_ext.samplers._autohyper.sampler import _Book
from optuna_ext.samplers._autohyper.sampler import _POINT_KEY
from optuna_ext.samplers._autohyper.sampler import _SEARCH_KEY
from optuna_ext.samplers._autohyper.sampler import PLOT_ID
from optuna_ext.samplers._autohyper.sampler import USER_ATTR_BEST_LR
from tests.samplers_tests.autohyper_tests._synthetic import knee_z
from tests.samplers_tests.autohyper_tests._synthetic import make_objective
from tests.workers_tests._checks import check_workers
from tests.workers_tests._checks import workers_of
from tests.workers_tests._run import WorkerRun
from tests.workers_tests.conftest import BACKENDS


SINGLE = simulate(AutoHyperSearch(lower_bound=1e-6, upper_bound=1.0), knee_z)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_four_workers_evaluate_each_grid_point_once_and_agree_with_one(
    worker_runs: Callable[[str], WorkerRun], backend: str
) -> None:
    run = worker_runs(backend)
    trials = check_workers(run, "autohyper")
    assert len(workers_of(trials)) == 4, "not every worker evaluated a grid point"
    # No grid point was measured twice in one pass. (A pass index can come back with other
    # rates: speculative points of a grid that the search then did not take.) While every
    # upcoming point is held, a new trial waits rather than measure one again.
    measured = Counter(
        (point["pass"], point["index"], round(point["lr"], 12))
        for t in trials
        if t.state == TrialState.COMPLETE
        and (point := t.system_attrs[_POINT_KEY])["index"] is not None
    )
    assert all(n == 1 for n in measured.values()), [k for k, n in measured.items() if n > 1]
    # The search replayed from the storage made a single worker's decisions.
    stored = dict(run.study_system_attrs["workers-autohyper"][_SEARCH_KEY])
    z_source = stored.pop("z_source")
    stored.pop("param_name")
    state = replay(AutoHyperSearch.from_dict(stored), _Book.read(trials, z_source).attempts)
    assert state.evaluations == SINGLE.evaluations
    assert state.events == SINGLE.events
    assert state.converged and state.lr == SINGLE.lr
    assert run.study_user_attrs["workers-autohyper"][USER_ATTR_BEST_LR] == SINGLE.lr
    # Every worker rewrote the Z(lr) figure after each trial; none of the writes was lost to a
    # conflict (optuna#6065 on MariaDB), and the figure is in the study.
    for output in run.outputs:
        assert "cannot save the figure" not in output, output[-2000:]
    assert any(PLOT_ID in key for key in run.study_system_attrs["workers-autohyper"])


def _ask_lr(study: optuna.Study) -> tuple[optuna.Trial, float]:
    trial = study.ask()
    return trial, trial.suggest_float("lr", 1e-6, 1.0, log=True)


def test_a_trial_waits_while_every_upcoming_point_is_held() -> None:
    # max_trials=3: the upcoming sequence is three points long. Three running trials hold
    # them; a fourth asks in another thread and must wait instead of measuring one again.
    study = optuna.create_study(sampler=AutoHyperSampler(max_trials=3, save_plot=False))
    held = [_ask_lr(study) for _ in range(3)]
    assert len({lr for _, lr in held}) == 3
    got: list[float] = []
    waiter = threading.Thread(target=lambda: got.append(_ask_lr(study)[1]))
    waiter.start()
    waiter.join(timeout=0.5)
    assert waiter.is_alive(), "the fourth trial did not wait for a free grid point"
    for trial, lr in held:
        trial.set_user_attr(KNOWLEDGE_GAIN_Z_KEY, knee_z(lr))
        study.tell(trial, 0.0)
    waiter.join(timeout=30)
    assert not waiter.is_alive()
    # Once a holder had finished, the fourth trial got a point none of the three held.
    points = [study.trials[i].system_attrs[_POINT_KEY] for i in range(4)]
    assert points[3] not in points[:3]
    assert got == [points[3]["lr"]]


def test_the_wait_for_a_held_point_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sampler_module, "_MAX_WAIT_SECONDS", 0.2)
    study = optuna.create_study(sampler=AutoHyperSampler(max_trials=3, save_plot=False))
    held = [_ask_lr(study)[1] for _ in range(3)]
    started = time.monotonic()
    _, lr = _ask_lr(study)  # one thread holds every point: re-evaluate the next after the wait
    assert 0.2 <= time.monotonic() - started < 10
    assert lr == held[0]


def test_a_trial_after_the_end_publishes_a_result_that_nobody_published() -> None:
    # Two workers finishing the search at once each see the other's trial running, so neither
    # sees the search finished in after_trial; the next trial to ask, which finds it finished,
    # writes the result.
    study = optuna.create_study(sampler=AutoHyperSampler(save_plot=False), direction="maximize")
    study.optimize(make_objective(), n_trials=500)
    assert study.user_attrs[USER_ATTR_BEST_LR] == SINGLE.lr
    study.set_user_attr(USER_ATTR_BEST_LR, None)  # as if nobody had published it
    _, lr = _ask_lr(study)
    assert lr == SINGLE.lr
    assert study.user_attrs[USER_ATTR_BEST_LR] == SINGLE.lr
