"""Samplers: autoHyper's learning-rate search and Hyperdyn's per-epoch GP proposals."""

from __future__ import annotations

from optuna_ext.samplers._autohyper import AutoHyperResult
from optuna_ext.samplers._autohyper import AutoHyperSampler
from optuna_ext.samplers._autohyper import AutoHyperSearch
from optuna_ext.samplers._hyperdyn import HyperdynSampler


__all__ = ["AutoHyperResult", "AutoHyperSampler", "AutoHyperSearch", "HyperdynSampler"]
