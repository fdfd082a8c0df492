from __future__ import annotations

from collections.abc import Callable
import copy
import io
import math
from typing import Any

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import pytest
import torch
from torch import nn

from optuna_ext.optim import AdamHD
from optuna_ext.optim import SGDHD


def _two_layer(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(dtype)


def _batches(
    n: int, seed: int = 1, dtype: torch.dtype = torch.float32
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(16, 4, generator=generator, dtype=dtype),
            torch.randn(16, 3, generator=generator, dtype=dtype),
        )
        for _ in range(n)
    ]


def _train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
) -> None:
    for x, y in batches:
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()


def _same_parameters(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


# -- hypergrad_lr = 0 is the plain optimizer, bit for bit --------------------------------------


SGD_VARIANTS = [
    {},
    {"momentum": 0.9},
    {"momentum": 0.9, "nesterov": True},
    {"momentum": 0.5, "dampening": 0.3},
    {"weight_decay": 1e-2},
    {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
]


@pytest.mark.parametrize("kwargs", SGD_VARIANTS)
def test_sgd_hd_with_zero_hypergrad_lr_is_torch_sgd(kwargs: dict[str, Any]) -> None:
    model, reference = _two_layer(), _two_layer()
    batches = _batches(25)
    optimizer = SGDHD(model.parameters(), lr=0.05, hypergrad_lr=0.0, **kwargs)
    _train(model, optimizer, batches)
    _train(reference, torch.optim.SGD(reference.parameters(), lr=0.05, **kwargs), batches)
    assert _same_parameters(model, reference)
    assert optimizer.lr_history[0] == [0.05] * 25


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"weight_decay": 1e-2}, {"betas": (0.8, 0.99), "eps": 1e-6}, {"betas": (0.0, 0.9)}],
)
def test_adam_hd_with_zero_hypergrad_lr_is_torch_adam(kwargs: dict[str, Any]) -> None:
    # Bitwise on the CPU: the same operations in the same order as Adam's single-tensor step.
    model, reference = _two_layer(), _two_layer()
    batches = _batches(25)
    optimizer = AdamHD(model.parameters(), lr=0.01, hypergrad_lr=0.0, **kwargs)
    _train(model, optimizer, batches)
    _train(reference, torch.optim.Adam(reference.parameters(), lr=0.01, **kwargs), batches)
    assert _same_parameters(model, reference)
    assert optimizer.param_groups[0]["lr"] == 0.01


@settings(max_examples=25, deadline=None)
@given(
    shapes=st.lists(
        st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple), min_size=1, max_size=4
    ),
    momentum=st.sampled_from([0.0, 0.5, 0.9]),
    nesterov=st.booleans(),
    weight_decay=st.sampled_from([0.0, 1e-3]),
    lr=st.floats(1e-4, 0.5),
    seed=st.integers(0, 2**16),
)
def test_zero_hypergrad_lr_equivalence_over_random_shapes(
    shapes: list[tuple[int, ...]],
    momentum: float,
    nesterov: bool,
    weight_decay: float,
    lr: float,
    seed: int,
) -> None:
    nesterov = nesterov and momentum > 0
    generator = torch.Generator().manual_seed(seed)
    initial = [torch.randn(shape, generator=generator) for shape in shapes]
    ours = [nn.Parameter(t.clone()) for t in initial]
    theirs = [nn.Parameter(t.clone()) for t in initial]
    sgd_kwargs: dict[str, Any] = {
        "momentum": momentum,
        "nesterov": nesterov,
        "weight_decay": weight_decay,
    }
    optimizers = [
        SGDHD(ours, lr=lr, hypergrad_lr=0.0, **sgd_kwargs),
        torch.optim.SGD(theirs, lr=lr, **sgd_kwargs),
        AdamHD([nn.Parameter(t.clone()) for t in initial], lr=lr, hypergrad_lr=0.0),
        torch.optim.Adam([nn.Parameter(t.clone()) for t in initial], lr=lr),
    ]
    for _ in range(4):
        targets = [torch.randn(t.shape, generator=generator) for t in initial]
        for optimizer in optimizers:
            optimizer.zero_grad()
            params = optimizer.param_groups[0]["params"]
            loss = sum(((p - t) ** 4).sum() for p, t in zip(params, targets, strict=True))
            torch.autograd.backward(loss)
            optimizer.step()
    for a, b in ((0, 1), (2, 3)):
        pa = optimizers[a].param_groups[0]["params"]
        pb = optimizers[b].param_groups[0]["params"]
        assert all(torch.equal(p, q) for p, q in zip(pa, pb, strict=True))


# -- the rate adapts ------------------------------------------------------------------------------


def _quadratic_run(
    optimizer_factory: Callable[[list[nn.Parameter]], Any], steps: int
) -> tuple[Any, list[float]]:
    scales = torch.tensor([1.0, 2.0], dtype=torch.float64)
    w = nn.Parameter(torch.tensor([1.0, 1.0], dtype=torch.float64))
    optimizer = optimizer_factory([w])
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = 0.5 * (scales * w * w).sum()
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
    return optimizer, losses


def test_sgd_hd_rate_rises_then_settles_on_a_quadratic() -> None:
    optimizer, losses = _quadratic_run(lambda p: SGDHD(p, lr=0.01, hypergrad_lr=0.01), 300)
    rates = optimizer.lr_history[0]
    assert rates[0] == 0.01  # no previous direction at the first step
    assert rates[10] > 10 * rates[0]  # consecutive gradients agree: the rate rises
    # ... and settles: the last 100 steps change it by a negligible amount.
    assert abs(rates[-1] - rates[-100]) < 1e-9 * rates[-1]
    assert 0.1 < rates[-1] < 2 / 2.0  # below the stability limit 2 / L of the quadratic
    _, plain = _quadratic_run(lambda p: SGDHD(p, lr=0.01, hypergrad_lr=0.0), 300)
    assert losses[-1] < 1e-20 < plain[-1]


def test_adam_hd_rate_rises_then_settles_on_a_quadratic() -> None:
    optimizer, losses = _quadratic_run(lambda p: AdamHD(p, lr=1e-3, hypergrad_lr=1e-3), 2000)
    rates = optimizer.lr_history[0]
    assert max(rates) > 10 * rates[0]
    late = rates[-200:]
    assert max(late) - min(late) < 0.05 * max(rates)
    _, plain = _quadratic_run(lambda p: AdamHD(p, lr=1e-3, hypergrad_lr=0.0), 2000)
    assert losses[-1] < 1e-3 * plain[-1]


# -- the paper's rule against a hand computation, and the per-tensor rule ------------------------


def _two_tensor_problem() -> tuple[torch.Tensor, torch.Tensor, Any, Any]:
    """Two parameter tensors and a loss whose gradient is written out by hand below."""
    a0 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    b0 = torch.tensor([[0.3, 0.7], [-1.0, 2.0]], dtype=torch.float64)
    ta = torch.tensor([0.2, 0.1, -0.4], dtype=torch.float64)
    tb = torch.tensor([[1.0, -1.0], [0.5, 0.0]], dtype=torch.float64)
    scale_b = 3.0

    def loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((a - ta) ** 2).sum() + 0.5 * scale_b * ((b - tb) ** 2).sum()

    def grads(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a - ta, scale_b * (b - tb)

    return a0, b0, loss, grads


def _run_two_tensor(
    optimizer_cls: type, steps: int, **kwargs: Any
) -> tuple[torch.Tensor, torch.Tensor, Any]:
    a0, b0, loss, _ = _two_tensor_problem()
    a, b = nn.Parameter(a0.clone()), nn.Parameter(b0.clone())
    optimizer = optimizer_cls([a, b], **kwargs)
    for _ in range(steps):
        optimizer.zero_grad()
        loss(a, b).backward()
        optimizer.step()
    return a.detach(), b.detach(), optimizer


def test_sgd_hd_paper_rule_matches_a_hand_computation() -> None:
    a0, b0, _, grads = _two_tensor_problem()
    alpha0, beta = 0.1, 0.05
    ga0, gb0 = grads(a0, b0)
    a1, b1 = a0 - alpha0 * ga0, b0 - alpha0 * gb0
    ga1, gb1 = grads(a1, b1)
    h = float((ga1 * ga0).sum() + (gb1 * gb0).sum())
    alpha1 = alpha0 + beta * h
    a2, b2 = a1 - alpha1 * ga1, b1 - alpha1 * gb1

    a, b, optimizer = _run_two_tensor(SGDHD, 2, lr=alpha0, hypergrad_lr=beta)
    assert optimizer.lr_history[0] == pytest.approx([alpha0, alpha1], rel=1e-14)
    torch.testing.assert_close(a, a2, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(b, b2, rtol=1e-14, atol=1e-14)

    # The per-tensor rule: `a` steps with the rate moved by its own term only, `b` with both.
    alpha_a = alpha0 + beta * float((ga1 * ga0).sum())
    a_ref, b_ref, per_tensor = _run_two_tensor(
        SGDHD, 2, lr=alpha0, hypergrad_lr=beta, paper_exact=False
    )
    torch.testing.assert_close(a_ref, a1 - alpha_a * ga1, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(b_ref, b2, rtol=1e-14, atol=1e-14)
    assert per_tensor.param_groups[0]["lr"] == pytest.approx(alpha1, rel=1e-14)
    assert not torch.equal(a_ref, a)


def test_adam_hd_paper_rule_matches_a_hand_computation() -> None:
    a0, b0, _, grads = _two_tensor_problem()
    alpha0, beta, beta1, beta2, eps = 0.01, 0.02, 0.9, 0.999, 1e-8

    def adam_step(
        x: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, k: int, alpha: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        u = (m / (1 - beta1**k)) / ((v / (1 - beta2**k)).sqrt() + eps)
        return x - alpha * u, m, v, u

    zero_a, zero_b = torch.zeros_like(a0), torch.zeros_like(b0)
    ga0, gb0 = grads(a0, b0)
    a1, ma, va, ua = adam_step(a0, ga0, zero_a, zero_a, 1, alpha0)
    b1, mb, vb, ub = adam_step(b0, gb0, zero_b, zero_b, 1, alpha0)
    ga1, gb1 = grads(a1, b1)
    h_a, h_b = float((ga1 * ua).sum()), float((gb1 * ub).sum())
    alpha1 = alpha0 + beta * (h_a + h_b)
    a2, *_ = adam_step(a1, ga1, ma, va, 2, alpha1)
    b2, *_ = adam_step(b1, gb1, mb, vb, 2, alpha1)

    kwargs = {"lr": alpha0, "hypergrad_lr": beta, "betas": (beta1, beta2), "eps": eps}
    a, b, optimizer = _run_two_tensor(AdamHD, 2, **kwargs)
    assert optimizer.lr_history[0] == pytest.approx([alpha0, alpha1], rel=1e-12)
    torch.testing.assert_close(a, a2, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(b, b2, rtol=1e-12, atol=1e-14)

    alpha_a = alpha0 + beta * h_a
    a_ref, b_ref, _ = _run_two_tensor(AdamHD, 2, paper_exact=False, **kwargs)
    a2_per_tensor, *_ = adam_step(a1, ga1, ma, va, 2, alpha_a)
    torch.testing.assert_close(a_ref, a2_per_tensor, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(b_ref, b2, rtol=1e-12, atol=1e-14)
    assert not torch.equal(a_ref, a)


@pytest.mark.parametrize("optimizer_cls, lr, beta", [(SGDHD, 0.05, 1e-2), (AdamHD, 1e-2, 1e-4)])
def test_paper_and_per_tensor_rules_differ_on_a_two_tensor_model(
    optimizer_cls: type, lr: float, beta: float
) -> None:
    a, b, paper = _run_two_tensor(optimizer_cls, 10, lr=lr, hypergrad_lr=beta)
    a_ref, b_ref, per_tensor = _run_two_tensor(
        optimizer_cls, 10, lr=lr, hypergrad_lr=beta, paper_exact=False
    )
    assert not torch.equal(a, a_ref)
    assert paper.lr_history[0] != per_tensor.lr_history[0]


@pytest.mark.parametrize("optimizer_cls, lr, beta", [(SGDHD, 0.05, 1e-2), (AdamHD, 1e-2, 1e-4)])
def test_both_rules_agree_on_one_tensor(optimizer_cls: type, lr: float, beta: float) -> None:
    models = [_two_layer(dtype=torch.float64) for _ in range(2)]
    batches = _batches(15, dtype=torch.float64)
    optimizers = []
    for model, paper_exact in zip(models, (True, False), strict=True):
        groups = [{"params": [p]} for p in model.parameters()]  # one tensor per group
        optimizer = optimizer_cls(groups, lr=lr, hypergrad_lr=beta, paper_exact=paper_exact)
        _train(model, optimizer, batches)
        optimizers.append(optimizer)
    assert _same_parameters(*models)
    assert optimizers[0].lr_history == optimizers[1].lr_history


# -- parameter groups ---------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer_cls", [SGDHD, AdamHD])
def test_each_group_adapts_its_own_rate(optimizer_cls: type) -> None:
    model = _two_layer(dtype=torch.float64)
    batches = _batches(20, dtype=torch.float64)
    first, second = model[0], model[2]
    lr = 0.05 if optimizer_cls is SGDHD else 0.01
    optimizer = optimizer_cls(
        [
            {"params": first.parameters(), "hypergrad_lr": 1e-2},
            {"params": second.parameters(), "lr": lr / 2, "hypergrad_lr": 0.0},
        ],
        lr=lr,
    )
    _train(model, optimizer, batches)
    rates_first, rates_second = optimizer.lr_history
    assert rates_second == [lr / 2] * 20
    assert len(set(rates_first)) > 10

    # The same as one optimizer per group: a group's rate depends on its own tensors only.
    twin = _two_layer(dtype=torch.float64)
    apart = [
        optimizer_cls(twin[0].parameters(), lr=lr, hypergrad_lr=1e-2),
        optimizer_cls(twin[2].parameters(), lr=lr / 2, hypergrad_lr=0.0),
    ]
    for x, y in batches:
        for o in apart:
            o.zero_grad()
        nn.functional.mse_loss(twin(x), y).backward()
        for o in apart:
            o.step()
    assert _same_parameters(model, twin)
    assert apart[0].lr_history[0] == rates_first


def test_a_parameter_without_gradient_is_skipped_and_adds_nothing() -> None:
    a = nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    b = nn.Parameter(torch.tensor([-1.0, 0.5], dtype=torch.float64))
    a_alone = nn.Parameter(a.detach().clone())
    both = SGDHD([a, b], lr=0.1, hypergrad_lr=0.05)
    alone = SGDHD([a_alone], lr=0.1, hypergrad_lr=0.05)
    for step in range(3):
        both.zero_grad()
        alone.zero_grad()
        (a**2).sum().backward()
        (a_alone**2).sum().backward()
        b_before = b.detach().clone()
        if step != 1:  # b has no gradient at the second step
            (3 * b**2).sum().backward()
        both.step()
        alone.step()
        if step == 1:
            assert torch.equal(b, b_before)
    # b's terms are 0 at step 2 (no gradient) and step 3 (it did not move at step 2).
    assert both.lr_history[0] == alone.lr_history[0]
    assert torch.equal(a, a_alone)


# -- lower clamp, history, gradients --------------------------------------------------------------


def test_rate_goes_negative_without_clamp_and_lr_min_holds() -> None:
    def run(lr_min: float | None) -> list[float]:
        # Past 1 / a_max the gradients alternate in sign: a large hypergrad_lr then pushes
        # the rate below 0 at the second step (0.6 + 2 * g1.g0 = -0.2).
        optimizer, _ = _quadratic_run(
            lambda p: SGDHD(p, lr=0.6, hypergrad_lr=2.0, lr_min=lr_min), 60
        )
        return optimizer.lr_history[0]

    assert min(run(None)) < 0.0
    clamped = run(0.01)
    assert min(clamped) == 0.01
    assert all(rate >= 0.01 for rate in clamped)


def test_adam_hd_lr_min_holds() -> None:
    free, _ = _quadratic_run(lambda p: AdamHD(p, lr=0.1, hypergrad_lr=0.5), 300)
    assert min(free.lr_history[0]) < 0.0
    optimizer, _ = _quadratic_run(lambda p: AdamHD(p, lr=0.1, hypergrad_lr=0.5, lr_min=1e-4), 300)
    assert min(optimizer.lr_history[0]) == 1e-4


def test_lr_history_is_bounded() -> None:
    optimizer, _ = _quadratic_run(
        lambda p: SGDHD(p, lr=0.01, hypergrad_lr=0.01, lr_history_size=5), 30
    )
    full, _ = _quadratic_run(lambda p: SGDHD(p, lr=0.01, hypergrad_lr=0.01), 30)
    assert optimizer.lr_history[0] == full.lr_history[0][-5:]


@pytest.mark.parametrize(
    "optimizer_cls, kwargs",
    [(SGDHD, {"weight_decay": 0.1}), (SGDHD, {}), (AdamHD, {"weight_decay": 0.1})],
)
def test_gradients_are_not_modified(optimizer_cls: type, kwargs: dict[str, Any]) -> None:
    model = _two_layer()
    optimizer = optimizer_cls(model.parameters(), lr=0.01, hypergrad_lr=1e-3, **kwargs)
    for x, y in _batches(3):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        before = [p.grad.clone() for p in model.parameters()]  # type: ignore[union-attr]
        optimizer.step()
        assert all(
            torch.equal(p.grad, g)  # type: ignore[arg-type]
            for p, g in zip(model.parameters(), before, strict=True)
        )


def test_zeroing_gradients_in_place_does_not_change_the_trajectory() -> None:
    # zero_grad(set_to_none=False) zeroes p.grad in place: the stored direction is a copy.
    models = [_two_layer(), _two_layer()]
    optimizers = [SGDHD(m.parameters(), lr=0.05, hypergrad_lr=1e-2) for m in models]
    for x, y in _batches(10):
        for model, optimizer, to_none in zip(models, optimizers, (True, False), strict=True):
            optimizer.zero_grad(set_to_none=to_none)
            nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
    assert _same_parameters(*models)
    assert optimizers[0].lr_history == optimizers[1].lr_history


def test_step_with_closure_returns_the_loss() -> None:
    model = _two_layer()
    optimizer = AdamHD(model.parameters())
    x, y = _batches(1)[0]

    def closure() -> float:
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss.item()

    before = [p.detach().clone() for p in model.parameters()]
    expected = nn.functional.mse_loss(model(x), y).item()
    assert optimizer.step(closure) == expected
    assert len(optimizer.lr_history[0]) == 1
    assert not any(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


# -- checkpoints ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "optimizer_cls, kwargs",
    [
        (SGDHD, {"lr": 0.05, "hypergrad_lr": 1e-2}),
        (SGDHD, {"lr": 0.05, "hypergrad_lr": 1e-2, "momentum": 0.9}),
        (SGDHD, {"lr": 0.05, "hypergrad_lr": 1e-2, "momentum": 0.9, "nesterov": True}),
        (SGDHD, {"lr": 0.05, "hypergrad_lr": 1e-2, "paper_exact": False, "lr_min": 0.0}),
        (AdamHD, {"lr": 0.01, "hypergrad_lr": 1e-4}),
        (AdamHD, {"lr": 0.01, "hypergrad_lr": 1e-4, "weight_decay": 1e-3, "paper_exact": False}),
    ],
)
def test_state_dict_round_trip_resumes_bit_for_bit(
    optimizer_cls: type, kwargs: dict[str, Any]
) -> None:
    batches = _batches(20)
    model = _two_layer()
    optimizer = optimizer_cls(model.parameters(), **kwargs)
    _train(model, optimizer, batches[:10])
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    _train(model, optimizer, batches[10:])

    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    resumed = _two_layer(seed=123)
    resumed.load_state_dict(checkpoint["model"])
    other = {**kwargs, "lr": 1.0}  # the rate comes from the checkpoint, not the constructor
    resumed_optimizer = optimizer_cls(resumed.parameters(), **other)
    resumed_optimizer.load_state_dict(checkpoint["optimizer"])
    assert resumed_optimizer.param_groups[0]["lr"] == optimizer.lr_history[0][9]
    _train(resumed, resumed_optimizer, batches[10:])
    assert _same_parameters(model, resumed)
    assert resumed_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    assert resumed_optimizer.lr_history[0] == optimizer.lr_history[0][10:]


def test_state_dict_holds_the_adapted_rate() -> None:
    model = _two_layer()
    optimizer = SGDHD(model.parameters(), lr=0.05, hypergrad_lr=1e-2)
    _train(model, optimizer, _batches(5))
    state = copy.deepcopy(optimizer.state_dict())
    assert state["param_groups"][0]["lr"] == optimizer.lr_history[0][-1] != 0.05
    assert state["param_groups"][0]["hypergrad_lr"] == 1e-2


# -- defaults and bad input ---------------------------------------------------------------------


def test_defaults_are_the_papers_settings() -> None:
    params = [nn.Parameter(torch.zeros(2))]
    assert SGDHD(params, lr=0.1).defaults["hypergrad_lr"] == 1e-3
    adam = AdamHD(params)
    assert adam.defaults["hypergrad_lr"] == 1e-7
    assert adam.defaults["lr"] == 1e-3
    assert adam.defaults["paper_exact"] is True
    assert adam.defaults["lr_min"] is None


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"lr": -0.1}, ValueError, "`lr >= 0`"),
        ({"lr": math.nan}, ValueError, "`lr` is nan"),
        ({"lr": "0.1"}, TypeError, "must be a float"),
        ({"hypergrad_lr": -1e-3}, ValueError, "`hypergrad_lr >= 0`"),
        ({"hypergrad_lr": math.inf}, ValueError, "finite"),
        ({"momentum": 1.0}, ValueError, "`0 <= momentum < 1`"),
        ({"momentum": -0.1}, ValueError, "`0 <= momentum < 1`"),
        ({"dampening": 1.5}, ValueError, "`0 <= dampening <= 1`"),
        ({"nesterov": True}, ValueError, "`momentum > 0`"),
        ({"nesterov": True, "momentum": 0.9, "dampening": 0.1}, ValueError, "`dampening == 0`"),
        ({"nesterov": 1}, TypeError, "must be a bool"),
        ({"weight_decay": -1.0}, ValueError, "`weight_decay >= 0`"),
        ({"lr_min": 0.5}, ValueError, "`lr >= lr_min`"),
        ({"lr_min": math.nan}, ValueError, "`lr_min` is nan"),
        ({"paper_exact": "yes"}, TypeError, "`paper_exact`"),
        ({"lr_history_size": 0}, ValueError, "`lr_history_size`"),
    ],
)
def test_sgd_hd_bad_arguments(kwargs: dict[str, Any], error: type, match: str) -> None:
    arguments = {"lr": 0.1, **kwargs}
    with pytest.raises(error, match=match):
        SGDHD([nn.Parameter(torch.zeros(2))], **arguments)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"lr": -1e-3}, ValueError, "`lr >= 0`"),
        ({"betas": (1.0, 0.999)}, ValueError, r"`0 <= betas\[0\] < 1`"),
        ({"betas": (0.9, -0.1)}, ValueError, r"`0 <= betas\[1\] < 1`"),
        ({"betas": (0.9,)}, ValueError, "pair"),
        ({"eps": 0.0}, ValueError, "`eps > 0`"),
        ({"hypergrad_lr": -1.0}, ValueError, "`hypergrad_lr >= 0`"),
        ({"weight_decay": math.inf}, ValueError, "finite"),
        ({"lr_min": 1.0}, ValueError, "`lr >= lr_min`"),
    ],
)
def test_adam_hd_bad_arguments(kwargs: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        AdamHD([nn.Parameter(torch.zeros(2))], **kwargs)


def test_bad_parameter_group_is_rejected_and_not_added() -> None:
    optimizer = SGDHD([nn.Parameter(torch.zeros(2))], lr=0.1)
    with pytest.raises(ValueError, match="`hypergrad_lr >= 0`"):
        optimizer.add_param_group({"params": [nn.Parameter(torch.zeros(3))], "hypergrad_lr": -1})
    assert len(optimizer.param_groups) == 1
    optimizer.add_param_group({"params": [nn.Parameter(torch.zeros(3))], "lr": 0.2})
    assert len(optimizer.param_groups) == len(optimizer.lr_history) == 2


def test_complex_parameters_are_rejected() -> None:
    with pytest.raises(ValueError, match="real floating-point"):
        SGDHD([nn.Parameter(torch.zeros(2, dtype=torch.complex64))], lr=0.1)


@pytest.mark.parametrize("paper_exact", [True, False])
@pytest.mark.parametrize("optimizer_cls", [SGDHD, AdamHD])
def test_a_non_finite_gradient_leaves_the_rate_unchanged(
    optimizer_cls: type, paper_exact: bool
) -> None:
    param = nn.Parameter(torch.ones(3))
    optimizer = optimizer_cls([param], lr=0.1, hypergrad_lr=0.01, paper_exact=paper_exact)
    for grad in (torch.ones(3), torch.tensor([1.0, math.nan, 1.0])):
        param.grad = grad
        optimizer.step()
    # The first step has no previous direction, the second a NaN hypergradient: the rate stays,
    # and the parameters still take the step (the divergence shows in them, not hidden).
    assert optimizer.lr_history[0] == [0.1, 0.1]
    assert optimizer.param_groups[0]["lr"] == 0.1
    assert torch.isnan(param).any()


@pytest.mark.parametrize("optimizer_cls", [SGDHD, AdamHD])
def test_sparse_gradients_are_refused(optimizer_cls: type) -> None:
    embedding = nn.Embedding(5, 2, sparse=True)
    optimizer = optimizer_cls(embedding.parameters(), lr=0.1)
    embedding(torch.tensor([1, 3])).sum().backward()
    with pytest.raises(RuntimeError, match=f"{optimizer_cls.__name__} does not support sparse"):
        optimizer.step()
