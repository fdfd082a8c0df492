from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
import dataclasses
from typing import TYPE_CHECKING

import numpy as np
import optuna
import torch

from optuna_ext._checkpoint import MemoryArtifactStore
from optuna_ext.hyperdyn._tuner import _hypergradient_refusal
from optuna_ext.hyperdyn._tuner import HyperdynResult
from optuna_ext.hyperdyn._tuner import HyperdynTuner
from optuna_ext.samplers._hyperdyn.sampler import HyperdynSampler
from optuna_ext.tasks._data import make_loader
from optuna_ext.tasks._training import _HYPERGRADIENT_NAMES
from optuna_ext.tasks._training import evaluate as evaluate_model
from optuna_ext.tasks._training import make_optimizer
from optuna_ext.tasks._training import train_epoch as train_one_epoch


if TYPE_CHECKING:
    from optuna.artifacts._protocol import ArtifactStore
    from optuna.distributions import BaseDistribution
    from torch import nn

    from optuna_ext.tasks._data import DatasetSplit


def _epoch_seed(seed: int, epoch: int) -> int:
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)
    return int(state[0] >> np.uint64(1))


def make_task_functions(
    data: DatasetSplit,
    *,
    batch_size: int = 128,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> tuple[Callable[[nn.Module, torch.optim.Optimizer, int], float], Callable[[nn.Module], float]]:
    """Return the ``train_epoch`` and ``evaluate`` functions of :class:`HyperdynTuner` for data.

    ``train_epoch(model, optimizer, epoch)`` runs :func:`optuna_ext.tasks.train_epoch` over
    ``data.train`` shuffled in an order that depends only on ``(seed, epoch)``, so all
    candidates of an epoch see the same batches and a resumed run sees the same order; it
    returns the mean training loss (NaN when training diverged). ``evaluate(model)`` returns
    the accuracy on ``data.valid`` as a fraction (use ``metric_scale=100``).

    Args:
        data: The data set.
        batch_size: The training batch size.
        seed: The seed of the data order.
        device: The device of the model.

    Raises:
        ValueError: ``batch_size`` is not a positive integer (checked here, before training).
    """
    make_loader(data.train, batch_size=batch_size, shuffle=True, seed=seed)  # validates

    def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int) -> float:
        loader = make_loader(
            data.train, batch_size=batch_size, shuffle=True, seed=_epoch_seed(seed, epoch)
        )
        return train_one_epoch(model, loader, optimizer, device=device)

    def evaluate(model: nn.Module) -> float:
        return evaluate_model(model, data.valid, device=device).accuracy

    return train_epoch, evaluate


def fit_hyperdyn(
    model: nn.Module,
    data: DatasetSplit,
    *,
    optimizer: str = "sgd",
    epochs: int = 10,
    batch_size: int = 128,
    study: optuna.Study | None = None,
    artifact_store: ArtifactStore | None = None,
    search_space: Mapping[str, BaseDistribution] | None = None,
    n_random_start: int = 5,
    window: int = 4,
    temperature: float = 1.0,
    offset: float = 0.01,
    greedy: bool = False,
    random_factor: int | None = None,
    trend_test: str = "paper",
    max_switch_drop: float | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> HyperdynResult:
    """Train ``model`` on ``data`` with Hyperdyn choosing the rate at every epoch: one call.

    Builds the optimizer (:func:`optuna_ext.tasks.make_optimizer`; its initial rate is
    replaced by the tuned one), the task functions (:func:`make_task_functions`, accuracy as
    a fraction with ``metric_scale=100``) and a :class:`HyperdynTuner`, runs it for
    ``epochs`` epochs and measures the final model on ``data.test``. With a ``study`` in a
    persistent storage and a persistent ``artifact_store``, calling it again with the same
    arguments resumes (or returns at once when the run is complete).

    Example:

        .. testcode::

            from optuna_ext.hyperdyn import fit_hyperdyn
            from optuna_ext.tasks import build_model
            from optuna_ext.tasks import load_digits

            data = load_digits()
            result = fit_hyperdyn(build_model("cnn", data=data), data, epochs=2, n_random_start=2)
            print(len(result.lrs), 0.0 <= result.test_accuracy <= 1.0)

        .. testoutput::

            2 True

    Args:
        model: The model, trained in place (e.g. from :func:`optuna_ext.tasks.build_model`).
        data: The data.
        optimizer: ``"sgd"`` (tuning ``lr`` and ``momentum``) or another name of
            :data:`optuna_ext.tasks.OPTIMIZER_NAMES` (see
            :func:`~optuna_ext.hyperdyn.default_search_space`) except ``"sgd_hd"`` and
            ``"adam_hd"``, which are refused (see :class:`HyperdynTuner`).
        epochs: The number of epochs of the kept trajectory (epoch 0 is Random-Start).
        batch_size: The training batch size.
        study: The study to record the candidates in; :obj:`None` creates an in-memory one
            with a :class:`~optuna_ext.samplers.HyperdynSampler` seeded with ``seed``.
        artifact_store: Where the checkpoints go; :obj:`None` keeps them in memory.
        search_space: The tuned hyper-parameters (see :class:`HyperdynTuner`).
        n_random_start: The number of Random-Start candidates (paper: 5).
        window: The window of the trend test (paper: 4).
        temperature: The temperature of the trend test (paper: 1).
        offset: The offset of the trend test (paper: 0.01).
        greedy: Run the epoch-based BO baseline instead.
        random_factor: Run the random-search baseline with this many candidates per epoch.
        trend_test: ``"paper"`` (Algorithm 5) or ``"compare"`` (a variant that also weighs
            the two candidates; see :class:`HyperdynTuner`).
        max_switch_drop: Refuse a switch to a proposal that scored more than this many
            percentage points below the incumbent in the epoch (a guard that is not in the
            paper; see :class:`HyperdynTuner`); :obj:`None` follows the paper.
        seed: The seed of the data order, the sampler (when it is created here) and the
            tuner.
        device: The device to train on.
    """
    if optimizer in _HYPERGRADIENT_NAMES:
        raise ValueError(_hypergradient_refusal(f"`optimizer` is {optimizer!r}"))
    model.to(device)
    opt = make_optimizer(optimizer, model.parameters(), lr=0.01)
    if study is None:
        study = optuna.create_study(
            direction="maximize", sampler=HyperdynSampler(seed=seed, n_startup_trials=5)
        )
    train_epoch, evaluate = make_task_functions(
        data, batch_size=batch_size, seed=seed, device=device
    )
    tuner = HyperdynTuner(
        study=study,
        model=model,
        optimizer=opt,
        train_epoch=train_epoch,
        evaluate=evaluate,
        artifact_store=artifact_store if artifact_store is not None else MemoryArtifactStore(),
        search_space=search_space,
        n_random_start=n_random_start,
        window=window,
        temperature=temperature,
        offset=offset,
        metric_scale=100.0,
        greedy=greedy,
        random_factor=random_factor,
        seed=seed,
        trend_test=trend_test,
        max_switch_drop=max_switch_drop,
    )
    result = tuner.run(epochs=epochs)
    test = evaluate_model(model, data.test, device=device).accuracy
    return dataclasses.replace(result, test_accuracy=test)
