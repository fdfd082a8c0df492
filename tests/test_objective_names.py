"""``name_objectives``: the study's objective names, set once, never over a user's."""

from __future__ import annotations

import warnings

import optuna

from optuna_ext._objective_names import name_objectives


def test_names_an_unnamed_study_once_and_keeps_a_users_names() -> None:
    study = optuna.create_study()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ExperimentalWarning reaches the user
        name_objectives(study, ["acc_diff"])
    assert study.metric_names == ["acc_diff"]
    name_objectives(study, ["other"])  # already named (by an earlier run): kept
    assert study.metric_names == ["acc_diff"]
    mine = optuna.create_study(directions=["maximize", "minimize"])
    mine.set_metric_names(["accuracy", "flops"])
    name_objectives(mine, ["a", "b"])
    assert mine.metric_names == ["accuracy", "flops"]
