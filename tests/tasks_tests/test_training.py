from __future__ import annotations

import math

import optuna
from optuna.testing.pruners import DeterministicPruner
import pytest
import torch
from torch import nn
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR

from optuna_ext.optim import AdamHD
from optuna_ext.optim import SGDHD
from optuna_ext.tasks import build_model
from optuna_ext.tasks import DatasetSplit
from optuna_ext.tasks import evaluate
from optuna_ext.tasks import fit
from optuna_ext.tasks import load_digits
from optuna_ext.tasks import make_loader
from optuna_ext.tasks import make_optimizer
from optuna_ext.tasks import make_teacher_data
from optuna_ext.tasks import OPTIMIZER_NAMES
from optuna_ext.tasks import SmallCNN
from optuna_ext.tasks import train_epoch


@pytest.fixture(scope="module")
def digits() -> DatasetSplit:
    return load_digits()


@pytest.fixture(scope="module")
def teacher_2d() -> DatasetSplit:
    return make_teacher_data(teacher="2-5-5-1", n_samples=2000, seed=0)


def _cnn(data: DatasetSplit, seed: int = 0) -> SmallCNN:
    model = build_model("cnn", data=data, seed=seed, channels=(8, 16))
    assert isinstance(model, SmallCNN)
    return model


# ---------------------------------------------------------------------------------------------
# make_optimizer


def test_make_optimizer_hypergradient_kinds() -> None:
    params = list(nn.Linear(2, 2).parameters())
    sgd_hd = make_optimizer("sgd_hd", params, lr=0.1, momentum=0.5, weight_decay=1e-4)
    assert isinstance(sgd_hd, SGDHD)
    group = sgd_hd.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.1, 0.5, 1e-4)
    assert group["hypergrad_lr"] == 1e-3  # SGDHD's default (the paper's)
    assert make_optimizer("sgd_hd", params, lr=0.1, hypergrad_lr=0.0).defaults["hypergrad_lr"] == 0
    adam_hd = make_optimizer("adam_hd", params, lr=1e-3, momentum=0.5, hypergrad_lr=1e-6)
    assert isinstance(adam_hd, AdamHD)
    assert adam_hd.param_groups[0]["hypergrad_lr"] == 1e-6
    assert make_optimizer("adam_hd", params, lr=1e-3).defaults["hypergrad_lr"] == 1e-7


def test_make_optimizer_kinds() -> None:
    params = list(nn.Linear(2, 2).parameters())
    sgd = make_optimizer("sgd", params, lr=0.1, momentum=0.5, weight_decay=1e-4)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.param_groups[0]["momentum"] == 0.5
    assert sgd.param_groups[0]["weight_decay"] == 1e-4
    assert sgd.param_groups[0]["lr"] == 0.1
    rmsprop = make_optimizer("rmsprop", params, lr=0.01, momentum=0.3)
    assert isinstance(rmsprop, torch.optim.RMSprop)
    assert rmsprop.param_groups[0]["momentum"] == 0.3
    assert isinstance(make_optimizer("adam", params, lr=1e-3), torch.optim.Adam)
    assert isinstance(make_optimizer("adagrad", params, lr=1e-2), torch.optim.Adagrad)


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("nadam", {"lr": 0.1}, "name"),
        ("sgd", {"lr": 0.0}, "lr"),
        ("sgd", {"lr": -0.1}, "lr"),
        ("sgd", {"lr": math.nan}, "lr"),
        ("sgd", {"lr": math.inf}, "lr"),
        ("sgd", {"lr": 0.1, "momentum": 1.0}, "momentum"),
        ("sgd", {"lr": 0.1, "momentum": -0.1}, "momentum"),
        ("rmsprop", {"lr": 0.1, "momentum": math.nan}, "momentum"),
        ("adam", {"lr": 0.1, "weight_decay": -1e-4}, "weight_decay"),
        ("adam", {"lr": 0.1, "weight_decay": math.inf}, "weight_decay"),
        ("sgd", {"lr": 0.1, "hypergrad_lr": 1e-3}, "hypergrad_lr"),
        ("sgd_hd", {"lr": 0.1, "hypergrad_lr": -1e-3}, "hypergrad_lr"),
        ("adam_hd", {"lr": 0.0}, "lr"),
    ],
)
def test_make_optimizer_bad_arguments(name: str, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_optimizer(name, nn.Linear(2, 2).parameters(), **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lr": True}, "`lr` is True"),  # a bool would train at rate 1
        ({"lr": "0.1"}, "`lr` is '0.1'"),
        ({"lr": 0.1, "momentum": False}, "`momentum` is False"),
        ({"lr": 0.1, "weight_decay": None}, "`weight_decay` is None"),
    ],
)
@pytest.mark.parametrize("name", ["sgd", "sgd_hd"])
def test_make_optimizer_wrong_types(name: str, kwargs: dict, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        make_optimizer(name, nn.Linear(2, 2).parameters(), **kwargs)
    with pytest.raises(TypeError, match="`hypergrad_lr` is True"):
        make_optimizer("adam_hd", nn.Linear(2, 2).parameters(), lr=0.1, hypergrad_lr=True)


# ---------------------------------------------------------------------------------------------
# train_epoch / evaluate


def test_evaluate_matches_manual_computation(digits: DatasetSplit) -> None:
    model = _cnn(digits)
    model.eval()
    x, y = digits.valid.tensors
    with torch.no_grad():
        out = model(x)
    expected_loss = float(F.cross_entropy(out.double(), y))
    expected_acc = float((out.argmax(1) == y).double().mean())
    for source in (digits.valid, make_loader(digits.valid, batch_size=50, shuffle=True)):
        result = evaluate(model, source, batch_size=64)
        assert result.loss == pytest.approx(expected_loss, rel=1e-5)
        assert result.accuracy == pytest.approx(expected_acc, abs=1e-12)


def test_evaluate_binary_logit(teacher_2d: DatasetSplit) -> None:
    model = build_model("mlp-2-3-1", data=teacher_2d)
    x, y = teacher_2d.valid.tensors
    with torch.no_grad():
        logit = model(x)[:, 0]
    result = evaluate(model, teacher_2d.valid)
    assert result.loss == pytest.approx(
        float(F.binary_cross_entropy_with_logits(logit.double(), y.double())), rel=1e-5
    )
    assert result.accuracy == pytest.approx(float(((logit > 0).long() == y).double().mean()))


def test_evaluate_restores_mode(digits: DatasetSplit) -> None:
    model = _cnn(digits)
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append(m.training))
    model.train()
    evaluate(model, digits.valid)
    assert model.training
    model.eval()
    evaluate(model, digits.valid)
    assert not model.training
    assert seen and not any(seen)


def test_evaluate_counts_non_finite_outputs_as_wrong(digits: DatasetSplit) -> None:
    model = _cnn(digits)
    with torch.no_grad():
        model.classifier.bias.fill_(math.nan)
    result = evaluate(model, digits.valid)
    assert result.accuracy == 0.0
    assert math.isnan(result.loss)


def test_train_epoch_returns_weighted_mean_loss(teacher_2d: DatasetSplit) -> None:
    # With lr tiny the weights barely move, so the mean training loss equals the loss of the
    # initial model on the whole train part.
    model = build_model("mlp-2-3-1", data=teacher_2d)
    initial = evaluate(model, teacher_2d.train).loss
    optimizer = make_optimizer("sgd", model.parameters(), lr=1e-12, momentum=0.0)
    loader = make_loader(teacher_2d.train, batch_size=37, shuffle=True)
    assert train_epoch(model, loader, optimizer) == pytest.approx(initial, rel=1e-5)


def test_train_epoch_nan_loss_returns_nan_without_stepping(digits: DatasetSplit) -> None:
    model = _cnn(digits)
    with torch.no_grad():
        model.classifier.weight[0, 0] = math.nan
    before = {k: v.clone() for k, v in model.named_parameters()}
    optimizer = make_optimizer("sgd", model.parameters(), lr=0.1)
    loader = make_loader(digits.train, batch_size=64, shuffle=True)
    assert math.isnan(train_epoch(model, loader, optimizer))
    # No step was taken with the NaN gradients: the parameters are unchanged.
    for k, v in model.named_parameters():
        assert torch.allclose(before[k], v, rtol=0.0, atol=0.0, equal_nan=True)


# ---------------------------------------------------------------------------------------------
# fit


def test_small_cnn_learns_digits(digits: DatasetSplit) -> None:
    model = build_model("cnn", data=digits, seed=0)
    result = fit(model, digits, optimizer="sgd", lr=0.05, momentum=0.9, epochs=5)
    assert result.valid_accuracy[-1] > 0.9
    assert result.test_accuracy > 0.9
    assert result.epochs == 5
    assert len(result.train_loss) == len(result.valid_loss) == len(result.lrs) == 5
    assert len(result.epoch_seconds) == 5
    assert result.train_loss[-1] < result.train_loss[0]
    assert result.lrs == [0.05] * 5
    assert not result.diverged
    assert result.seconds >= sum(result.epoch_seconds) > 0
    assert result.best_valid_accuracy == max(result.valid_accuracy)


def test_teacher_mlp_learns_its_teacher(teacher_2d: DatasetSplit) -> None:
    model = build_model("mlp-2-5-5-1", data=teacher_2d, seed=1)
    result = fit(model, teacher_2d, optimizer="adam", lr=0.03, batch_size=32, epochs=20)
    assert result.valid_accuracy[-1] > 0.9


def test_fit_is_deterministic(digits: DatasetSplit) -> None:
    def run(fit_seed: int) -> tuple[list[float], list[float], dict[str, torch.Tensor]]:
        model = _cnn(digits, seed=0)
        r = fit(model, digits, optimizer="sgd", lr=0.05, epochs=2, seed=fit_seed)
        return r.train_loss, r.valid_accuracy, model.state_dict()

    state = torch.get_rng_state()
    loss_a, acc_a, weights_a = run(0)
    loss_b, acc_b, weights_b = run(0)
    loss_c, _, weights_c = run(1)
    assert torch.equal(state, torch.get_rng_state())  # global RNG untouched
    assert loss_a == loss_b
    assert acc_a == acc_b
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert loss_a != loss_c
    assert not all(torch.equal(weights_a[k], weights_c[k]) for k in weights_a)


def test_fit_reports_to_trial(digits: DatasetSplit) -> None:
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    result = fit(_cnn(digits), digits, epochs=3, trial=trial)
    study.tell(trial, result.valid_accuracy[-1])
    assert study.trials[0].intermediate_values == {
        step + 1: acc for step, acc in enumerate(result.valid_accuracy)
    }


def test_fit_prunes_after_first_epoch(digits: DatasetSplit) -> None:
    study = optuna.create_study(direction="maximize", pruner=DeterministicPruner(True))
    trial = study.ask()
    epochs_seen: list[int] = []
    with pytest.raises(optuna.TrialPruned):
        fit(
            _cnn(digits),
            digits,
            epochs=3,
            trial=trial,
            prune=True,
            epoch_callback=lambda epoch, model: epochs_seen.append(epoch),
        )
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    assert list(study.trials[0].intermediate_values) == [1]
    assert epochs_seen == [0]


def test_fit_does_not_prune_when_not_asked(digits: DatasetSplit) -> None:
    study = optuna.create_study(direction="maximize", pruner=DeterministicPruner(True))
    trial = study.ask()
    result = fit(_cnn(digits), digits, epochs=2, trial=trial, prune=False)
    assert result.epochs == 2


def test_fit_prune_with_optimize(teacher_2d: DatasetSplit) -> None:
    study = optuna.create_study(direction="maximize", pruner=DeterministicPruner(True))

    def objective(trial: optuna.Trial) -> float:
        model = build_model("mlp-2-3-1", data=teacher_2d)
        lr = trial.suggest_float("lr", 1e-3, 1e-1, log=True)
        return fit(model, teacher_2d, lr=lr, epochs=2, trial=trial, prune=True).valid_accuracy[-1]

    study.optimize(objective, n_trials=2)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.PRUNED] * 2


def test_fit_epoch_callback(digits: DatasetSplit) -> None:
    calls: list[tuple[int, bool]] = []
    model = _cnn(digits)
    fit(model, digits, epochs=3, epoch_callback=lambda e, m: calls.append((e, m is model)))
    assert calls == [(0, True), (1, True), (2, True)]


def test_fit_steps_scheduler_every_iteration(digits: DatasetSplit) -> None:
    steps_per_epoch: list[int] = []

    def schedule(optimizer: torch.optim.Optimizer, n: int) -> LambdaLR:
        steps_per_epoch.append(n)
        return LambdaLR(optimizer, lambda i: 1.0 / (1.0 + i))

    result = fit(_cnn(digits), digits, lr=0.1, batch_size=100, epochs=3, schedule=schedule)
    n = math.ceil(len(digits.train) / 100)
    assert steps_per_epoch == [n]
    for epoch, lr in enumerate(result.lrs):
        assert lr == pytest.approx(0.1 / (1.0 + epoch * n))


@pytest.mark.parametrize(
    "optimizer, lr", [("sgd", 0.05), ("adam", 2e-3), ("adagrad", 0.02), ("rmsprop", 1e-3)]
)
def test_every_optimizer_trains(digits: DatasetSplit, optimizer: str, lr: float) -> None:
    result = fit(_cnn(digits), digits, optimizer=optimizer, lr=lr, epochs=3)
    assert result.train_loss[2] < result.train_loss[0]
    assert result.valid_accuracy[2] > 0.5


def test_fit_with_hypergradient_descent_adapts_the_rate(digits: DatasetSplit) -> None:
    adapted = fit(_cnn(digits), digits, optimizer="sgd_hd", lr=0.01, epochs=3)
    assert adapted.lrs[0] == 0.01
    assert adapted.lrs[2] > adapted.lrs[1] > 0.01  # the rate at the start of each epoch
    assert adapted.train_loss[2] < adapted.train_loss[0]
    # With hypergrad_lr=0 it is "sgd" exactly.
    frozen = fit(_cnn(digits), digits, optimizer="sgd_hd", lr=0.01, epochs=2, hypergrad_lr=0.0)
    plain = fit(_cnn(digits), digits, optimizer="sgd", lr=0.01, epochs=2)
    assert frozen.lrs == plain.lrs == [0.01, 0.01]
    assert frozen.train_loss == plain.train_loss
    assert frozen.valid_loss == plain.valid_loss


def test_optimizer_names_are_covered() -> None:
    assert set(OPTIMIZER_NAMES) == {"sgd", "adam", "adagrad", "rmsprop", "sgd_hd", "adam_hd"}


@pytest.mark.parametrize("optimizer", ["sgd_hd", "adam_hd"])
def test_fit_refuses_a_schedule_with_hypergradient_descent(
    teacher_2d: DatasetSplit, optimizer: str
) -> None:
    # A scheduler would overwrite the rate the optimizer adapts (it used to, silently).
    model = build_model("mlp-2-5-5-1", data=teacher_2d)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(
        ValueError, match=f"`schedule` .* must be None for `optimizer` '{optimizer}'"
    ):
        fit(
            model,
            teacher_2d,
            optimizer=optimizer,
            lr=0.01,
            epochs=1,
            schedule=lambda opt, steps: LambdaLR(opt, lambda step: 1.0),
        )
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_fit_divergence_is_reported_not_raised(teacher_2d: DatasetSplit) -> None:
    calls: list[int] = []
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    model = build_model("mlp-2-3-1", data=teacher_2d)
    result = fit(
        model,
        teacher_2d,
        lr=1e8,
        epochs=5,
        trial=trial,
        epoch_callback=lambda e, m: calls.append(e),
    )
    assert result.diverged
    assert result.epochs < 5
    assert len(result.train_loss) == len(result.valid_accuracy) == result.epochs
    assert not (math.isfinite(result.train_loss[-1]) and math.isfinite(result.valid_loss[-1]))
    assert calls == list(range(result.epochs - 1))  # not called for the diverged epoch
    assert len(study._storage.get_trial(trial._trial_id).intermediate_values) == result.epochs


@pytest.mark.parametrize("epochs", [0, -1])
def test_fit_bad_epochs(digits: DatasetSplit, epochs: int) -> None:
    with pytest.raises(ValueError, match="epochs"):
        fit(_cnn(digits), digits, epochs=epochs)


def test_fit_bad_optimizer(digits: DatasetSplit) -> None:
    with pytest.raises(ValueError, match="lr"):
        fit(_cnn(digits), digits, lr=-1.0)


def test_fit_accepts_device_objects(teacher_2d: DatasetSplit) -> None:
    a = fit(build_model("mlp-2-1", data=teacher_2d), teacher_2d, epochs=1, device="cpu")
    b = fit(
        build_model("mlp-2-1", data=teacher_2d), teacher_2d, epochs=1, device=torch.device("cpu")
    )
    assert a.train_loss == b.train_loss


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fit_on_cuda(digits: DatasetSplit) -> None:
    model = _cnn(digits)
    result = fit(model, digits, epochs=3, device="cuda")
    assert next(model.parameters()).is_cuda
    assert result.valid_accuracy[-1] > 0.8
    assert evaluate(model, digits.valid, device="cuda").accuracy == result.valid_accuracy[-1]
