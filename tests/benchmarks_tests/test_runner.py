from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest

from benchmarks import report
from benchmarks.__main__ import main
from benchmarks.context import Event
from benchmarks.methods import METHODS
from benchmarks.problems import PROBLEMS
from benchmarks.runner import curve_and_marks
from benchmarks.runner import load_summaries
from benchmarks.runner import make_jobs
from benchmarks.runner import run
from benchmarks.runner import RunConfig
from benchmarks.runner import trials_to_convergence
from benchmarks.runner import work


# One method of each kind: no search, search, pruner, MORL, autoHyper-like final training
# (the range test), and the online methods (trial-less, Hyperdyn's candidates, a population).
METHODS_RUN = ("baseline", "random", "sha", "morl", "lr_range_test", "sgd_hd", "hyperdyn", "pbt")
PROBLEM = "linear"


def _trial_counts(url: str) -> dict[str, int]:
    storage = optuna.storages.RDBStorage(url)
    return {
        s.study_name: len(storage.get_all_trials(s._study_id)) for s in storage.get_all_studies()
    }


@pytest.mark.slow
def test_a_tiny_run_writes_summaries_and_report_needs_only_the_storage(
    sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "run",
        "--budget",
        "tiny",
        "--methods",
        ",".join(METHODS_RUN),
        "--problems",
        PROBLEM,
        "--seeds",
        "0",
        "--storage",
        sqlite_url,
        "--no-progress",
    ]
    assert main(argv) == 0
    summaries = {s["method"]: s for s in load_summaries(sqlite_url)}
    assert set(summaries) == set(METHODS_RUN)
    budget = PROBLEMS[PROBLEM].budget("tiny")
    for method, s in summaries.items():
        assert s["problem"] == PROBLEM and s["seed"] == 0 and s["budget"] == "tiny"
        assert 0 < s["epochs_spent"] <= budget.total, method
        assert 0.0 <= s["test_accuracy"] <= 1.0
        assert 0.0 <= s["train_accuracy"] <= 1.0
        assert s["sessions"] == 1
        assert "python -m benchmarks run" in s["command"]
        assert s["params_optimized"] == METHODS[method].tunes(PROBLEMS[PROBLEM])
        assert len(json.dumps(s)) < 4000  # compact: the dashboard reads every study attr
        assert s["curve"] and s["curve"][-1][0] == s["epochs_spent"]
        values = [y for _, y in s["curve"]]
        assert values == sorted(values)
    # Every search method spends the whole budget; the single-run methods one run.
    for method in ("random", "sha", "morl", "pbt"):
        assert summaries[method]["epochs_spent"] == budget.total
    for method in ("baseline", "sgd_hd"):
        assert summaries[method]["epochs_spent"] == budget.epochs
        assert summaries[method]["trials"] == 1
    assert summaries["morl"]["final_epochs"] == budget.epochs  # trained again with one cosine
    # The range test's own final training is part of its budget.
    assert summaries["lr_range_test"]["final_epochs"] == 0
    assert summaries["lr_range_test"]["curve"][0][0] > budget.epochs - 1
    for method in ("sgd_hd", "hyperdyn", "pbt"):
        lrs = summaries[method]["lr_per_epoch"]
        assert lrs and all(lr > 0 for lr in lrs)
    assert summaries["sgd_hd"]["lr_per_epoch"][0] == pytest.approx(1e-3)
    assert summaries["random"]["lr_per_epoch"] is None

    out = tmp_path / "results"
    assert main(["report", "--storage", sqlite_url, "--out", str(out)]) == 0
    text = (out / "comparison.md").read_text()
    for method in METHODS_RUN:
        assert METHODS[method].label in text
    assert "## linear:" in text and "Paper 004's table" in text
    # The summary: a row per method, the problem as the column, each cell from the runs.
    summary = text[text.index("## Summary") : text.index("## linear:")]
    for method in METHODS_RUN:
        s = summaries[method]
        line = next(x for x in summary.splitlines() if x.startswith(f"| {METHODS[method].label} "))
        assert f"{100 * s['test_accuracy']:.2f}" in line
    assert "budget `tiny`" in text and "python -m benchmarks run" in text
    for name in ("comparison_best_so_far.png", "comparison_lr.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    payload = json.loads((out / "comparison.json").read_text())
    assert len(payload["runs"]) == len(METHODS_RUN)
    assert {r["method"] for r in payload["rows"]} == set(METHODS_RUN)

    # Running again skips the finished jobs: no study gets a new trial.
    before = _trial_counts(sqlite_url)
    config = RunConfig(
        storage=sqlite_url,
        jobs=tuple(make_jobs(list(METHODS_RUN), [PROBLEM], [0])),
        budget="tiny",
        progress=False,
    )
    again = work(config)
    assert again.ran == [] and again.finished_before == len(METHODS_RUN)
    assert _trial_counts(sqlite_url) == before
    # ... and the same storage refuses the same jobs at another budget.
    assert main([*argv[:2], "small", *argv[3:]]) == 2
    assert "budget 'tiny'" in capsys.readouterr().err


def test_several_workers_on_sqlite_are_refused(sqlite_url: str) -> None:
    config = RunConfig(
        storage=sqlite_url, jobs=tuple(make_jobs(["random"], [PROBLEM], [0])), budget="tiny"
    )
    with pytest.raises(ValueError, match="PostgreSQL"):
        run(config, workers=2)


def test_the_curve_the_target_and_convergence_from_events() -> None:
    events = [
        Event(1.0, 0.5, 1.0, 0),
        Event(1.0, 0.9, 2.0, 0),
        Event(1.0, 0.7, 3.0, 1),
        Event(1.0, 0.95, 4.0, 2),
        Event(0.5, None, 4.5, 3),
        Event(1.0, 0.953, 5.0, 3),
    ]
    curve, epochs, seconds = curve_and_marks(events, target=0.92)
    assert curve == [[1.0, 0.5], [2.0, 0.9], [4.0, 0.95], [5.5, 0.953]]
    assert (epochs, seconds) == (4.0, 4.0)
    assert curve_and_marks(events, target=0.99)[1:] == (None, None)
    # Trial 2 is within 0.5 points of the final best (trial 3's).
    assert trials_to_convergence(events) == 3
    assert trials_to_convergence([Event(1.0, None, 0.0, 0)]) is None


def test_the_t_interval() -> None:
    mean, half = report.t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert math.isnan(report.t_interval([1.0])[1])
