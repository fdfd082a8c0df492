"""Population-based training on Optuna: the harness around ``PBTSampler``.

:func:`run` trains a population segment by segment: it claims member trials, loads and saves
checkpoints in Optuna's artifact store, reports scores, removes checkpoints nobody can clone any
more, and works with several worker processes on one database. :func:`lineage`,
:func:`format_lineage`, :func:`plot_lineage` and :func:`plot_schedule` read the result back;
:func:`training_segment` and :func:`run_digits` train the package's task models.
"""

from __future__ import annotations

from optuna_ext.pbt._harness import PBTResult
from optuna_ext.pbt._harness import PopulationFailedError
from optuna_ext.pbt._harness import run
from optuna_ext.pbt._harness import SegmentFunction
from optuna_ext.pbt._lineage import best_member_trial
from optuna_ext.pbt._lineage import format_lineage
from optuna_ext.pbt._lineage import lineage
from optuna_ext.pbt._lineage import LINEAGE_PLOT_ID
from optuna_ext.pbt._lineage import plot_lineage
from optuna_ext.pbt._lineage import plot_schedule
from optuna_ext.pbt._lineage import save_dashboard_plots
from optuna_ext.pbt._lineage import schedule
from optuna_ext.pbt._lineage import SCHEDULE_PLOT_ID
from optuna_ext.pbt._training import load_training_state
from optuna_ext.pbt._training import run_digits
from optuna_ext.pbt._training import store_training_state
from optuna_ext.pbt._training import training_segment


__all__ = [
    "LINEAGE_PLOT_ID",
    "PBTResult",
    "PopulationFailedError",
    "SCHEDULE_PLOT_ID",
    "SegmentFunction",
    "best_member_trial",
    "format_lineage",
    "lineage",
    "load_training_state",
    "plot_lineage",
    "plot_schedule",
    "run",
    "run_digits",
    "save_dashboard_plots",
    "schedule",
    "store_training_state",
    "training_segment",
]
