from __future__ import annotations

from optuna_ext.samplers._autohyper._search import AutoHyperSearch
from optuna_ext.samplers._autohyper.sampler import AutoHyperResult
from optuna_ext.samplers._autohyper.sampler import AutoHyperSampler


__all__ = ["AutoHyperResult", "AutoHyperSampler", "AutoHyperSearch"]
