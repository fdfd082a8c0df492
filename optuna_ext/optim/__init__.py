"""Optimizers that adapt their own learning rate, and a learning-rate range test (pure torch).

:class:`SGDHD` and :class:`AdamHD` are SGD and Adam with hypergradient descent on the
learning rate (Baydin et al., ICLR 2018): plain :class:`torch.optim.Optimizer` subclasses,
usable in any training loop and by name through :func:`optuna_ext.tasks.make_optimizer`
(``"sgd_hd"``, ``"adam_hd"``). :func:`lr_range_test` is Smith's range test (2017), a quick
way to choose an initial rate. No Optuna import in this package.
"""

from __future__ import annotations

from optuna_ext.optim._hypergradient import AdamHD
from optuna_ext.optim._hypergradient import SGDHD
from optuna_ext.optim._lr_range_test import lr_range_test
from optuna_ext.optim._lr_range_test import LRRangeTestResult
from optuna_ext.optim._lr_range_test import RULES
from optuna_ext.optim._lr_range_test import SUGGESTED_BY


__all__ = ["AdamHD", "LRRangeTestResult", "RULES", "SGDHD", "SUGGESTED_BY", "lr_range_test"]
