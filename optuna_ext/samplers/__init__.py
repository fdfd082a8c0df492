"""Samplers: autoHyper's learning-rate search (:class:`AutoHyperSampler`)."""

from __future__ import annotations

from optuna_ext.samplers._autohyper import AutoHyperResult
from optuna_ext.samplers._autohyper import AutoHyperSampler
from optuna_ext.samplers._autohyper import AutoHyperSearch


__all__ = ["AutoHyperResult", "AutoHyperSampler", "AutoHyperSearch"]
