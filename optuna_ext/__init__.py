"""optuna-ext: learning-rate-aware hyper-parameter optimization for deep networks, on Optuna.

The public classes live in role subpackages (:mod:`optuna_ext.samplers`,
:mod:`optuna_ext.pruners`, :mod:`optuna_ext.schedules`, :mod:`optuna_ext.metrics`,
:mod:`optuna_ext.optim`) and are re-exported here, so ``from optuna_ext import
AutoHyperSampler`` works. The drivers that run training themselves live in
:mod:`optuna_ext.hyperdyn` and :mod:`optuna_ext.pbt`; the training tasks shared by demos,
benchmarks and tests in :mod:`optuna_ext.tasks`.
"""

from __future__ import annotations

from optuna_ext import hyperdyn
from optuna_ext import metrics
from optuna_ext import optim
from optuna_ext import pbt
from optuna_ext import pruners
from optuna_ext import samplers
from optuna_ext import schedules
from optuna_ext import tasks
from optuna_ext._storage import load_or_create_study
from optuna_ext._storage import mask_url
from optuna_ext._storage import open_storage
from optuna_ext._storage import StorageError
from optuna_ext.hyperdyn import fit_hyperdyn
from optuna_ext.hyperdyn import HyperdynTuner
from optuna_ext.metrics import EVBMFResult
from optuna_ext.metrics import KnowledgeGainSnapshot
from optuna_ext.metrics import KnowledgeGainTracker
from optuna_ext.metrics import LayerKnowledgeGain
from optuna_ext.optim import AdamHD
from optuna_ext.optim import lr_range_test
from optuna_ext.optim import LRRangeTestResult
from optuna_ext.optim import SGDHD
from optuna_ext.pruners import MORLHyperbandPruner
from optuna_ext.pruners import MORLPruner
from optuna_ext.pruners import SynchronousMORL
from optuna_ext.pruners import SynchronousRound
from optuna_ext.samplers import AutoHyperEvaluation
from optuna_ext.samplers import AutoHyperResult
from optuna_ext.samplers import AutoHyperSampler
from optuna_ext.samplers import AutoHyperSearch
from optuna_ext.samplers import HyperdynSampler
from optuna_ext.samplers import PBTSampler
from optuna_ext.samplers import StorageSeededRandomSampler
from optuna_ext.schedules import RecurringLR
from optuna_ext.version import __version__


__all__ = [
    "AdamHD",
    "AutoHyperEvaluation",
    "AutoHyperResult",
    "AutoHyperSampler",
    "AutoHyperSearch",
    "EVBMFResult",
    "HyperdynSampler",
    "HyperdynTuner",
    "KnowledgeGainSnapshot",
    "KnowledgeGainTracker",
    "LRRangeTestResult",
    "LayerKnowledgeGain",
    "MORLHyperbandPruner",
    "MORLPruner",
    "PBTSampler",
    "RecurringLR",
    "SGDHD",
    "StorageSeededRandomSampler",
    "SynchronousMORL",
    "StorageError",
    "SynchronousRound",
    "__version__",
    "fit_hyperdyn",
    "hyperdyn",
    "load_or_create_study",
    "mask_url",
    "lr_range_test",
    "metrics",
    "open_storage",
    "optim",
    "pbt",
    "pruners",
    "samplers",
    "schedules",
    "tasks",
]
