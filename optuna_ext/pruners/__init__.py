"""Pruners: MORL, successive halving with a recurring learning rate."""

from __future__ import annotations

from optuna_ext.pruners._morl import MORLPruner
from optuna_ext.pruners._morl_hyperband import MORLHyperbandPruner
from optuna_ext.pruners._synchronous import SynchronousMORL
from optuna_ext.pruners._synchronous import SynchronousRound


__all__ = ["MORLHyperbandPruner", "MORLPruner", "SynchronousMORL", "SynchronousRound"]
