"""Hyperdyn: online learning-rate tuning of one training run (paper 002, ICLR 2018 submission).

:class:`HyperdynTuner` is the driver of Algorithm 4 (Random-Start, then per epoch the
incumbent rate against a GP proposal of :class:`~optuna_ext.samplers.HyperdynSampler`, and
the wait-and-watch test :func:`check_accuracy_trend`); :func:`fit_hyperdyn` runs it on a
task of :mod:`optuna_ext.tasks` in one call.
"""

from __future__ import annotations

from optuna_ext._checkpoint import MemoryArtifactStore  # here for compatibility
from optuna_ext.hyperdyn._fit import fit_hyperdyn
from optuna_ext.hyperdyn._fit import make_task_functions
from optuna_ext.hyperdyn._trend import check_accuracy_trend
from optuna_ext.hyperdyn._trend import keep_probability
from optuna_ext.hyperdyn._tuner import default_search_space
from optuna_ext.hyperdyn._tuner import HyperdynResult
from optuna_ext.hyperdyn._tuner import HyperdynTuner
from optuna_ext.hyperdyn._tuner import PLOT_ID
from optuna_ext.hyperdyn._tuner import set_optimizer_params
from optuna_ext.hyperdyn._tuner import TREND_TESTS


__all__ = [
    "HyperdynResult",
    "HyperdynTuner",
    "MemoryArtifactStore",
    "PLOT_ID",
    "TREND_TESTS",
    "check_accuracy_trend",
    "default_search_space",
    "fit_hyperdyn",
    "keep_probability",
    "make_task_functions",
    "set_optimizer_params",
]
