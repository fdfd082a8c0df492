"""Metrics computed from a network's weights during training.

The knowledge gain of AdaS and the rank measure Z of autoHyper, from an empirical variational
Bayesian matrix factorization (EVBMF) of the convolution weights, in pure torch.
"""

from __future__ import annotations

from optuna_ext.metrics._evbmf import evbmf
from optuna_ext.metrics._evbmf import evbmf_batch
from optuna_ext.metrics._evbmf import evbmf_rank
from optuna_ext.metrics._evbmf import EVBMFResult
from optuna_ext.metrics._keys import KNOWLEDGE_GAIN_LAYERS_KEY
from optuna_ext.metrics._keys import KNOWLEDGE_GAIN_Z_KEY
from optuna_ext.metrics._keys import KNOWLEDGE_GAIN_Z_PER_EPOCH_KEY
from optuna_ext.metrics._knowledge_gain import knowledge_gain_rank
from optuna_ext.metrics._knowledge_gain import KnowledgeGainSnapshot
from optuna_ext.metrics._knowledge_gain import LayerKnowledgeGain
from optuna_ext.metrics._knowledge_gain import unfold
from optuna_ext.metrics._tracker import KnowledgeGainTracker


__all__ = [
    "EVBMFResult",
    "KNOWLEDGE_GAIN_LAYERS_KEY",
    "KNOWLEDGE_GAIN_Z_KEY",
    "KNOWLEDGE_GAIN_Z_PER_EPOCH_KEY",
    "KnowledgeGainSnapshot",
    "KnowledgeGainTracker",
    "LayerKnowledgeGain",
    "evbmf",
    "evbmf_batch",
    "evbmf_rank",
    "knowledge_gain_rank",
    "unfold",
]
