"""SynchronousMORL with four workers sharing the rounds of one study."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
import tempfile
import threading

import optuna
from optuna.trial import TrialState
import pytest

from optuna_ext.pruners._synchronous import BRACKET_KEY
from optuna_ext.pruners._synchronous import CONFIG_KEY
from optuna_ext.pruners._synchronous import DUPLICATE_KEY
from tests.workers_tests._checks import check_workers
from tests.workers_tests._run import WorkerRun
from tests.workers_tests._worker import make_synchronous_runner
from tests.workers_tests._worker import make_synchronous_train
from tests.workers_tests._worker import SYNC_BRACKETS
from tests.workers_tests.conftest import BACKENDS


def _key(t: optuna.trial.FrozenTrial) -> tuple[int, int]:
    return int(t.system_attrs[BRACKET_KEY]), int(t.system_attrs[CONFIG_KEY])


def _one_worker() -> tuple[
    list[list[int]], dict[tuple[int, int], tuple[TrialState, float | None]]
]:
    trained: list[list[int]] = []
    study = optuna.create_study(direction="maximize")
    with tempfile.TemporaryDirectory() as tmp:
        runner = make_synchronous_runner(tmp)
        runner.optimize(study, make_synchronous_train(trained, 0.0), n_brackets=SYNC_BRACKETS)
    outcome = {_key(t): (t.state, t.value) for t in study.trials}
    return trained, outcome


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_each_configuration_is_trained_once_per_round(
    worker_runs: Callable[[str], WorkerRun], backend: str
) -> None:
    run = worker_runs(backend)
    trials = check_workers(run, "synchronous", every_finished_trial_told=False)
    reference_trained, reference = _one_worker()
    trained = [unit for r in run.method_reports("synchronous") for unit in r["trained"]]
    # (bracket, config, rung): each unit of work once, and the same units as one worker's.
    units = Counter((b, c, k) for b, c, k, *_ in trained)
    assert all(n == 1 for n in units.values()), [u for u, n in units.items() if n > 1]
    assert set(units) == {(b, c, k) for b, c, k, *_ in reference_trained}
    # Every round went on from the state saved at the end of the round before.
    runner = make_synchronous_runner(tempfile.gettempdir())
    for _, _, rung, _, resumed_from, _ in trained:
        assert resumed_from == (None if rung == 0 else runner.boundaries[rung - 1])
    # The work was shared.
    assert len({pid for *_, pid in trained}) >= 2
    # One trial per configuration; a second one (two workers started it at once) never trained.
    live = [t for t in trials if DUPLICATE_KEY not in t.system_attrs]
    assert Counter(_key(t) for t in live) == Counter(set(reference))
    for t in trials:
        if DUPLICATE_KEY in t.system_attrs:
            assert t.state == TrialState.FAIL and not t.intermediate_values
    # The promotions and results are one worker's.
    assert {_key(t): (t.state, t.value) for t in live} == reference
    best = {r["best"] for r in run.method_reports("synchronous")}
    assert len(best) == 1 and best != {None}


def test_four_threads_share_the_rounds_of_an_in_memory_study(tmp_path: object) -> None:
    # The protocol without processes: four runners in threads on one in-memory study.
    reference_trained, reference = _one_worker()
    study = optuna.create_study(direction="maximize")
    trained: list[list[int]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            runner = make_synchronous_runner(str(tmp_path))
            train = make_synchronous_train(trained, 0.002)
            runner.optimize(study, train, n_brackets=SYNC_BRACKETS, poll_interval=0.01)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    units = Counter((b, c, k) for b, c, k, *_ in trained)
    assert all(n == 1 for n in units.values())
    assert set(units) == {(b, c, k) for b, c, k, *_ in reference_trained}
    live = [t for t in study.trials if DUPLICATE_KEY not in t.system_attrs]
    assert {_key(t): (t.state, t.value) for t in live} == reference
    assert all(t.state.is_finished() for t in study.trials)
