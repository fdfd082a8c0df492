from __future__ import annotations

from optuna_ext.samplers._autohyper._search import AutoHyperEvaluation
from optuna_ext.samplers._autohyper._search import AutoHyperSearch
from optuna_ext.samplers._autohyper.sampler import AutoHyperResult
from optuna_ext.samplers._autohyper.sampler import AutoHyperSampler


__all__ = ["AutoHyperEvaluation", "AutoHyperResult", "AutoHyperSampler", "AutoHyperSearch"]
