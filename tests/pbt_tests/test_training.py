"""training_segment and run_digits: bad arguments are refused when the segment is built.

Before these checks a bad range or model surfaced in every member's first segment, as a
failure that :func:`optuna_ext.pbt.run` catches, and the run ended in PopulationFailedError.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest

from optuna_ext.pbt import run_digits
from optuna_ext.pbt import training_segment
from optuna_ext.tasks import make_teacher_data


@pytest.fixture(scope="module")
def points() -> Any:
    return make_teacher_data(teacher="2-3-1", n_samples=80)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            {"lr": (1.0, 1e-3)},
            r"`lr` is \(1.0, 0.001\), but must be finite with `0 < low <= high`",
        ),
        ({"lr": (0.0, 1.0)}, "`lr`.*`0 < low <= high`"),
        ({"lr": (float("nan"), 1.0)}, "`lr`"),
        ({"lr": 0.1}, r"`lr` is 0.1, but must be a pair `\(low, high\)`"),
        ({"momentum": (0.0, 1.5)}, "`momentum`.*`0 <= low <= high < 1`"),
        ({"momentum": (-0.1, 0.5)}, "`momentum`"),
        ({"weight_decay": (0.0, 1e-2)}, "`weight_decay`.*`0 < low <= high`"),
        ({"weight_decay": (1e-6, float("inf"))}, "`weight_decay`"),
        ({"model": "nope"}, "`name` is 'nope'"),
        ({"model": "cnn"}, "image inputs"),  # the CNN does not fit 2-D points
        ({"batch_size": 0}, "batch_size"),
        ({"epochs_per_generation": 0}, "epochs_per_generation"),
    ],
)
def test_bad_segment_arguments(points: Any, kwargs: dict[str, Any], match: str) -> None:
    arguments: dict[str, Any] = {"model": "mlp-2-3-1", **kwargs}
    with pytest.raises(ValueError, match=match):
        training_segment(points, **arguments)


def test_good_ranges_are_accepted(points: Any) -> None:
    segment = training_segment(
        points, model="mlp-2-3-1", lr=(0.1, 0.1), momentum=(0.0, 0.0), weight_decay=(1e-4, 1e-3)
    )
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    state: dict[str, Any] = {}
    accuracy = segment(trial, state)
    assert 0.0 <= accuracy <= 1.0 and trial.params["lr"] == 0.1 and state


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"population_size": 1}, "population_size"),
        ({"n_generations": 0}, "n_generations"),
        ({"timeout": float("nan")}, "`timeout` is nan"),
        ({"model": "vgg"}, "image inputs"),
    ],
)
def test_bad_run_digits_arguments_start_nothing(
    points: Any, tmp_path: Path, kwargs: dict[str, Any], match: str
) -> None:
    storage = f"sqlite:///{tmp_path / 'runs.db'}"
    arguments: dict[str, Any] = {"model": "mlp-2-3-1", **kwargs}
    with pytest.raises(ValueError, match=match):
        run_digits(storage=storage, artifact_store=tmp_path / "a", data=points, **arguments)
    assert not (tmp_path / "runs.db").exists()  # refused before the storage was opened


def test_run_digits_names_the_objective_valid_accuracy(points: Any, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'runs.db'}"
    arguments: dict[str, Any] = {"population_size": 2, "n_generations": 1, "model": "mlp-2-3-1"}
    run_digits(storage=storage, artifact_store=tmp_path / "a", data=points, **arguments)
    study = optuna.load_study(study_name="pbt-digits", storage=storage)
    assert study.metric_names == ["valid_accuracy"]
    # A name set by the user is kept when the run is resumed.
    study.set_metric_names(["accuracy"])
    run_digits(storage=storage, artifact_store=tmp_path / "a", data=points, **arguments)
    assert optuna.load_study(study_name="pbt-digits", storage=storage).metric_names == ["accuracy"]
