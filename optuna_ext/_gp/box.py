"""The search box of the tuned parameters and its map to the unit cube.

Each parameter is mapped affinely to ``[0, 1]``: ``(v - low) / (high - low)`` for a linear one
and ``(log v - log low) / (log high - log low)`` for a log one (paper 002 tunes the learning
rate; a log scale is the usual reading). The GP's length scales are then comparable across
parameters. This module does not import Optuna.
"""

from __future__ import annotations

from collections.abc import Sequence
import math

import numpy as np


class UnitBox:
    """An axis-aligned box of parameters, some on a log scale, and its map to ``[0, 1]**d``.

    Example:

        .. testcode::

            import numpy as np
            from optuna_ext._gp.box import UnitBox

            box = UnitBox(lows=[1e-4, 0.0], highs=[1.0, 0.99], logs=[True, False])
            u = box.to_unit(np.array([[1e-2, 0.495]]))
            print(np.round(u, 6))

        .. testoutput::

            [[0.5 0.5]]

    Args:
        lows: The lower bound of each parameter.
        highs: The upper bound of each parameter, ``> low``.
        logs: Whether each parameter is on a log scale; its bounds must then be ``> 0``.
    """

    def __init__(
        self, *, lows: Sequence[float], highs: Sequence[float], logs: Sequence[bool]
    ) -> None:
        if not (len(lows) == len(highs) == len(logs)):
            raise ValueError(
                f"The lengths of `lows`, `highs` and `logs` are {len(lows)}, {len(highs)} and "
                f"{len(logs)}, but must be equal."
            )
        for i, (low, high, log) in enumerate(zip(lows, highs, logs, strict=True)):
            if not (math.isfinite(low) and math.isfinite(high)):
                raise ValueError(
                    f"The bounds of parameter {i} are ({low}, {high}), but must be finite."
                )
            if not low < high:
                raise ValueError(
                    f"The bounds of parameter {i} are ({low}, {high}), but must be `low < high`."
                )
            if log and low <= 0.0:
                raise ValueError(
                    f"The bounds of log parameter {i} are ({low}, {high}), but must be "
                    "`0 < low < high` (a log scale needs positive bounds)."
                )
        self.logs = np.asarray(logs, dtype=bool)
        self.lows = np.asarray(lows, dtype=np.float64)
        self.highs = np.asarray(highs, dtype=np.float64)
        self._lo = np.where(self.logs, np.log(np.where(self.logs, self.lows, 1.0)), self.lows)
        self._hi = np.where(self.logs, np.log(np.where(self.logs, self.highs, 1.0)), self.highs)

    @property
    def dim(self) -> int:
        """The number of parameters."""
        return len(self.lows)

    def to_unit(self, values: np.ndarray) -> np.ndarray:
        """Map parameter values of shape ``(..., dim)`` into ``[0, 1]**dim`` (clipped)."""
        values = np.asarray(values, dtype=np.float64)
        safe = np.where(self.logs, np.maximum(values, np.where(self.logs, self.lows, 0.0)), values)
        scaled = np.where(self.logs, np.log(np.where(self.logs, safe, 1.0)), values)
        return np.clip((scaled - self._lo) / (self._hi - self._lo), 0.0, 1.0)

    def from_unit(self, unit: np.ndarray) -> np.ndarray:
        """Map points of ``[0, 1]**dim`` back to parameter values (clipped to the bounds)."""
        unit = np.clip(np.asarray(unit, dtype=np.float64), 0.0, 1.0)
        scaled = self._lo + unit * (self._hi - self._lo)
        values = np.where(self.logs, np.exp(scaled), scaled)
        return np.clip(values, self.lows, self.highs)
