"""Segment functions for PyTorch models: restoring and storing state, and a task segment."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import MutableMapping
import os
import time
from typing import Any
from typing import TYPE_CHECKING

import numpy as np
import optuna
import torch

from optuna_ext.samplers._pbt._population import GENERATION_KEY
from optuna_ext.samplers._pbt._population import MEMBER_KEY


if TYPE_CHECKING:
    from optuna.artifacts._protocol import ArtifactStore
    from optuna.storages import BaseStorage
    from torch import nn

    from optuna_ext.pbt._harness import PBTResult
    from optuna_ext.tasks import DatasetSplit


EPOCHS_KEY = "epochs"
"""The key of ``model_state`` that :func:`training_segment` counts trained epochs under."""


def load_training_state(
    model_state: MutableMapping[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
) -> bool:
    """Restore a model (and optimizer) from a segment's ``model_state``; keep the new settings.

    ``optimizer.load_state_dict`` would also restore the parent's learning rate, momentum and
    weight decay; this function puts back the optimizer's own settings (the member's new
    hyper-parameters) after loading, and keeps the parent's buffers (momentum, Adam moments).

    Example:

        .. testcode::

            import torch
            from optuna_ext.pbt import load_training_state
            from optuna_ext.pbt import store_training_state

            model = torch.nn.Linear(2, 1)
            state = {}
            store_training_state(state, model, torch.optim.SGD(model.parameters(), lr=0.1))
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
            assert load_training_state(state, model, optimizer)
            assert optimizer.param_groups[0]["lr"] == 0.01

    Args:
        model_state:
            The dict :func:`~optuna_ext.pbt.run` passes to the segment function.
        model:
            The model, built as the parent's was.
        optimizer:
            The optimizer built with the member's hyper-parameters, or :obj:`None`.

    Returns:
        Whether a model state was found (``False``: the member starts from scratch).
    """
    if "model" not in model_state:
        return False
    model.load_state_dict(model_state["model"])
    if optimizer is not None and "optimizer" in model_state:
        settings = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        optimizer.load_state_dict(model_state["optimizer"])
        for group, own in zip(optimizer.param_groups, settings, strict=True):
            group.update(own)
    return True


def store_training_state(
    model_state: MutableMapping[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    **extra: Any,
) -> None:
    """Write a model's (and optimizer's) state into ``model_state`` for the next segment.

    Args:
        model_state:
            The dict :func:`~optuna_ext.pbt.run` passes to the segment function.
        model:
            The trained model.
        optimizer:
            Its optimizer, or :obj:`None`.
        extra:
            Further plain values to keep (e.g. ``epochs=3``).
    """
    model_state["model"] = model.state_dict()
    if optimizer is not None:
        model_state["optimizer"] = optimizer.state_dict()
    model_state.update(extra)


def _slot_seed(seed: int, trial: optuna.Trial) -> int:
    attrs = trial.storage.get_trial_system_attrs(trial._trial_id)
    g = int(attrs.get(GENERATION_KEY, 0))
    m = int(attrs.get(MEMBER_KEY, trial.number))
    return int(np.random.SeedSequence([seed, g, m]).generate_state(1)[0])


def training_segment(
    data: DatasetSplit,
    *,
    model: str = "cnn",
    epochs_per_generation: int = 1,
    seed: int = 0,
    batch_size: int = 64,
    lr: tuple[float, float] = (1e-3, 1.0),
    momentum: tuple[float, float] = (0.0, 0.99),
    weight_decay: tuple[float, float] = (1e-6, 1e-2),
    device: str | torch.device = "cpu",
) -> Callable[[optuna.Trial, dict[str, Any]], float]:
    """A segment function training a task model with SGD, for :func:`~optuna_ext.pbt.run`.

    The segment suggests ``lr`` (log scale), ``momentum`` and ``weight_decay`` (log scale)
    in the given ranges, builds ``model`` with :func:`~optuna_ext.tasks.build_model` (initial
    weights from ``seed``), restores the parent's weights and SGD buffers, trains
    ``epochs_per_generation`` epochs (data order seeded by ``seed``, generation and member),
    and returns the validation accuracy. It sets the user attrs ``test_accuracy``,
    ``valid_accuracy``, ``epochs`` (the member's total so far) and ``train_seconds``, and
    reports the validation accuracy at step ``epochs``.

    Example:

        .. testcode::

            from optuna_ext.pbt import training_segment
            from optuna_ext.tasks import load_digits

            segment = training_segment(load_digits(), model="cnn", epochs_per_generation=1)

    Args:
        data:
            The task's data, e.g. :func:`~optuna_ext.tasks.load_digits`.
        model:
            One of :data:`~optuna_ext.tasks.MODEL_NAMES` that fits ``data``.
        epochs_per_generation:
            The epochs each segment trains, ``>= 1``.
        seed:
            The seed of the initial weights and of the data order.
        batch_size:
            The training batch size.
        lr:
            The range of the learning rate.
        momentum:
            The range of the momentum.
        weight_decay:
            The range of the weight decay.
        device:
            The device to train on.
    """
    from optuna_ext.tasks import build_model
    from optuna_ext.tasks import evaluate
    from optuna_ext.tasks import make_loader
    from optuna_ext.tasks import make_optimizer
    from optuna_ext.tasks import train_epoch

    if (
        isinstance(epochs_per_generation, bool)
        or not isinstance(epochs_per_generation, int)
        or epochs_per_generation < 1
    ):
        raise ValueError(
            f"The value of `epochs_per_generation` is {epochs_per_generation}, but must be "
            "`epochs_per_generation >= 1`."
        )
    _check_range("lr", lr, positive=True)
    _check_range("momentum", momentum, below_one=True)
    _check_range("weight_decay", weight_decay, positive=True)
    # Fail now rather than in every member's first segment: an unknown model, one that does
    # not fit the data, or a bad batch size.
    build_model(model, data=data, seed=seed)
    make_loader(data.train, batch_size=batch_size, shuffle=True, seed=seed)

    def segment(trial: optuna.Trial, model_state: dict[str, Any]) -> float:
        start = time.perf_counter()
        rate = trial.suggest_float("lr", lr[0], lr[1], log=True)
        mom = trial.suggest_float("momentum", momentum[0], momentum[1])
        decay = trial.suggest_float("weight_decay", weight_decay[0], weight_decay[1], log=True)
        net = build_model(model, data=data, seed=seed).to(device)
        optimizer = make_optimizer(
            "sgd", net.parameters(), lr=rate, momentum=mom, weight_decay=decay
        )
        load_training_state(model_state, net, optimizer)
        epochs = int(model_state.get(EPOCHS_KEY, 0))
        loader = make_loader(
            data.train, batch_size=batch_size, shuffle=True, seed=_slot_seed(seed, trial)
        )
        for _ in range(epochs_per_generation):
            train_epoch(net, loader, optimizer, device=device)
            epochs += 1
        valid = evaluate(net, data.valid, device=device)
        test = evaluate(net, data.test, device=device)
        store_training_state(model_state, net, optimizer, epochs=epochs)
        trial.report(valid.accuracy, step=epochs)
        trial.set_user_attr("valid_accuracy", valid.accuracy)
        trial.set_user_attr("test_accuracy", test.accuracy)
        trial.set_user_attr(EPOCHS_KEY, epochs)
        trial.set_user_attr("train_seconds", time.perf_counter() - start)
        return valid.accuracy

    return segment


def _check_range(
    name: str, bounds: Any, *, positive: bool = False, below_one: bool = False
) -> None:
    """Raise a ``ValueError`` unless ``bounds`` is a ``(low, high)`` pair of finite numbers with
    ``low <= high`` (and ``low > 0`` for a log-scale range, ``0 <= low``, ``high < 1`` for a
    momentum)."""
    try:
        low, high = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(
            f"The value of `{name}` is {bounds!r}, but must be a pair `(low, high)` of numbers."
        ) from None
    rule = "`0 < low <= high`" if positive else "`0 <= low <= high < 1`" if below_one else ""
    ok = np.isfinite([low, high]).all() and low <= high
    if positive:
        ok = ok and low > 0.0
    if below_one:
        ok = ok and 0.0 <= low and high < 1.0
    if not ok:
        raise ValueError(
            f"The value of `{name}` is {tuple(bounds)}, but must be finite with "
            f"{rule or '`low <= high`'}."
        )


def run_digits(
    *,
    storage: str | BaseStorage | None = None,
    study_name: str = "pbt-digits",
    artifact_store: ArtifactStore | str | os.PathLike[str] = "optuna-ext-artifacts",
    population_size: int = 4,
    n_generations: int = 5,
    epochs_per_generation: int = 1,
    model: str = "cnn",
    pb2: bool = False,
    seed: int = 0,
    data: DatasetSplit | None = None,
    timeout: float | None = None,
) -> PBTResult:
    """Run (or resume) a small PBT population on the digits CNN in one call.

    Creates the maximizing study ``study_name`` (or loads it, to resume) with a
    :class:`~optuna_ext.samplers.PBTSampler`, and trains it with :func:`~optuna_ext.pbt.run`
    and :func:`training_segment` (SGD's ``lr``, ``momentum`` and ``weight_decay``). A
    member's score is its validation accuracy, and the study's objective is named
    ``"valid_accuracy"`` for optuna-dashboard (unless it has a name already). Print the best
    member's lineage with ``result.format_lineage()``.

    Example:

        .. testcode::

            import tempfile

            from optuna_ext.pbt import run_digits
            from optuna_ext.tasks import make_teacher_data

            # A tiny stand-in for the digits CNN: an MLP on 200 teacher points.
            data = make_teacher_data(teacher="2-3-1", n_samples=200)
            with tempfile.TemporaryDirectory() as tmp:
                result = run_digits(
                    artifact_store=tmp,
                    population_size=2,
                    n_generations=2,
                    model="mlp-2-3-1",
                    data=data,
                )
            assert result.finished
            print(result.format_lineage())

    Args:
        storage:
            A storage or its URL (:obj:`None`: in memory). Use one with heartbeats (see
            :func:`~optuna_ext.pbt.run`) to run interrupted segments again on resume.
        study_name:
            The study's name.
        artifact_store:
            An artifact store, or the directory of a
            :class:`~optuna.artifacts.FileSystemArtifactStore` (created if missing).
        population_size:
            The number of members.
        n_generations:
            The number of segments per member.
        epochs_per_generation:
            The epochs of each segment.
        model:
            The model (see :func:`~optuna_ext.tasks.build_model`).
        pb2:
            Whether to use PB2's GP-UCB explore step.
        seed:
            The seed of the sampler, the initial weights and the data order.
        data:
            The data (default: :func:`~optuna_ext.tasks.load_digits`).
        timeout:
            Stop after this many seconds (resume later with the same call).
    """
    from optuna.artifacts import FileSystemArtifactStore

    from optuna_ext._objective_names import name_objectives
    from optuna_ext._storage import load_or_create_study
    from optuna_ext.pbt._harness import run
    from optuna_ext.samplers._pbt import PBTSampler
    from optuna_ext.tasks import load_digits

    sampler = PBTSampler(population_size=population_size, pb2=pb2, seed=seed)
    data = data if data is not None else load_digits()
    segment = training_segment(
        data, model=model, epochs_per_generation=epochs_per_generation, seed=seed
    )
    # Checked again by `run`; here so that nothing is created for a run that cannot start.
    if isinstance(n_generations, bool) or not isinstance(n_generations, int) or n_generations < 1:
        raise ValueError(
            f"The value of `n_generations` is {n_generations}, but must be `n_generations >= 1`."
        )
    if timeout is not None and not timeout > 0:
        raise ValueError(f"The value of `timeout` is {timeout}, but must be `timeout > 0`.")
    if isinstance(artifact_store, (str, os.PathLike)):
        os.makedirs(artifact_store, exist_ok=True)
        store: ArtifactStore = FileSystemArtifactStore(os.fspath(artifact_store))
    else:
        store = artifact_store
    if storage is None:
        study = optuna.create_study(study_name=study_name, direction="maximize", sampler=sampler)
    else:
        study = load_or_create_study(
            study_name=study_name, storage=storage, direction="maximize", sampler=sampler
        )
    name_objectives(study, ["valid_accuracy"])  # a member's score: the validation accuracy
    return run(study, segment, n_generations=n_generations, artifact_store=store, timeout=timeout)
