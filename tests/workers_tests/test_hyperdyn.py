"""HyperdynSampler with four workers proposing candidates for the same epochs of one study."""

from __future__ import annotations

from collections.abc import Callable
import math

import optuna
from optuna.distributions import FloatDistribution
import pytest

from optuna_ext.samplers import HyperdynSampler
from optuna_ext.samplers._hyperdyn.sampler import PROPOSAL_KEY
from tests.workers_tests._checks import check_workers
from tests.workers_tests._run import WorkerRun
from tests.workers_tests._worker import HYPERDYN_CANDIDATES
from tests.workers_tests._worker import HYPERDYN_EPOCHS
from tests.workers_tests._worker import hyperdyn_value
from tests.workers_tests.conftest import BACKENDS


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_four_workers_propose_distinct_candidates_from_earlier_epochs(
    worker_runs: Callable[[str], WorkerRun], backend: str
) -> None:
    run = worker_runs(backend)
    trials = check_workers(run, "hyperdyn")
    assert len(trials) == 4 * HYPERDYN_EPOCHS * HYPERDYN_CANDIDATES
    for t in trials:
        assert t.value == hyperdyn_value(t.params["epoch"], t.params["lr"], t.params["momentum"])
    # Random draws come from different random streams (the stream key counts the running
    # trials and the finished ones of this or a later epoch): no two share their parameters.
    points = {t.number: (t.params["lr"], t.params["momentum"]) for t in trials}
    random_draws = [points[t.number] for t in trials if PROPOSAL_KEY not in t.system_attrs]
    assert len(set(random_draws)) == len(random_draws)
    # A GP proposal treated the running candidates of its epoch whose parameters it could see
    # as pending (kriging believer) and went elsewhere. (Two proposals computed at the same
    # moment see neither the other, and may find the same maximum of EI.)
    by_number = {t.number: t for t in trials}

    def distance(a: tuple[float, float], b: tuple[float, float]) -> float:
        # In the unit box: lr on a log scale over 4 decades, momentum over [0, 0.95].
        return max(abs(math.log10(a[0] / b[0])) / 4.0, abs(a[1] - b[1]) / 0.95)

    for t in trials:
        for other in t.system_attrs.get(PROPOSAL_KEY, {}).get("pending", []):
            assert by_number[other].params["epoch"] == t.params["epoch"]
            assert distance(points[other], points[t.number]) > 1e-3, (t.number, other)
    # The GP proposals saw only trials of earlier epochs (the paper's D_{t-1}), and the
    # warm-started fits of every worker stay finite.
    proposals = [t for t in trials if PROPOSAL_KEY in t.system_attrs]
    assert proposals, "no GP proposal was made"
    for t in proposals:
        record = t.system_attrs[PROPOSAL_KEY]
        earlier = sum(1 for o in trials if o.params["epoch"] < t.params["epoch"])
        assert 3 <= record["n_observations"] <= earlier
        assert record["epoch"] == t.params["epoch"]
        assert all(math.isfinite(v) for v in record["lengthscales"])


def test_candidates_of_one_epoch_differ_when_a_later_epoch_finished_in_between() -> None:
    # Worker A is at epoch 5 while B and C propose candidates for epoch 1. A finishes between
    # B's and C's proposals; B and C see the same observations (epoch 0), so their random
    # streams must still differ.
    study = optuna.create_study(direction="maximize", sampler=HyperdynSampler(seed=3))
    lr = FloatDistribution(1e-4, 1.0, log=True)
    epoch0 = FloatDistribution(0.0, 0.0)
    study.add_trials(
        [
            optuna.trial.create_trial(
                params={"epoch": 0.0, "lr": v}, distributions={"epoch": epoch0, "lr": lr}, value=v
            )
            for v in (0.01, 0.1)
        ]
    )
    a = study.ask()
    a.suggest_float("epoch", 5, 5)
    b = study.ask()
    b.suggest_float("epoch", 1, 1)
    lr_b = b.suggest_float("lr", 1e-4, 1.0, log=True)
    a.suggest_float("lr", 1e-4, 1.0, log=True)
    study.tell(a, 0.0)
    study.tell(b, 0.0)
    c = study.ask()
    c.suggest_float("epoch", 1, 1)
    lr_c = c.suggest_float("lr", 1e-4, 1.0, log=True)
    assert lr_c != lr_b


def test_the_gp_sees_at_most_max_observations_of_the_latest_epochs() -> None:
    sampler = HyperdynSampler(seed=0, n_startup_trials=3, n_candidates=16, max_observations=6)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    lr = FloatDistribution(1e-4, 1.0, log=True)
    study.add_trials(
        [
            optuna.trial.create_trial(
                params={"epoch": float(e), "lr": 10.0 ** -(1 + (e + c) % 3)},
                distributions={"epoch": FloatDistribution(e, e), "lr": lr},
                value=float(e + c),
            )
            for e in range(5)
            for c in range(2)
        ]
    )
    trial = study.ask()
    trial.suggest_float("epoch", 5, 5)
    trial.suggest_float("lr", 1e-4, 1.0, log=True)
    record = study.trials[-1].system_attrs[PROPOSAL_KEY]
    assert record["n_observations"] == 6  # epochs 2, 3 and 4, of the 10 observations
    observed, times = sampler._observations(["lr"], 5.0, study.trials)
    assert times == [2.0, 2.0, 3.0, 3.0, 4.0, 4.0]
    assert [t.number for t in observed] == [4, 5, 6, 7, 8, 9]
    with pytest.raises(ValueError, match="max_observations"):
        HyperdynSampler(n_startup_trials=5, max_observations=4)


@pytest.mark.parametrize(
    "min_time_weight, oldest", [(0.01, 12.0), (0.1, 57.0), (0.3, 60.0), (None, 0.0)]
)
def test_the_gp_leaves_out_epochs_the_time_kernel_forgets(
    min_time_weight: float | None, oldest: float
) -> None:
    # With alpha = 1 and beta = 0.5 an observation Delta epochs back weighs 0.5 / (Delta + 0.5):
    # at least 0.01 up to Delta = 49.5, 0.1 up to 4.5, 0.3 at Delta = 1 (the epoch before only).
    sampler = HyperdynSampler(
        seed=0, n_startup_trials=1, n_candidates=16, min_time_weight=min_time_weight
    )
    study = optuna.create_study(direction="maximize", sampler=sampler)
    lr = FloatDistribution(1e-4, 1.0, log=True)
    study.add_trials(
        [
            optuna.trial.create_trial(
                params={"epoch": float(e), "lr": 10.0 ** -(1 + e % 3)},
                distributions={"epoch": FloatDistribution(e, e), "lr": lr},
                value=float(e),
            )
            for e in range(61)
        ]
    )
    _, times = sampler._observations(["lr"], 61.0, study.trials)
    assert times is not None
    assert min(times) == oldest and max(times) == 60.0
    assert len(times) == 61 - int(oldest)


def test_min_time_weight_is_checked() -> None:
    for bad in (-0.1, 1.0, math.nan, "0.1", True):
        with pytest.raises(ValueError, match="min_time_weight"):
            HyperdynSampler(min_time_weight=bad)  # type: ignore[arg-type]


def test_a_proposal_avoids_the_running_candidates_of_its_epoch() -> None:
    # Two workers propose for epoch 1 from the same observations: without the running
    # candidate as a pending point, both would find the same maximum of EI.
    sampler = HyperdynSampler(seed=0, n_startup_trials=3, n_candidates=64)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    lr = FloatDistribution(1e-4, 1.0, log=True)
    study.add_trials(
        [
            optuna.trial.create_trial(
                params={"epoch": 0.0, "lr": v},
                distributions={"epoch": FloatDistribution(0, 0), "lr": lr},
                value=-((math.log10(v) + 2) ** 2),
            )
            for v in (1e-4, 1e-3, 3e-3, 3e-2, 0.3, 1.0)
        ]
    )
    first = study.ask()
    first.suggest_float("epoch", 1, 1)
    lr_first = first.suggest_float("lr", 1e-4, 1.0, log=True)
    second = study.ask()
    second.suggest_float("epoch", 1, 1)
    lr_second = second.suggest_float("lr", 1e-4, 1.0, log=True)
    assert study.trials[-1].system_attrs[PROPOSAL_KEY]["pending"] == [first.number]
    assert study.trials[-2].system_attrs[PROPOSAL_KEY]["pending"] == []
    assert abs(math.log10(lr_second) - math.log10(lr_first)) > 0.05
