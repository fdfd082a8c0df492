"""The lineage readers on a study that has no PBT member: empty answers, no error."""

from __future__ import annotations

import optuna

from optuna_ext import pbt


def test_readers_of_a_study_without_members() -> None:
    study = optuna.create_study()
    study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=2)
    assert pbt.lineage(study) == []
    assert pbt.best_member_trial(study) is None
    assert pbt.schedule(study) == []
    assert pbt.format_lineage(study).splitlines() == [
        "gen  member  trial   score      params  action"
    ]
    figure = pbt.plot_lineage(study)
    assert all(len(trace.x or ()) == 0 for trace in figure.data)  # legend entries only
    pbt.save_dashboard_plots(study)  # figures with nothing in them, no error
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
