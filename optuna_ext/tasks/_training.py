from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
import contextlib
from dataclasses import dataclass
from dataclasses import field
import math
import numbers
import time
from typing import TYPE_CHECKING

import torch
from torch import nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from optuna_ext.optim._hypergradient import _ADAM_HD_DEFAULT_HYPERGRAD_LR
from optuna_ext.optim._hypergradient import _SGD_HD_DEFAULT_HYPERGRAD_LR
from optuna_ext.optim._hypergradient import AdamHD
from optuna_ext.optim._hypergradient import SGDHD
from optuna_ext.tasks._data import make_loader


if TYPE_CHECKING:
    from optuna.trial import BaseTrial
    from torch.optim.lr_scheduler import LRScheduler

    from optuna_ext.tasks._data import DatasetSplit


OPTIMIZER_NAMES = ("sgd", "adam", "adagrad", "rmsprop", "sgd_hd", "adam_hd")
"""The names accepted by :func:`make_optimizer` and :func:`fit`."""

_HYPERGRADIENT_NAMES = ("sgd_hd", "adam_hd")


def make_optimizer(
    name: str,
    params: Iterable[torch.nn.Parameter],
    *,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    hypergrad_lr: float | None = None,
) -> torch.optim.Optimizer:
    """Build one of the optimizers of :data:`OPTIMIZER_NAMES`.

    ``"sgd"`` is SGD with (heavy-ball) ``momentum``, ``"rmsprop"`` is RMSProp with
    ``momentum``, and ``"adam"`` and ``"adagrad"`` ignore ``momentum``. All use PyTorch's
    defaults for their other settings and apply ``weight_decay`` as an L2 penalty.

    ``"sgd_hd"`` and ``"adam_hd"`` are the same SGD (heavy-ball ``momentum``) and Adam with
    hypergradient descent on the rate, :class:`~optuna_ext.optim.SGDHD` and
    :class:`~optuna_ext.optim.AdamHD` with their defaults (the paper's rule, no lower clamp):
    ``lr`` is the initial rate, and ``hypergrad_lr`` the hypergradient rate (:obj:`None` for
    the optimizer's default, ``1e-3`` for SGD-HD, ``1e-7`` for Adam-HD).

    Example:

        .. testcode::

            import torch
            from optuna_ext.tasks import make_optimizer

            model = torch.nn.Linear(2, 1)
            optimizer = make_optimizer("adam", model.parameters(), lr=1e-3)

    Args:
        name:
            One of :data:`OPTIMIZER_NAMES`.
        params:
            The parameters to optimize (or parameter groups).
        lr:
            The learning rate, finite and ``> 0``.
        momentum:
            The momentum of SGD and RMSProp, in ``[0, 1)``.
        weight_decay:
            The L2 penalty, finite and ``>= 0``.
        hypergrad_lr:
            The hypergradient learning rate of ``"sgd_hd"`` and ``"adam_hd"``, finite and
            ``>= 0``, or :obj:`None` for their default; must be :obj:`None` for the other
            names.
    """
    if name not in OPTIMIZER_NAMES:
        raise ValueError(f"The value of `name` is {name!r}, but must be one of {OPTIMIZER_NAMES}.")
    for option, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
        # A bool is an int to Python: `lr=True` would silently train at rate 1.
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"The value of `{option}` is {value!r}, but must be a float.")
    if not (math.isfinite(lr) and lr > 0.0):
        raise ValueError(f"The value of `lr` is {lr}, but must be finite and `lr > 0`.")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(
            f"The value of `momentum` is {momentum}, but must be `0 <= momentum < 1`."
        )
    if not (math.isfinite(weight_decay) and weight_decay >= 0.0):
        raise ValueError(
            f"The value of `weight_decay` is {weight_decay}, but must be finite and "
            "`weight_decay >= 0`."
        )
    if hypergrad_lr is not None and name not in _HYPERGRADIENT_NAMES:
        raise ValueError(
            f"The value of `hypergrad_lr` is {hypergrad_lr}, but must be None for `name` "
            f"{name!r} (only {_HYPERGRADIENT_NAMES} use it)."
        )
    if name == "sgd_hd":
        return SGDHD(
            params,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            hypergrad_lr=_SGD_HD_DEFAULT_HYPERGRAD_LR if hypergrad_lr is None else hypergrad_lr,
        )
    if name == "adam_hd":
        return AdamHD(
            params,
            lr=lr,
            weight_decay=weight_decay,
            hypergrad_lr=_ADAM_HD_DEFAULT_HYPERGRAD_LR if hypergrad_lr is None else hypergrad_lr,
        )
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.RMSprop(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def _loss(outputs: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Binary cross-entropy for one logit per sample, cross-entropy for several."""
    if outputs.shape[-1] == 1:
        return F.binary_cross_entropy_with_logits(
            outputs[:, 0], labels.to(outputs.dtype), reduction=reduction
        )
    return F.cross_entropy(outputs, labels, reduction=reduction)


def _n_correct(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The number of right predictions; a sample with a non-finite output counts as wrong."""
    if outputs.shape[-1] == 1:
        predictions = (outputs[:, 0] > 0).to(labels.dtype)
    else:
        predictions = outputs.argmax(dim=1)
    finite = torch.isfinite(outputs).all(dim=1)
    return ((predictions == labels) & finite).sum()


def train_epoch(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    *,
    scheduler: LRScheduler | None = None,
    device: str | torch.device = "cpu",
) -> float:
    """Train ``model`` for one pass over ``loader`` and return the mean training loss.

    The loss is the cross-entropy over the logits, or the binary cross-entropy when the model
    has one output (see :class:`MLP`). ``scheduler.step()`` is called after every optimizer
    step, so schedules count iterations, not epochs. When the loss of a batch is NaN or
    infinite, the epoch stops before that batch's step and ``float("nan")`` is returned
    (training has diverged; no exception is raised). The returned mean is weighted by the
    batch sizes.

    Example:

        .. testcode::

            from optuna_ext.tasks import build_model
            from optuna_ext.tasks import load_digits
            from optuna_ext.tasks import make_loader
            from optuna_ext.tasks import make_optimizer
            from optuna_ext.tasks import train_epoch

            data = load_digits()
            model = build_model("cnn", data=data)
            optimizer = make_optimizer("sgd", model.parameters(), lr=0.05)
            loader = make_loader(data.train, batch_size=64, shuffle=True)
            loss = train_epoch(model, loader, optimizer)

    Args:
        model:
            The model, put in training mode here.
        loader:
            An iterable of ``(inputs, labels)`` batches, e.g. from :func:`make_loader`.
        optimizer:
            The optimizer of ``model``'s parameters.
        scheduler:
            A learning-rate scheduler of ``optimizer`` stepped once per iteration, or
            :obj:`None`.
        device:
            The device of ``model``; the batches are moved there.
    """
    device = torch.device(device)
    model.train()
    total = 0.0
    n = 0
    for inputs, labels in loader:
        inputs = inputs.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        loss = _loss(model(inputs), labels)
        value = loss.item()
        if not math.isfinite(value):
            return float("nan")
        torch.autograd.backward(loss)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += value * len(labels)
        n += len(labels)
    if n == 0:
        raise ValueError("The loader yielded no batch.")
    return total / n


@dataclass
class Evaluation:
    """The loss and accuracy of a model on a data set.

    Args:
        loss:
            The mean loss per sample (NaN when the model outputs non-finite values).
        accuracy:
            The share of samples classified right, in ``[0, 1]``.
    """

    loss: float
    accuracy: float


def evaluate(
    model: nn.Module,
    dataset_or_loader: TensorDataset | Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
) -> Evaluation:
    """Return the mean loss and the accuracy of ``model`` on a data set.

    The model runs in evaluation mode without gradients, and its previous mode (training or
    evaluation) is restored afterwards. The loss is the one of :func:`train_epoch`. A sample
    whose outputs are not all finite counts as misclassified.

    Example:

        .. testcode::

            from optuna_ext.tasks import build_model
            from optuna_ext.tasks import evaluate
            from optuna_ext.tasks import load_digits

            data = load_digits()
            result = evaluate(build_model("cnn", data=data), data.valid)
            assert 0.0 <= result.accuracy <= 1.0

    Args:
        model:
            The model.
        dataset_or_loader:
            A :class:`~torch.utils.data.TensorDataset` of ``(inputs, labels)``, or an
            iterable of ``(inputs, labels)`` batches.
        batch_size:
            The batch size used to go through a data set (ignored for a loader).
        device:
            The device of ``model``; the batches are moved there.
    """
    device = torch.device(device)
    if isinstance(dataset_or_loader, TensorDataset):
        batches: Iterable[tuple[torch.Tensor, torch.Tensor]] = make_loader(
            dataset_or_loader, batch_size=batch_size, shuffle=False
        )
    else:
        batches = dataset_or_loader
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    n = 0
    try:
        with torch.no_grad():
            for inputs, labels in batches:
                inputs = inputs.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                outputs = model(inputs)
                loss_sum += _loss(outputs, labels, reduction="sum").to(torch.float64)
                correct += _n_correct(outputs, labels)
                n += len(labels)
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("The data set to evaluate on is empty.")
    return Evaluation(loss=loss_sum.item() / n, accuracy=correct.item() / n)


@dataclass
class FitResult:
    """What :func:`fit` measured, one list entry per epoch trained.

    Args:
        train_loss:
            The mean training loss of each epoch (NaN for an epoch that diverged).
        valid_loss:
            The validation loss after each epoch.
        valid_accuracy:
            The validation accuracy after each epoch (the value reported to the trial).
        test_accuracy:
            The test accuracy of the final model.
        test_loss:
            The test loss of the final model.
        epochs:
            The number of epochs trained, the length of the lists (fewer than asked when
            training diverged).
        seconds:
            The wall-clock time of the whole call, evaluations included.
        lrs:
            The learning rate of the first parameter group at the start of each epoch.
        epoch_seconds:
            The wall-clock time of each epoch (training and validation).
        diverged:
            Whether training stopped early because a loss became NaN or infinite.
    """

    train_loss: list[float]
    valid_loss: list[float]
    valid_accuracy: list[float]
    test_accuracy: float
    test_loss: float
    epochs: int
    seconds: float
    lrs: list[float]
    epoch_seconds: list[float] = field(default_factory=list)
    diverged: bool = False

    @property
    def best_valid_accuracy(self) -> float:
        """The highest validation accuracy over the epochs."""
        return max(self.valid_accuracy)


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's RNG of the CPU (and of ``device`` if CUDA), restoring them afterwards."""
    devices: list[int] = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(seed)
        for index in devices:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield


def fit(
    model: nn.Module,
    data: DatasetSplit,
    *,
    optimizer: str = "sgd",
    lr: float = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    hypergrad_lr: float | None = None,
    batch_size: int = 64,
    epochs: int = 10,
    schedule: Callable[[torch.optim.Optimizer, int], LRScheduler] | None = None,
    seed: int = 0,
    trial: BaseTrial | None = None,
    prune: bool = False,
    epoch_callback: Callable[[int, nn.Module], object] | None = None,
    device: str | torch.device = "cpu",
) -> FitResult:
    """Train ``model`` on ``data``, evaluating on the valid part after every epoch.

    Builds the optimizer (:func:`make_optimizer`) and a shuffled training loader
    (:func:`make_loader` seeded with ``seed``), and, if ``schedule`` is given, the scheduler
    ``schedule(optimizer, steps_per_epoch)``, stepped after every iteration. After each epoch
    it evaluates on ``data.valid``, calls ``epoch_callback(epoch, model)`` with the index of the
    epoch just finished (counted from 0), and, with a ``trial``, reports the validation accuracy
    with ``trial.report(valid_accuracy, step=epoch + 1)`` (the number of epochs done). With
    ``prune=True`` it then raises :class:`optuna.TrialPruned` when ``trial.should_prune()``.

    When a training or validation loss becomes NaN or infinite, training stops after that
    epoch (which is still evaluated and reported, but not passed to ``epoch_callback``) and
    the result has ``diverged=True``: no exception is raised.

    Results are deterministic: with the same initial weights, data and ``seed``, two calls in
    the same process give bit-for-bit the same losses and weights on the CPU (for a fixed
    number of threads). The global random state is left untouched (torch's RNG is forked and
    seeded with ``seed`` for any random layers). On CUDA, results may vary with
    non-deterministic kernels.

    Example:

        .. testcode::

            from optuna_ext.tasks import build_model
            from optuna_ext.tasks import fit
            from optuna_ext.tasks import load_digits

            data = load_digits()
            model = build_model("cnn", data=data, seed=0)
            result = fit(model, data, optimizer="sgd", lr=0.05, epochs=2)
            print(len(result.valid_accuracy))

        .. testoutput::

            2

    Args:
        model:
            The model to train (in place), e.g. from :func:`build_model`.
        data:
            The data; trains on ``data.train``, validates on ``data.valid`` and tests the final
            model on ``data.test``.
        optimizer:
            One of :data:`OPTIMIZER_NAMES`.
        lr:
            The (initial) learning rate.
        momentum:
            The momentum of SGD and RMSProp.
        weight_decay:
            The L2 penalty.
        hypergrad_lr:
            The hypergradient learning rate of ``"sgd_hd"`` and ``"adam_hd"`` (:obj:`None`
            for their default); their rate then changes at every step, and
            :attr:`FitResult.lrs` shows it at the start of each epoch.
        batch_size:
            The training batch size.
        epochs:
            The number of epochs, ``>= 1``.
        schedule:
            A function ``(optimizer, steps_per_epoch) -> LRScheduler`` building a scheduler
            that is stepped once per iteration, or :obj:`None` for a constant rate (it must be
            :obj:`None` for ``"sgd_hd"`` and ``"adam_hd"``, which set their own rate).
        seed:
            The seed of the data order and of any randomness in training.
        trial:
            An Optuna trial to report the validation accuracy to after every epoch.
        prune:
            Whether to raise :class:`optuna.TrialPruned` when the trial should be pruned.
        epoch_callback:
            A function called as ``epoch_callback(epoch, model)`` after each epoch.
        device:
            The device to train on; the model is moved there.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"The value of `epochs` is {epochs}, but must be `epochs >= 1`.")
    if schedule is not None and optimizer in _HYPERGRADIENT_NAMES:
        raise ValueError(
            f"The value of `schedule` is {schedule!r}, but must be None for `optimizer` "
            f"{optimizer!r}: it adapts its own rate at every step, and a scheduler would "
            "overwrite the adapted rate."
        )
    start = time.perf_counter()
    device = torch.device(device)
    model.to(device)
    opt = make_optimizer(
        optimizer,
        model.parameters(),
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        hypergrad_lr=hypergrad_lr,
    )
    loader = make_loader(data.train, batch_size=batch_size, shuffle=True, seed=seed)
    scheduler = schedule(opt, len(loader)) if schedule is not None else None
    train_losses: list[float] = []
    valid_losses: list[float] = []
    valid_accuracies: list[float] = []
    lrs: list[float] = []
    epoch_seconds: list[float] = []
    diverged = False
    with _seeded(seed, device):
        for epoch in range(epochs):
            epoch_start = time.perf_counter()
            lrs.append(float(opt.param_groups[0]["lr"]))
            train_loss = train_epoch(model, loader, opt, scheduler=scheduler, device=device)
            valid = evaluate(model, data.valid, device=device)
            train_losses.append(train_loss)
            valid_losses.append(valid.loss)
            valid_accuracies.append(valid.accuracy)
            epoch_seconds.append(time.perf_counter() - epoch_start)
            diverged = not (math.isfinite(train_loss) and math.isfinite(valid.loss))
            if epoch_callback is not None and not diverged:
                epoch_callback(epoch, model)
            if trial is not None:
                trial.report(valid.accuracy, step=epoch + 1)
                if prune and trial.should_prune():
                    import optuna

                    raise optuna.TrialPruned(f"Trial was pruned at epoch {epoch + 1}.")
            if diverged:
                break
    test = evaluate(model, data.test, device=device)
    return FitResult(
        train_loss=train_losses,
        valid_loss=valid_losses,
        valid_accuracy=valid_accuracies,
        test_accuracy=test.accuracy,
        test_loss=test.loss,
        epochs=len(train_losses),
        seconds=time.perf_counter() - start,
        lrs=lrs,
        epoch_seconds=epoch_seconds,
        diverged=diverged,
    )
