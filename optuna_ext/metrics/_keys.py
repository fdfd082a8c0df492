"""Trial user-attribute keys written by the metrics in this package.

They are public (re-exported from :mod:`optuna_ext.metrics`) because samplers and users read
them back from the storage.
"""

from __future__ import annotations


KNOWLEDGE_GAIN_Z_KEY = "knowledge_gain:Z"
"""Mean over the tracked epochs of the rank measure Z_t (a float in [0, 1])."""

KNOWLEDGE_GAIN_Z_PER_EPOCH_KEY = "knowledge_gain:Z_per_epoch"
"""The per-epoch values Z_t, a list of floats, one per tracked epoch."""

KNOWLEDGE_GAIN_LAYERS_KEY = "knowledge_gain:layers"
"""A compact per-layer summary of the last tracked epoch (see ``KnowledgeGainTracker``)."""
