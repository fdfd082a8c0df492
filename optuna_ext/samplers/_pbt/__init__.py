"""Population-based training (PBT) and PB2 as an Optuna sampler: :class:`PBTSampler`.

The exploit/explore arithmetic is in :mod:`._explore` (pure, no Optuna), PB2's GP-UCB in
:mod:`._pb2`, the population rebuilt from the trials in :mod:`._population`. The harness that
trains the members, checkpoints them and runs several workers is :mod:`optuna_ext.pbt`.
"""

from __future__ import annotations

from optuna_ext.samplers._pbt.sampler import PBTSampler


__all__ = ["PBTSampler"]
