from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from optuna_ext.optim import lr_range_test
from optuna_ext.optim import LRRangeTestResult
from optuna_ext.optim import SUGGESTED_BY
from optuna_ext.tasks import build_model
from optuna_ext.tasks import DatasetSplit
from optuna_ext.tasks import make_loader
from optuna_ext.tasks import make_teacher_data


N_SAMPLES, N_FEATURES = 256, 5


@pytest.fixture(scope="module")
def regression() -> tuple[TensorDataset, float]:
    """Linear least squares, and the rate above which full-batch SGD diverges (2 / L)."""
    generator = torch.Generator().manual_seed(0)
    scales = torch.tensor([1.0, 2.0, 0.5, 1.5, 3.0])
    x = torch.randn(N_SAMPLES, N_FEATURES, generator=generator) * scales
    w = torch.randn(N_FEATURES, 1, generator=generator)
    y = x @ w + 0.1 * torch.randn(N_SAMPLES, 1, generator=generator)
    # The mean squared error has the Hessian (2 / N) X^T X; SGD diverges for lr > 2 / L.
    hessian = (2.0 / N_SAMPLES) * x.T.double() @ x.double()
    curvature = torch.linalg.eigvalsh(hessian).max().item()
    return TensorDataset(x, y), 2.0 / curvature


@pytest.fixture(scope="module")
def teacher() -> DatasetSplit:
    return make_teacher_data(teacher="2-3-1", n_samples=400, seed=0)


def _linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(N_FEATURES, 1, bias=False)


def _full_batch_test(data: TensorDataset, **kwargs: Any) -> LRRangeTestResult:
    arguments: dict[str, Any] = {
        "optimizer": "sgd",
        "momentum": 0.0,
        "batch_size": N_SAMPLES,
        "loss_fn": F.mse_loss,
        "min_lr": 1e-5,
        "max_lr": 10.0,
        **kwargs,
    }
    return lr_range_test(_linear(), data, **arguments)


def test_suggestion_lies_below_the_divergence_threshold(
    regression: tuple[TensorDataset, float],
) -> None:
    data, threshold = regression
    result = _full_batch_test(data)
    # The steepest descent is well inside the stable range, yet not absurdly small.
    assert threshold / 50 < result.suggested_lr < threshold / 2
    assert result.rule == result.suggested_by == "steepest"
    assert threshold / 100 < result.suggest("min_div_10") < threshold
    # A finer sweep agrees within a small factor.
    finer = _full_batch_test(data, num_steps=200)
    assert threshold / 50 < finer.suggested_lr < threshold / 2
    assert 1 / 3 < finer.suggested_lr / result.suggested_lr < 3


def test_stops_early_on_divergence(regression: tuple[TensorDataset, float]) -> None:
    data, threshold = regression
    result = _full_batch_test(data)
    assert result.diverged and result.stopped_early
    assert len(result.lrs) == len(result.losses) == len(result.smoothed_losses) < 100
    # It only diverges past the threshold, and it notices within a few steps.
    assert threshold < result.lrs[-1] < 20 * threshold
    assert result.smoothed_losses[-1] > 4.0 * min(result.smoothed_losses)
    assert all(
        s <= 4.0 * min(result.smoothed_losses[: i + 1])
        for i, s in enumerate(result.smoothed_losses[:-1])
    )
    # Without the factor test it goes on until the loss overflows (a non-finite loss always
    # stops it); the suggestion ignores the non-finite end.
    endless = _full_batch_test(data, divergence_factor=math.inf)
    assert endless.diverged and len(result.lrs) < len(endless.lrs) < 100
    assert not math.isfinite(endless.losses[-1])
    assert all(math.isfinite(loss) for loss in endless.losses[:-1])
    assert endless.suggested_lr == result.suggested_lr
    # A rate range that stays stable runs all the steps.
    stable = _full_batch_test(data, max_lr=threshold / 4, num_steps=30)
    assert not stable.diverged and not stable.stopped_early and len(stable.lrs) == 30


def test_rates_grow_exponentially_and_losses_are_smoothed_with_bias_correction(
    regression: tuple[TensorDataset, float],
) -> None:
    data, _ = regression
    result = _full_batch_test(data, min_lr=1e-4, max_lr=1e-2, num_steps=11, smoothing=0.9)
    assert result.lrs == pytest.approx([1e-4 * 10 ** (0.2 * i) for i in range(11)], rel=1e-12)
    average = 0.0
    for i, (loss, smoothed) in enumerate(zip(result.losses, result.smoothed_losses, strict=True)):
        average = 0.9 * average + 0.1 * loss
        assert smoothed == pytest.approx(average / (1 - 0.9 ** (i + 1)), rel=1e-12)
    assert result.smoothed_losses[0] == result.losses[0]  # bias-corrected: no pull towards 0
    raw = _full_batch_test(data, min_lr=1e-4, max_lr=1e-2, num_steps=11, smoothing=0.0)
    assert raw.smoothed_losses == raw.losses


def test_losses_are_the_losses_each_rate_led_to(regression: tuple[TensorDataset, float]) -> None:
    data, _ = regression
    result = _full_batch_test(data, min_lr=1e-3, max_lr=1e-2, num_steps=3)
    model = _linear()
    x, y = data.tensors
    for lr, loss in zip(result.lrs, result.losses, strict=True):
        model.zero_grad()
        F.mse_loss(model(x), y).backward()
        with torch.no_grad():
            for p in model.parameters():
                assert p.grad is not None
                p.sub_(lr * p.grad)
        assert F.mse_loss(model(x), y).item() == pytest.approx(loss, rel=1e-5)


def test_weights_buffers_gradients_and_mode_are_restored(teacher: DatasetSplit) -> None:
    model = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
    model.eval()
    params = list(model.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    marker = torch.full_like(params[0], 7.0)
    params[0].grad = marker
    result = lr_range_test(model, teacher, num_steps=30, min_lr=1e-3, max_lr=1.0)
    assert len(result.lrs) > 1
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert list(model.parameters()) == params  # the same tensors, restored in place
    assert params[0].grad is marker and params[1].grad is None
    assert not model.training


def test_weights_are_restored_after_an_error(teacher: DatasetSplit) -> None:
    model = build_model("mlp-2-3-1", data=teacher)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []

    def failing_loss(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        if len(calls) > 5:
            raise RuntimeError("boom")
        return F.binary_cross_entropy_with_logits(outputs[:, 0], labels.float())

    with pytest.raises(RuntimeError, match="boom"):
        lr_range_test(model, teacher, loss_fn=failing_loss, num_steps=20)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_deterministic_under_a_seed(teacher: DatasetSplit) -> None:
    def run(seed: int) -> LRRangeTestResult:
        model = build_model("mlp-2-3-1", data=teacher, seed=0)
        return lr_range_test(model, teacher, num_steps=40, min_lr=1e-4, max_lr=10.0, seed=seed)

    state = torch.random.get_rng_state()
    first, second, other = run(0), run(0), run(1)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is untouched
    assert first == second
    assert first.losses != other.losses  # another batch order


def test_accepts_a_loader_and_a_dataset(teacher: DatasetSplit) -> None:
    def run(data: Any) -> LRRangeTestResult:
        model = build_model("mlp-2-3-1", data=teacher, seed=0)
        return lr_range_test(model, data, num_steps=30, batch_size=32, seed=3)

    from_split = run(teacher)
    assert run(teacher.train) == from_split
    assert run(make_loader(teacher.train, batch_size=32, shuffle=True, seed=3)) == from_split
    # A loader shorter than the test is gone over again (2 batches a pass, 10 steps).
    tiny = make_loader(TensorDataset(*teacher.train[:64]), batch_size=32, shuffle=False)
    model = build_model("mlp-2-3-1", data=teacher, seed=0)
    assert len(lr_range_test(model, tiny, num_steps=10, max_lr=1e-3).lrs) == 10


def test_other_optimizers(teacher: DatasetSplit) -> None:
    for name in ("adam", "rmsprop", "adagrad"):
        model = build_model("mlp-2-3-1", data=teacher, seed=0)
        result = lr_range_test(model, teacher, optimizer=name, num_steps=40, max_lr=10.0)
        assert 1e-7 <= result.suggested_lr <= 10.0


def test_suggest_rules_on_a_known_curve() -> None:
    lrs = tuple(10.0 ** (k - 6) for k in range(8))
    # Falls slowly, steeply between 1e-3 and 1e-2, flattens, then blows up (non-finite last).
    smoothed = (1.0, 0.99, 0.97, 0.9, 0.3, 0.25, 2.0, math.nan)
    result = LRRangeTestResult(
        lrs=lrs,
        losses=smoothed,
        smoothed_losses=smoothed,
        suggested_lr=0.0,
        rule="steepest",
        diverged=True,
        num_steps=8,
    )
    # Central differences up to the minimum (0.25 at 1e-1): the slopes at 1e-3 and 1e-2 are
    # (0.3 - 0.97) / 2 and (0.25 - 0.9) / 2 steps, so the steepest is at 1e-3.
    assert result.suggest("steepest") == pytest.approx(1e-3)
    assert result.suggest("min_div_10") == pytest.approx(1e-1 / 10)
    never_falls = LRRangeTestResult(
        lrs=lrs[:3],
        losses=(1.0, 2.0, 3.0),
        smoothed_losses=(1.0, 2.0, 3.0),
        suggested_lr=0.0,
        rule="steepest",
        diverged=False,
        num_steps=3,
    )
    assert never_falls.suggest() == lrs[0]
    with pytest.raises(ValueError, match="`rule`"):
        result.suggest("valley")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"optimizer": "sgd_hd"}, ValueError, "`optimizer`"),
        ({"optimizer": "lbfgs"}, ValueError, "`optimizer`"),
        ({"min_lr": 0.0}, ValueError, "`min_lr > 0`"),
        ({"min_lr": math.nan}, ValueError, "`min_lr`"),
        ({"max_lr": math.inf}, ValueError, "`max_lr`"),
        ({"min_lr": 1.0, "max_lr": 0.5}, ValueError, "`max_lr > min_lr`"),
        ({"num_steps": 1}, ValueError, "`num_steps`"),
        ({"num_steps": 10.0}, ValueError, "`num_steps`"),
        ({"smoothing": 1.0}, ValueError, "`0 <= smoothing < 1`"),
        ({"smoothing": -0.1}, ValueError, "`0 <= smoothing < 1`"),
        ({"divergence_factor": 1.0}, ValueError, "`divergence_factor > 1`"),
        ({"rule": "valley"}, ValueError, "`rule`"),
        ({"min_lr": "1e-3"}, TypeError, "`min_lr`"),
        ({"seed": 1.5}, TypeError, "`seed`"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        # An infinite ratio used to give infinite rates; too close bounds, repeated rates.
        ({"min_lr": 1e-300, "max_lr": 1e300}, ValueError, "`max_lr / min_lr` must be finite"),
        ({"min_lr": 1.0, "max_lr": 1.0 + 1e-15}, ValueError, "too close"),
        ({"smoothing": False}, ValueError, "`smoothing` is False"),
        ({"divergence_factor": True}, ValueError, "`divergence_factor` is True"),
        ({"loss_fn": "mse"}, TypeError, "`loss_fn`"),
        ({"momentum": True}, TypeError, "`momentum` is True"),
    ],
)
def test_bad_arguments(
    teacher: DatasetSplit, kwargs: dict[str, Any], error: type, match: str
) -> None:
    model = build_model("mlp-2-3-1", data=teacher)
    with pytest.raises(error, match=match):
        lr_range_test(model, teacher, **kwargs)


def test_empty_data_and_no_parameters_raise(teacher: DatasetSplit) -> None:
    with pytest.raises(ValueError, match="no batch"):
        lr_range_test(build_model("mlp-2-3-1", data=teacher), [], num_steps=5)
    with pytest.raises(ValueError, match="no parameters"):
        lr_range_test(nn.ReLU(), teacher)


def test_bad_data_and_losses_name_the_problem(teacher: DatasetSplit) -> None:
    model = build_model("mlp-2-3-1", data=teacher)
    x, y = teacher.train.tensors
    with pytest.raises(TypeError, match="`data` is of type 'int'"):
        lr_range_test(model, 5, num_steps=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be a pair `\\(inputs, labels\\)`"):
        lr_range_test(model, (x, y), num_steps=5)  # type: ignore[arg-type]  # a pair of tensors, not of batches
    with pytest.raises(ValueError, match="scalar tensor .*returned float"):
        lr_range_test(model, teacher, num_steps=5, loss_fn=lambda out, lab: 1.0)  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError, match="scalar tensor .*shape"):
        lr_range_test(model, teacher, num_steps=5, loss_fn=lambda out, lab: out)
    # A one-pass iterator cannot be gone over again: the message says so (it used to say
    # "yielded no batch"), and the model is restored; with enough batches it works.
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="yielded 4 batches .*one-pass iterator.*num_steps <= 3"):
        lr_range_test(model, iter(batches), num_steps=10)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert len(lr_range_test(model, iter(batches), num_steps=3).lrs) == 3


def _result(**kwargs: Any) -> LRRangeTestResult:
    fields: dict[str, Any] = {
        "lrs": (1e-3, 1e-2, 1e-1),
        "losses": (1.0, 0.5, 0.2),
        "smoothed_losses": (1.0, 0.5, 0.2),
        "suggested_lr": 1e-2,
        "rule": "steepest",
        "diverged": False,
        "num_steps": 3,
        **kwargs,
    }
    return LRRangeTestResult(**fields)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        # Each used to reach suggest() as an IndexError or a silent answer from bad rates.
        ({"lrs": (), "losses": (), "smoothed_losses": ()}, "`lrs` is empty"),
        ({"lrs": (1e-3, 1e-2)}, "lengths .* are 2, 3 and 3"),
        ({"smoothed_losses": (1.0, 0.5)}, "lengths .* are 3, 3 and 2"),
        ({"lrs": (-1.0, 1e-2, 1e-1)}, "strictly increase"),
        ({"lrs": (1e-2, 1e-2, 1e-1)}, "strictly increase"),
        ({"lrs": (1e-3, 1e-2, math.inf)}, "finite rates"),
        ({"rule": "valley"}, "`rule`"),
        ({"num_steps": 2}, "`num_steps`"),
    ],
)
def test_result_checks_its_fields(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _result(**kwargs)
    assert _result().suggest("min_div_10") == pytest.approx(1e-2)


def _smoothed(losses: list[float], smoothing: float = 0.98) -> tuple[float, ...]:
    """The bias-corrected exponential average of ``losses``, as :func:`lr_range_test` makes it."""
    average, out = 0.0, []
    for i, loss in enumerate(losses):
        average = smoothing * average + (1.0 - smoothing) * loss
        out.append(average / (1.0 - smoothing ** (i + 1)))
    return tuple(out)


def _curve(lrs: tuple[float, ...], losses: list[float]) -> LRRangeTestResult:
    smoothed = _smoothed(losses)
    return LRRangeTestResult(
        lrs=lrs,
        losses=tuple(losses),
        smoothed_losses=smoothed,
        suggested_lr=0.0,
        rule="steepest",
        diverged=False,
        num_steps=len(lrs),
    )


SWEEP = tuple(1e-5 * 1e6 ** (i / 199) for i in range(200))  # 200 rates from 1e-5 to 10


def test_steepest_ignores_a_flat_noisy_start_and_finds_the_drop() -> None:
    # Flat at 0.7 up to 1e-2 (batch noise of 0.03), then a drop to 0.2 by 1.0, then flat: the
    # shape of the teacher MLPs' curves. The first batches' noise, seen through the
    # bias-corrected average of one or two batches, must not read as the steepest slope.
    generator = np.random.default_rng(0)
    log_lrs = np.log10(SWEEP)
    clean = 0.2 + 0.5 / (1.0 + np.exp(4.0 * (log_lrs + 1.0)))  # steepest at 1e-1
    losses = list(clean + 0.03 * generator.standard_normal(len(SWEEP)))
    losses[1] = clean[1] - 0.09  # one lucky second batch (a 3-sigma one)
    result = _curve(SWEEP, losses)
    suggestion = result.suggest("steepest")
    assert 1e-2 < suggestion < 1.0
    assert result.explain("steepest") == "steepest"
    # The flat start without the lucky batch: still inside the drop, for any noise.
    for seed in range(5):
        noisy = clean + 0.03 * np.random.default_rng(seed).standard_normal(len(SWEEP))
        assert 1e-2 < _curve(SWEEP, list(noisy)).suggest() < 1.0


@pytest.mark.parametrize("seed", [4, 5])
def test_steepest_on_a_real_flat_start(teacher: DatasetSplit, seed: int) -> None:
    # The 2-3-1 teacher MLP with SGD (momentum 0.9) from 1e-5 to 10: the smoothed loss is flat
    # up to about 1e-2, then falls; the steepest descent is past 1e-2, not the first rates
    # (with these seeds the first batches' noise used to give 1.15e-5).
    model = build_model("mlp-2-3-1", data=teacher, seed=seed)
    result = lr_range_test(
        model, teacher, min_lr=1e-5, max_lr=10.0, num_steps=200, batch_size=128, seed=seed
    )
    assert result.suggested_by == "steepest"
    assert 1e-2 < result.suggested_lr < 5.0
    smoothed = result.smoothed_losses
    assert abs(smoothed[80] - smoothed[20]) < 0.05 * smoothed[20]  # flat from 4e-5 to 3e-3


def test_steepest_falls_back_without_a_clear_descent() -> None:
    # Pure noise around 0.7: no clear descent, so a tenth of the rate at the minimum.
    noise = 0.7 + 0.01 * np.random.default_rng(1).standard_normal(len(SWEEP))
    flat = _curve(SWEEP, list(noise))
    assert flat.explain() == "min_div_10 (fallback: no clear descent)"
    assert flat.suggest() == flat.suggest("min_div_10")
    assert flat.explain("min_div_10") == "min_div_10"
    # Rising from the start: the minimum is at the smallest rates, whose tenth was not tested.
    rising = _curve(SWEEP, [0.7 + 0.01 * i for i in range(len(SWEEP))])
    assert rising.suggest() == SWEEP[0]
    assert rising.explain().startswith("smallest rate")
    assert rising.explain() in SUGGESTED_BY
    # A result of the test records what produced its suggestion.
    empty = LRRangeTestResult(
        lrs=(1.0,),
        losses=(math.nan,),
        smoothed_losses=(math.nan,),
        suggested_lr=1.0,
        rule="steepest",
        diverged=True,
        num_steps=5,
    )
    assert empty.suggest() == 1.0 and empty.explain() == "smallest rate (no finite loss)"
