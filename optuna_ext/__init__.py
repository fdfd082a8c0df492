"""optuna-ext: learning-rate-aware hyper-parameter optimization for deep networks, on Optuna.

The public classes live in role subpackages (:mod:`optuna_ext.samplers`,
:mod:`optuna_ext.pruners`, :mod:`optuna_ext.schedules`, :mod:`optuna_ext.metrics`) and are
re-exported here, so ``from optuna_ext import AutoHyperSampler`` works.
"""

from __future__ import annotations

from optuna_ext import metrics
from optuna_ext import pruners
from optuna_ext import samplers
from optuna_ext import schedules
from optuna_ext import tasks
from optuna_ext.version import __version__


__all__ = [
    "__version__",
    "metrics",
    "pruners",
    "samplers",
    "schedules",
    "tasks",
]
