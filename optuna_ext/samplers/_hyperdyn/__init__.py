from __future__ import annotations

from optuna_ext.samplers._hyperdyn.sampler import HyperdynSampler


__all__ = ["HyperdynSampler"]
