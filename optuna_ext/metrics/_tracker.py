"""Per-epoch tracking of the knowledge-gain rank measure Z and reporting to a trial."""

from __future__ import annotations

from typing import Any
from typing import TYPE_CHECKING

import torch

from optuna_ext.metrics._evbmf import _DEFAULT_RTOL
from optuna_ext.metrics._evbmf import _validate_options
from optuna_ext.metrics._keys import KNOWLEDGE_GAIN_LAYERS_KEY
from optuna_ext.metrics._keys import KNOWLEDGE_GAIN_Z_KEY
from optuna_ext.metrics._keys import KNOWLEDGE_GAIN_Z_PER_EPOCH_KEY
from optuna_ext.metrics._knowledge_gain import _knowledge_gains
from optuna_ext.metrics._knowledge_gain import _tracked_weights
from optuna_ext.metrics._knowledge_gain import _validate_p
from optuna_ext.metrics._knowledge_gain import KnowledgeGainSnapshot


if TYPE_CHECKING:
    from typing import Protocol

    from torch import nn

    class _TrialLike(Protocol):
        def set_user_attr(self, key: str, value: Any) -> None: ...


_LAYER_SUMMARY_DIGITS = 3


def _short_name(name: str) -> str:
    return name[: -len(".weight")] if name.endswith(".weight") else name


class KnowledgeGainTracker:
    """Track autoHyper's rank measure :math:`Z_t` over the epochs of a training run.

    Call the tracker at the end of each epoch (after the training pass). It computes the
    knowledge gains of the model's convolution weights with
    :func:`~optuna_ext.metrics.knowledge_gain_rank` and keeps :math:`Z_t` and the per-layer gains
    of every call. :math:`Z`, the paper's average over the :math:`T` tracked epochs (eq. 4), is
    :attr:`z`; autoHyper uses :math:`T = 5`. :meth:`report` writes it to an Optuna trial's user
    attributes.

    Example:

        .. testcode::

            import optuna
            import torch

            from optuna_ext.metrics import KNOWLEDGE_GAIN_Z_KEY
            from optuna_ext.metrics import KnowledgeGainTracker


            def objective(trial):
                torch.manual_seed(0)
                model = torch.nn.Sequential(
                    torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3)
                )
                tracker = KnowledgeGainTracker(model)
                for epoch in range(2):
                    ...  # train one epoch
                    tracker()
                tracker.report(trial)
                return tracker.z


            study = optuna.create_study()
            study.optimize(objective, n_trials=1)
            assert study.trials[0].user_attrs[KNOWLEDGE_GAIN_Z_KEY] == 1.0

    Args:
        model:
            The network. It must have at least one convolution weight (4-D parameter), or, with
            ``include_linear``, a 2-D one; otherwise a :class:`ValueError` is raised here.
        p:
            1 or 2; see :func:`~optuna_ext.metrics.knowledge_gain_rank`.
        tall_policy:
            ``"transpose"`` or ``"reference"``; see :func:`~optuna_ext.metrics.evbmf`.
        rescale:
            See :func:`~optuna_ext.metrics.evbmf`.
        include_linear:
            Also track 2-D (linear) weights; see :func:`~optuna_ext.metrics.knowledge_gain_rank`.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        p: int = 1,
        tall_policy: str = "transpose",
        rescale: bool = True,
        include_linear: bool = False,
    ) -> None:
        _validate_p(p)
        _validate_options(tall_policy, _DEFAULT_RTOL, 0.0, "gram")
        _tracked_weights(model, include_linear)  # raises when nothing would be tracked
        self._model = model
        self._p = p
        self._tall_policy = tall_policy
        self._rescale = rescale
        self._include_linear = include_linear
        self._snapshots: list[KnowledgeGainSnapshot] = []

    def update(self) -> float:
        """Measure the model now (at the end of an epoch) and return this epoch's :math:`Z_t`."""
        with torch.no_grad():
            snapshot = _knowledge_gains(
                _tracked_weights(self._model, self._include_linear),
                p=self._p,
                tall_policy=self._tall_policy,
                rescale=self._rescale,
            )
        self._snapshots.append(snapshot)
        return snapshot.z

    def __call__(self) -> float:
        """Same as :meth:`update`."""
        return self.update()

    @property
    def snapshots(self) -> list[KnowledgeGainSnapshot]:
        """The full measurement of each tracked epoch, oldest first."""
        return list(self._snapshots)

    @property
    def z_per_epoch(self) -> list[float]:
        """:math:`Z_t` of each tracked epoch, oldest first."""
        return [snapshot.z for snapshot in self._snapshots]

    @property
    def z(self) -> float:
        """:math:`Z`, the mean of :math:`Z_t` over the tracked epochs.

        Raises:
            ValueError: If no epoch has been tracked yet.
        """
        self._check_tracked()
        return sum(self.z_per_epoch) / len(self._snapshots)

    @property
    def layer_gains(self) -> dict[str, list[tuple[float, float]]]:
        """Per layer name, the knowledge gains :math:`(G_3, G_4)` of each tracked epoch."""
        gains: dict[str, list[tuple[float, float]]] = {}
        for snapshot in self._snapshots:
            for layer in snapshot.layers:
                gains.setdefault(layer.name, []).append((layer.gain3, layer.gain4))
        return gains

    def report(self, trial: _TrialLike) -> None:
        """Write :math:`Z`, the per-epoch :math:`Z_t` and a per-layer summary to a trial.

        The user attributes are:

        - :data:`~optuna_ext.metrics.KNOWLEDGE_GAIN_Z_KEY`: :attr:`z`, a float;
        - :data:`~optuna_ext.metrics.KNOWLEDGE_GAIN_Z_PER_EPOCH_KEY`: :attr:`z_per_epoch`;
        - :data:`~optuna_ext.metrics.KNOWLEDGE_GAIN_LAYERS_KEY`: for the last tracked epoch only,
          ``{layer name without ".weight": [G_3, G_4]}`` with the gains rounded to 3 decimals
          (kept small, because large user attributes slow the dashboard down).

        Args:
            trial:
                An :class:`optuna.trial.Trial`, or any object with a ``set_user_attr(key, value)``
                method.

        Raises:
            ValueError: If no epoch has been tracked yet.
        """
        self._check_tracked()
        last = self._snapshots[-1]
        layers = {
            _short_name(layer.name): [
                round(layer.gain3, _LAYER_SUMMARY_DIGITS),
                round(layer.gain4, _LAYER_SUMMARY_DIGITS),
            ]
            for layer in last.layers
        }
        trial.set_user_attr(KNOWLEDGE_GAIN_Z_KEY, self.z)
        trial.set_user_attr(KNOWLEDGE_GAIN_Z_PER_EPOCH_KEY, self.z_per_epoch)
        trial.set_user_attr(KNOWLEDGE_GAIN_LAYERS_KEY, layers)

    def _check_tracked(self) -> None:
        if not self._snapshots:
            raise ValueError(
                "No epoch has been tracked yet; call the tracker at the end of each epoch first."
            )
