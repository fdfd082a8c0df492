"""Learning-rate schedules in pure torch (no Optuna import)."""

from __future__ import annotations

from optuna_ext.schedules._recurring import RecurringLR
from optuna_ext.schedules._recurring import ScheduleKind


__all__ = ["RecurringLR", "ScheduleKind"]
