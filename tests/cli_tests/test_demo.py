from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import optuna
import pytest

from optuna_ext.cli import main
from optuna_ext.cli._demo import BUDGETS
from optuna_ext.cli._demo import DEMOS


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "optuna_ext.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def test_help_on_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["demo", "--help"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: optuna-ext" in out
    assert "--storage" in out and "--budget" in out


@pytest.mark.parametrize(
    "url",
    ["postgresql+psycopg://alice:hunter2@127.0.0.1:1/runs", "nonsense://alice:hunter2@@"],
)
def test_bad_storage_is_one_line_exit_2_without_password(url: str) -> None:
    proc = _run_cli("demo", "--budget", "tiny", "--storage", url)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "hunter2" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("optuna-ext: error:")
    assert "alice:***@" in lines[0]


def test_unknown_method_exit_2(capsys: pytest.CaptureFixture[str], sqlite_url: str) -> None:
    assert main(["demo", "--storage", sqlite_url, "--methods", "nope"]) == 2
    assert "unknown method" in capsys.readouterr().err


def test_direction_clash_is_refused(capsys: pytest.CaptureFixture[str], sqlite_url: str) -> None:
    optuna.create_study(study_name="demo-tpe", storage=sqlite_url, direction="minimize")
    argv = ["demo", "--storage", sqlite_url, "--budget", "tiny", "--methods", "tpe"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "'demo-tpe' that is to minimize" in err


def _check_demo_storage(url: str, artifacts: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["demo", "--storage", url, "--budget", "tiny", "--no-progress", "--seed", "3"]
    argv += ["--artifact-dir", artifacts]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| method" in out
    assert "optuna-dashboard" in out
    budget = BUDGETS["tiny"]
    names = sorted(optuna.get_all_study_names(storage=url))
    assert {f"demo-{m}" for m in DEMOS} <= set(names)
    for name in names:
        trials = optuna.load_study(study_name=name, storage=url).get_trials()
        assert len(trials) >= budget.n_trials, name
        # Every trial was told (a diverging Hyperdyn candidate may be FAIL, by design).
        assert all(t.state.is_finished() for t in trials), name
        # optuna-dashboard shows these names instead of "Objective 0".
        metric_names = optuna.load_study(study_name=name, storage=url).metric_names
        assert metric_names == (["acc_diff"] if name == "demo-hyperdyn" else ["valid_accuracy"])
    tpe = optuna.load_study(study_name="demo-tpe", storage=url)
    assert all(len(t.intermediate_values) == budget.epochs for t in tpe.trials)
    counts = {n: len(optuna.load_study(study_name=n, storage=url).trials) for n in names}
    # A second run on the same storage resumes: the budget is met, nothing new is run.
    assert main(argv) == 0
    assert {n: len(optuna.load_study(study_name=n, storage=url).trials) for n in names} == counts


@pytest.mark.slow
def test_demo_on_sqlite(sqlite_url: str, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    _check_demo_storage(sqlite_url, str(tmp_path / "artifacts"), capsys)


@pytest.mark.slow
def test_demo_on_postgres(postgres_url: str, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    _check_demo_storage(postgres_url, str(tmp_path / "artifacts"), capsys)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["tpe", "morl"])
def test_a_resumed_demo_does_not_redraw_the_first_runs_configurations(
    method: str, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first run stops after 2 trials per study; the resumed one is asked for 4. A TPE
    # sampler seeded as before would draw the same random startup configurations again.
    argv = ["demo", "--storage", sqlite_url, "--budget", "tiny", "--no-progress"]
    argv += ["--methods", method]
    tiny = BUDGETS["tiny"]
    monkeypatch.setitem(BUDGETS, "tiny", dataclasses.replace(tiny, n_trials=2))
    assert main(argv) == 0
    monkeypatch.setitem(BUDGETS, "tiny", dataclasses.replace(tiny, n_trials=4))
    assert main(argv) == 0
    names = ["demo-tpe"] if method == "tpe" else ["demo-sha", "demo-morl"]
    for name in names:
        trials = optuna.load_study(study_name=name, storage=sqlite_url).trials
        assert len(trials) == 4, name
        first, resumed = [t.params for t in trials[:2]], [t.params for t in trials[2:]]
        assert not any(p in first for p in resumed), (name, first, resumed)
