from __future__ import annotations

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.artifacts import get_all_artifact_meta
import pytest
import torch

from optuna_ext._checkpoint import CHECKPOINT_MIMETYPE
from optuna_ext._checkpoint import CheckpointError
from optuna_ext._checkpoint import load_checkpoint
from optuna_ext._checkpoint import MemoryArtifactStore
from optuna_ext._checkpoint import remove_checkpoint
from optuna_ext._checkpoint import save_checkpoint


@pytest.fixture
def store(tmp_path) -> FileSystemArtifactStore:
    (tmp_path / "artifacts").mkdir()
    return FileSystemArtifactStore(tmp_path / "artifacts")


def _model_and_optimizer() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(4, 3)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_round_trip_restores_model_and_optimizer(store, sqlite_url: str) -> None:
    study = optuna.create_study(storage=sqlite_url)
    trial = study.ask()
    model, optimizer = _model_and_optimizer()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 3}
    artifact_id = save_checkpoint(state, artifact_store=store, study_or_trial=trial)

    metas = get_all_artifact_meta(trial)
    assert [m.artifact_id for m in metas] == [artifact_id]
    assert metas[0].mimetype == CHECKPOINT_MIMETYPE

    loaded = load_checkpoint(artifact_store=store, artifact_id=artifact_id)
    assert loaded["epoch"] == 3
    fresh, fresh_optimizer = torch.nn.Linear(3, 2), None
    fresh.load_state_dict(loaded["model"])
    for a, b in zip(fresh.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)
    fresh_optimizer = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    fresh_optimizer.load_state_dict(loaded["optimizer"])
    buffers = [s["momentum_buffer"] for s in fresh_optimizer.state.values()]
    expected = [s["momentum_buffer"] for s in optimizer.state.values()]
    assert all(torch.equal(a, b) for a, b in zip(buffers, expected, strict=True))


def test_frozen_trial_with_storage(store) -> None:
    """A sampler holds a running trial as a FrozenTrial: the storage must come along."""
    study = optuna.create_study()
    frozen = study._storage.get_trial(study.ask()._trial_id)
    artifact_id = save_checkpoint(
        {"x": torch.zeros(1)},
        artifact_store=store,
        study_or_trial=frozen,
        storage=study._storage,
    )
    assert load_checkpoint(artifact_store=store, artifact_id=artifact_id)["x"].shape == (1,)


def test_missing_checkpoint_names_the_artifact(store) -> None:
    with pytest.raises(CheckpointError, match="'no-such-id' cannot be read"):
        load_checkpoint(artifact_store=store, artifact_id="no-such-id")


def test_corrupt_checkpoint_names_the_artifact(store, tmp_path) -> None:
    study = optuna.create_study()
    artifact_id = save_checkpoint({"x": torch.ones(2)}, artifact_store=store, study_or_trial=study)
    path = tmp_path / "artifacts" / artifact_id
    path.write_bytes(path.read_bytes()[:20])  # truncated
    with pytest.raises(CheckpointError, match=f"'{artifact_id}' is corrupt"):
        load_checkpoint(artifact_store=store, artifact_id=artifact_id)


def test_pickled_objects_are_refused(store, tmp_path) -> None:
    """weights_only=True: a checkpoint holding arbitrary objects does not load."""
    study = optuna.create_study()
    artifact_id = save_checkpoint(
        {"obj": optuna.distributions.FloatDistribution(0, 1)},
        artifact_store=store,
        study_or_trial=study,
    )
    with pytest.raises(CheckpointError, match="corrupt or not a checkpoint"):
        load_checkpoint(artifact_store=store, artifact_id=artifact_id)


def test_remove_is_idempotent(store) -> None:
    study = optuna.create_study()
    artifact_id = save_checkpoint({"x": torch.ones(1)}, artifact_store=store, study_or_trial=study)
    remove_checkpoint(artifact_store=store, artifact_id=artifact_id)
    remove_checkpoint(artifact_store=store, artifact_id=artifact_id)
    with pytest.raises(CheckpointError):
        load_checkpoint(artifact_store=store, artifact_id=artifact_id)


class _Exploit:
    """A pickle payload that runs code when unpickled: it creates ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.path, "w"))


def _upload_bytes(store: FileSystemArtifactStore, tmp_path, payload: bytes) -> str:
    path = tmp_path / "upload" / "checkpoint.pt"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(payload)
    study = optuna.create_study()
    return optuna.artifacts.upload_artifact(
        artifact_store=store, file_path=str(path), study_or_trial=study
    )


@pytest.mark.parametrize("fmt", ["torch-zip", "torch-legacy", "raw-pickle"])
def test_a_malicious_pickle_is_refused_and_never_run(store, tmp_path, fmt: str) -> None:
    """weights_only=True: a checkpoint whose unpickling would run code does not load, and the
    code does not run."""
    import io
    import pickle

    marker = tmp_path / "pwned"
    state = {"model": _Exploit(str(marker))}
    buffer = io.BytesIO()
    if fmt == "raw-pickle":
        pickle.dump(state, buffer, protocol=2)
    else:
        torch.save(state, buffer, _use_new_zipfile_serialization=fmt == "torch-zip")
    payload = buffer.getvalue()
    artifact_id = _upload_bytes(store, tmp_path, payload)
    with pytest.raises(CheckpointError, match=f"'{artifact_id}' is corrupt or not a checkpoint"):
        load_checkpoint(artifact_store=store, artifact_id=artifact_id)
    assert not marker.exists()
    # The payload is live: loading it without weights_only runs it (what the check prevents).
    if fmt != "raw-pickle":
        torch.load(io.BytesIO(payload), weights_only=False)
    else:
        pickle.loads(payload)
    assert marker.exists()


@pytest.mark.parametrize(
    "payload, match",
    [(b"", "is corrupt or not a checkpoint"), (b"not a checkpoint", "is corrupt")],
)
def test_an_empty_or_foreign_file_names_the_artifact(store, tmp_path, payload, match) -> None:
    artifact_id = _upload_bytes(store, tmp_path, payload)
    with pytest.raises(CheckpointError, match=f"'{artifact_id}' {match}"):
        load_checkpoint(artifact_store=store, artifact_id=artifact_id)


def test_a_checkpoint_that_is_not_a_dict_names_the_artifact(store, tmp_path) -> None:
    import io

    buffer = io.BytesIO()
    torch.save([torch.ones(2)], buffer)
    artifact_id = _upload_bytes(store, tmp_path, buffer.getvalue())
    with pytest.raises(CheckpointError, match=f"'{artifact_id}' holds a list, not a dict"):
        load_checkpoint(artifact_store=store, artifact_id=artifact_id)


def test_every_load_in_the_package_is_weights_only() -> None:
    """No code path unpickles without the allow-list: every ``torch.load`` call in the package
    passes ``weights_only=True``, and nothing imports ``pickle`` (or ``dill``, ``joblib``)."""
    import ast
    from pathlib import Path

    import optuna_ext

    package = Path(optuna_ext.__file__).parent
    loads = 0
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                names.append(getattr(node, "module", None) or "")
                assert not {"pickle", "dill", "joblib", "cloudpickle"} & set(names), path
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "torch"
            ):
                loads += 1
                flags = {k.arg: k.value for k in node.keywords}
                value = flags.get("weights_only")
                assert isinstance(value, ast.Constant) and value.value is True, (
                    f"{path.relative_to(package.parent)}:{node.lineno}: torch.load without "
                    "weights_only=True"
                )
    assert loads >= 1  # the scan sees _checkpoint.load_checkpoint's call


def test_the_memory_store_keeps_checkpoints_and_names_missing_ones() -> None:
    import optuna_ext.hyperdyn

    assert optuna_ext.hyperdyn.MemoryArtifactStore is MemoryArtifactStore  # still importable there
    store = MemoryArtifactStore()
    study = optuna.create_study()
    model, optimizer = _model_and_optimizer()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
    artifact_id = save_checkpoint(state, artifact_store=store, study_or_trial=study)
    loaded = load_checkpoint(artifact_store=store, artifact_id=artifact_id)
    assert torch.equal(loaded["model"]["weight"], model.state_dict()["weight"])
    remove_checkpoint(artifact_store=store, artifact_id=artifact_id)
    remove_checkpoint(artifact_store=store, artifact_id=artifact_id)  # idempotent here too
    with pytest.raises(CheckpointError, match=f"'{artifact_id}' cannot be read"):
        load_checkpoint(artifact_store=store, artifact_id=artifact_id)
    with pytest.raises(optuna.artifacts.exceptions.ArtifactNotFound, match="not in the memory"):
        store.remove(artifact_id)
