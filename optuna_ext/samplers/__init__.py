"""Samplers: autoHyper's rate search, Hyperdyn's per-epoch proposals, population-based training,
and a random sampler whose draws survive a restart."""

from __future__ import annotations

from optuna_ext.samplers._autohyper import AutoHyperEvaluation
from optuna_ext.samplers._autohyper import AutoHyperResult
from optuna_ext.samplers._autohyper import AutoHyperSampler
from optuna_ext.samplers._autohyper import AutoHyperSearch
from optuna_ext.samplers._hyperdyn import HyperdynSampler
from optuna_ext.samplers._pbt import PBTSampler
from optuna_ext.samplers._storage_seeded import StorageSeededRandomSampler


__all__ = [
    "AutoHyperEvaluation",
    "AutoHyperResult",
    "AutoHyperSampler",
    "AutoHyperSearch",
    "HyperdynSampler",
    "PBTSampler",
    "StorageSeededRandomSampler",
]
