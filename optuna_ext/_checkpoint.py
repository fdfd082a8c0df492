"""Model and optimizer checkpoints in Optuna's artifact store.

The online tuner (Hyperdyn), the population-based-training harness and MORL's synchronous
runner keep training state between epochs, rounds or generations. They store it as artifacts
of the trial (or study) it belongs to, so that any process sharing the storage and the artifact
store can resume from it, and optuna-dashboard lists it. Checkpoints hold tensors and plain
Python values only and are loaded with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

from collections.abc import Mapping
import io
import os
import tempfile
import threading
from typing import Any
from typing import BinaryIO
from typing import TYPE_CHECKING

import optuna
import torch


if TYPE_CHECKING:
    from optuna.artifacts._protocol import ArtifactStore
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial
    from optuna.trial import Trial


CHECKPOINT_MIMETYPE = "application/x-pytorch"


class CheckpointError(RuntimeError):
    """A checkpoint artifact that is missing or cannot be loaded; the message names it."""


class MemoryArtifactStore:
    """An artifact store that keeps artifacts in memory (for one process, e.g. a quick demo).

    It follows Optuna's ``ArtifactStore`` protocol (``open_reader``, ``write``, ``remove``;
    a missing artifact raises :class:`optuna.artifacts.exceptions.ArtifactNotFound`) and is
    safe to share between threads. A run that should survive its process needs a persistent
    store such as :class:`optuna.artifacts.FileSystemArtifactStore`. Also importable as
    ``optuna_ext.hyperdyn.MemoryArtifactStore``.

    Example:

        .. testcode::

            import optuna
            import torch

            from optuna_ext._checkpoint import load_checkpoint
            from optuna_ext._checkpoint import MemoryArtifactStore
            from optuna_ext._checkpoint import save_checkpoint

            store = MemoryArtifactStore()
            study = optuna.create_study()
            artifact_id = save_checkpoint(
                {"w": torch.ones(2)}, artifact_store=store, study_or_trial=study
            )
            state = load_checkpoint(artifact_store=store, artifact_id=artifact_id)
            assert torch.equal(state["w"], torch.ones(2))
    """

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def open_reader(self, artifact_id: str) -> BinaryIO:
        with self._lock:
            if artifact_id not in self._data:
                raise optuna.artifacts.exceptions.ArtifactNotFound(
                    f"Artifact '{artifact_id}' is not in the memory store."
                )
            return io.BytesIO(self._data[artifact_id])

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        payload = content_body.read()
        with self._lock:
            self._data[artifact_id] = payload

    def remove(self, artifact_id: str) -> None:
        with self._lock:
            if artifact_id not in self._data:
                raise optuna.artifacts.exceptions.ArtifactNotFound(
                    f"Artifact '{artifact_id}' is not in the memory store."
                )
            del self._data[artifact_id]


def save_checkpoint(
    state: Mapping[str, Any],
    *,
    artifact_store: ArtifactStore,
    study_or_trial: optuna.Study | Trial | FrozenTrial,
    storage: BaseStorage | None = None,
    filename: str = "checkpoint.pt",
) -> str:
    """Save ``state`` (e.g. model and optimizer state dicts) as an artifact; return its id.

    Args:
        state: Tensors, numbers, strings, lists and dicts of them (what ``torch.save`` writes
            and ``torch.load(weights_only=True)`` reads back).
        artifact_store: Any Optuna artifact store, e.g.
            :class:`optuna.artifacts.FileSystemArtifactStore`.
        study_or_trial: The study or trial the checkpoint belongs to (listed in the dashboard
            under it).
        storage: Required when ``study_or_trial`` is a ``FrozenTrial``.
        filename: The artifact's file name, as shown in the dashboard.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, filename)
        torch.save(dict(state), path)
        return optuna.artifacts.upload_artifact(
            artifact_store=artifact_store,
            file_path=path,
            study_or_trial=study_or_trial,
            storage=storage,
            mimetype=CHECKPOINT_MIMETYPE,
        )


def load_checkpoint(
    *,
    artifact_store: ArtifactStore,
    artifact_id: str,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Load a checkpoint saved by :func:`save_checkpoint` (``weights_only=True``).

    Raises:
        CheckpointError: The artifact is missing from the store, or is not a checkpoint (a
            corrupt or truncated file, or one holding objects other than tensors and plain
            values). The message names the artifact id.
    """
    try:
        with artifact_store.open_reader(artifact_id) as reader:
            payload = reader.read()
    except Exception as e:
        raise CheckpointError(
            f"Checkpoint artifact '{artifact_id}' cannot be read from the artifact store "
            f"({type(e).__name__}: {e})."
        ) from e
    try:
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"Checkpoint artifact '{artifact_id}' is corrupt or not a checkpoint "
            f"({type(e).__name__}: {' '.join(str(e).split())[:200]})."
        ) from e
    if not isinstance(state, dict):
        raise CheckpointError(
            f"Checkpoint artifact '{artifact_id}' holds a {type(state).__name__}, not a dict."
        )
    return state


def remove_checkpoint(*, artifact_store: ArtifactStore, artifact_id: str) -> None:
    """Remove a checkpoint's file from the store; a checkpoint already gone is not an error.

    The artifact's metadata stays in the trial's system attrs (Optuna has no API to delete
    it), so the dashboard keeps listing it.
    """
    try:
        artifact_store.remove(artifact_id)
    except optuna.artifacts.exceptions.ArtifactNotFound:
        pass
