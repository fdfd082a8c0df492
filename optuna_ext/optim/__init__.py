"""Optimizers that adapt their own learning rate, and a learning-rate range test (pure torch).

:class:`SGDHD` and :class:`AdamHD` are SGD and Adam with hypergradient descent on the
learning rate (Baydin et al., ICLR 2018). No Optuna import: these are plain
:class:`torch.optim.Optimizer` subclasses, usable in any training loop and by name through
:func:`optuna_ext.tasks.make_optimizer` (``"sgd_hd"``, ``"adam_hd"``).
"""

from __future__ import annotations

from optuna_ext.optim._hypergradient import AdamHD
from optuna_ext.optim._hypergradient import SGDHD


__all__ = ["AdamHD", "SGDHD"]
