"""Name a study's objective for optuna-dashboard and ``trials_dataframe`` (``"Objective 0"``
tells a user nothing when the package knows what its trial values mean)."""

from __future__ import annotations

from typing import TYPE_CHECKING
import warnings

import optuna


if TYPE_CHECKING:
    from collections.abc import Sequence


def name_objectives(study: optuna.Study, names: Sequence[str]) -> None:
    """Set the study's objective names to ``names`` unless it already has names.

    Stored with :meth:`optuna.Study.set_metric_names` (the study system attr
    ``"study:metric_names"``), which optuna-dashboard shows in place of "Objective 0"
    (``optuna_dashboard.set_objective_names`` is deprecated in favour of it). Names that are
    already stored, by the user or an earlier run, are left as they are, so calling this on
    every resume writes once. ``trials_dataframe`` then names the value column after them.

    Args:
        study:
            The study.
        names:
            One name per objective of the study.
    """
    if study.metric_names is not None:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(names))
