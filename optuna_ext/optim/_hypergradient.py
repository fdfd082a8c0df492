"""Hypergradient descent on the learning rate (Baydin et al., ICLR 2018), pure torch.

The rate ``alpha`` of each parameter group is itself trained by gradient descent: the
derivative of the loss at step ``t`` with respect to ``alpha`` is
``-grad f(theta_t) . u_{t-1}``, where ``u_{t-1}`` is the update direction of the previous step
(``theta_t = theta_{t-1} - alpha u_{t-1}``), so each step first moves the rate by
``alpha <- alpha + beta * grad f(theta_t) . u_{t-1}`` and then takes the usual step with the new
rate.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
import math
from typing import Any
from typing import TYPE_CHECKING

import torch


if TYPE_CHECKING:
    from torch.optim.optimizer import ParamsT


# The paper's settings (Baydin et al. 2018, section 5 and the reference code's run.sh).
_SGD_HD_DEFAULT_HYPERGRAD_LR = 1e-3
_ADAM_HD_DEFAULT_HYPERGRAD_LR = 1e-7
_DEFAULT_LR_HISTORY_SIZE = 10_000


def _is_real_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_real(name: str, value: object) -> float:
    if not _is_real_number(value):
        raise TypeError(f"The value of `{name}` is {value!r}, but must be a float.")
    assert isinstance(value, (int, float))
    if not math.isfinite(value):
        raise ValueError(f"The value of `{name}` is {value}, but must be finite.")
    return float(value)


def _check_non_negative(name: str, value: object) -> float:
    number = _check_real(name, value)
    if number < 0.0:
        raise ValueError(f"The value of `{name}` is {value}, but must be `{name} >= 0`.")
    return number


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"The value of `{name}` is {value!r}, but must be a bool.")


class _HypergradientOptimizer(torch.optim.Optimizer):
    """What SGD-HD and Adam-HD share: the rate update, its options, checks and history.

    Subclasses implement :meth:`_check_options` (their own group options),
    :meth:`_hypergradient_term` (``grad . u_prev`` of one tensor, or :obj:`None` when the
    tensor has no previous direction) and :meth:`_update` (the optimizer's step of one tensor
    with a given rate, storing what the next hypergradient needs).
    """

    def __init__(
        self, params: ParamsT, defaults: dict[str, Any], *, lr_history_size: int | None
    ) -> None:
        if lr_history_size is not None and (
            isinstance(lr_history_size, bool)
            or not isinstance(lr_history_size, int)
            or lr_history_size < 1
        ):
            raise ValueError(
                f"The value of `lr_history_size` is {lr_history_size!r}, but must be None or an "
                "int `>= 1`."
            )
        self._lr_history_size = lr_history_size
        self._lr_history: list[deque[float]] = []
        self._check_group(defaults)
        super().__init__(params, defaults)

    # -- options -------------------------------------------------------------------------------

    def _check_group(self, group: dict[str, Any]) -> None:
        lr = _check_non_negative("lr", group["lr"])
        _check_non_negative("hypergrad_lr", group["hypergrad_lr"])
        _check_non_negative("weight_decay", group["weight_decay"])
        lr_min = group["lr_min"]
        if lr_min is not None:
            lr_min = _check_real("lr_min", lr_min)
            if lr < lr_min:
                raise ValueError(
                    f"The value of `lr` is {lr}, but must be `lr >= lr_min` (`lr_min` is "
                    f"{lr_min})."
                )
        _check_bool("paper_exact", group["paper_exact"])
        self._check_options(group)
        for param in group.get("params", ()):
            if torch.is_complex(param) or not torch.is_floating_point(param):
                raise ValueError(
                    f"The parameters must be real floating-point tensors, but one is of dtype "
                    f"{param.dtype}."
                )

    def _check_options(self, group: dict[str, Any]) -> None:
        raise NotImplementedError

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group, checking its options like the constructor does.

        Args:
            param_group:
                The parameters (key ``"params"``) and the options that differ from the
                constructor's, as for :meth:`torch.optim.Optimizer.add_param_group`.
        """
        super().add_param_group(param_group)
        try:
            self._check_group(self.param_groups[-1])
        except (TypeError, ValueError):
            self.param_groups.pop()
            raise
        self._lr_history.append(deque(maxlen=self._lr_history_size))

    # -- history -------------------------------------------------------------------------------

    @property
    def lr_history(self) -> list[list[float]]:
        """The rate each step used, one list per parameter group, oldest first.

        The list of a group holds the rate of the last ``lr_history_size`` steps (all steps
        when ``lr_history_size`` is :obj:`None`). It is not part of :meth:`state_dict`: an
        optimizer restored from a checkpoint starts an empty history (the current rate itself
        is restored, it lives in ``param_groups``).
        """
        return [list(history) for history in self._lr_history]

    # -- the step ------------------------------------------------------------------------------

    def _hypergradient_term(
        self, param: torch.Tensor, grad: torch.Tensor, state: dict[str, Any], group: dict[str, Any]
    ) -> torch.Tensor | None:
        raise NotImplementedError

    def _update(
        self,
        param: torch.Tensor,
        grad: torch.Tensor,
        state: dict[str, Any],
        group: dict[str, Any],
        lr: float,
    ) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Update each group's rate by its hypergradient, then take one step with it.

        Args:
            closure:
                A function that re-evaluates the model and returns the loss, or :obj:`None`.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        while len(self._lr_history) < len(self.param_groups):  # groups set by load_state_dict
            self._lr_history.append(deque(maxlen=self._lr_history_size))
        for index, group in enumerate(self.param_groups):
            self._step_group(group)
            self._lr_history[index].append(float(group["lr"]))
        return loss

    def _step_group(self, group: dict[str, Any]) -> None:
        params: list[torch.Tensor] = []
        grads: list[torch.Tensor] = []
        weight_decay = group["weight_decay"]
        for param in group["params"]:
            if param.grad is None:
                # Skipped this step, so at the next step its previous update direction is 0.
                state = self.state.get(param)
                if state:
                    state["hypergrad_ready"] = False
                continue
            if param.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients.")
            grad = param.grad
            if weight_decay != 0:
                grad = grad.add(param, alpha=weight_decay)  # a new tensor: p.grad is untouched
            params.append(param)
            grads.append(grad)
        if not params:
            return
        lr = float(group["lr"])
        lr_min = group["lr_min"]
        beta = group["hypergrad_lr"]
        lrs = [lr] * len(params)
        if beta != 0:
            terms = [
                self._hypergradient_term(p, g, self.state[p], group)
                for p, g in zip(params, grads, strict=True)
            ]
            device = params[0].device
            zero = torch.zeros((), dtype=torch.float64, device=device)
            # One transfer for the whole group (one synchronization on an accelerator).
            values = torch.stack(
                [zero if t is None else t.to(device=device, dtype=torch.float64) for t in terms]
            ).tolist()
            if group["paper_exact"]:
                h = math.fsum(values)
                if math.isfinite(h):
                    lr = lr + beta * h
                    if lr_min is not None:
                        lr = max(lr, lr_min)
                lrs = [lr] * len(params)
            else:
                for k, value in enumerate(values):
                    if math.isfinite(value):
                        lr = lr + beta * value
                        if lr_min is not None:
                            lr = max(lr, lr_min)
                    lrs[k] = lr
        for param, grad, lr_k in zip(params, grads, lrs, strict=True):
            state = self.state[param]
            self._update(param, grad, state, group, lr_k)
            state["hypergrad_ready"] = True
        group["lr"] = lr


class SGDHD(_HypergradientOptimizer):
    """SGD whose learning rate is adapted online by hypergradient descent (SGD-HD, SGDN-HD).

    Implements SGD-HD of Baydin et al., "Online Learning Rate Adaptation with Hypergradient
    Descent" (ICLR 2018). At every step, before the parameters move, the rate of each
    parameter group is updated with the hypergradient
    ``h = sum over the group's parameters of g_t . u_{t-1}``:
    ``lr <- lr + hypergrad_lr * h``, where ``g_t`` is the current gradient (with the L2
    penalty ``weight_decay * theta`` added) and ``u_{t-1}`` the previous step's update
    direction (the gradient for plain SGD, the momentum buffer with ``momentum > 0``, the
    Nesterov direction ``g + momentum * buf`` with ``nesterov=True``). Then the step is exactly
    :class:`torch.optim.SGD`'s with the new rate. The first step has no previous direction and
    leaves the rate unchanged; with ``hypergrad_lr=0`` the optimizer is
    :class:`torch.optim.SGD`, bit for bit.

    **Paper and reference code.** ``paper_exact=True`` (the default) is the paper's rule: one
    rate update per step from the dot product over all of the group's parameters. The
    reference code (``gbaydin/hypergradient-descent``) also does this for SGD-HD (it flattens
    the model), but its Adam-HD updates the rate tensor by tensor inside the loop over the
    parameters, so later tensors step with a rate already moved by the earlier ones (its issue
    #9). ``paper_exact=False`` applies that per-tensor rule here too, for comparison. Unlike
    the reference, several parameter groups are supported (each group's rate adapts from its
    own parameters' hypergradient, with its own ``hypergrad_lr`` and ``lr_min``), ``p.grad`` is
    never modified in place, and a parameter without a gradient in a step contributes nothing
    to the next step's hypergradient (its update direction in that step was zero).

    **Negative rates.** Without a clamp (``lr_min=None``, as in the reference code) the rate is
    free to go below 0 (reference issues #1 and #4: it fluctuates around 0 late in training,
    or drops below with a large ``hypergrad_lr``). ``lr_min=0.0`` (or a small positive value)
    keeps it above. A non-finite hypergradient (a NaN or infinite gradient) leaves the rate
    unchanged for that step; the parameters still take the step, so divergence shows in the
    loss.

    **Default hypergrad_lr.** ``1e-3``, the paper's setting for SGD-HD and SGDN-HD in all its
    experiments (logistic regression, MLP, VGG, with ``lr=1e-3``); the reference code's
    constructor default is ``1e-6`` and its ``train.py`` default ``1e-6`` too, but its
    ``run.sh`` (the paper's runs) passes ``1e-3``. The hypergradient scales with the squared
    gradient norm, so a large model or a large initial rate may need a smaller value.

    The current rate lives in ``param_groups`` (a checkpoint from :meth:`state_dict` restores
    it), the previous direction in ``state``. Do not combine with a learning-rate scheduler:
    the scheduler would overwrite the adapted rate.

    Example:

        .. testcode::

            import torch
            from optuna_ext.optim import SGDHD

            torch.manual_seed(0)
            model = torch.nn.Linear(3, 1)
            x, y = torch.randn(64, 3), torch.randn(64, 1)
            optimizer = SGDHD(model.parameters(), lr=0.01, momentum=0.9, hypergrad_lr=1e-3)
            for _ in range(20):
                optimizer.zero_grad()
                torch.nn.functional.mse_loss(model(x), y).backward()
                optimizer.step()
            rates = optimizer.lr_history[0]  # the rate of each step, for parameter group 0
            assert len(rates) == 20 and rates[-1] > rates[0]

    Args:
        params:
            The parameters to optimize, or parameter groups (dicts) whose options override
            the ones below.
        lr:
            The initial learning rate, finite and ``>= 0``.
        momentum:
            The momentum factor, in ``[0, 1)``.
        dampening:
            The dampening of the momentum, in ``[0, 1]``.
        weight_decay:
            The L2 penalty, finite and ``>= 0`` (added to the gradient, as in
            :class:`torch.optim.SGD`; the hypergradient uses the penalized gradient too).
        nesterov:
            Whether to use Nesterov momentum (needs ``momentum > 0`` and ``dampening == 0``).
        hypergrad_lr:
            The hypergradient learning rate ``beta``, finite and ``>= 0`` (``0`` gives plain
            SGD with a constant rate).
        lr_min:
            A lower bound the rate is clamped to after every update, or :obj:`None` for no
            bound (the rate may go negative).
        paper_exact:
            ``True`` for the paper's single rate update per step; ``False`` for the
            reference code's per-tensor update (see above).
        lr_history_size:
            How many steps of rates :attr:`lr_history` keeps per group (the most recent), or
            :obj:`None` to keep all.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float,
        *,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        hypergrad_lr: float = _SGD_HD_DEFAULT_HYPERGRAD_LR,
        lr_min: float | None = None,
        paper_exact: bool = True,
        lr_history_size: int | None = _DEFAULT_LR_HISTORY_SIZE,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "hypergrad_lr": hypergrad_lr,
            "lr_min": lr_min,
            "paper_exact": paper_exact,
        }
        super().__init__(params, defaults, lr_history_size=lr_history_size)

    def _check_options(self, group: dict[str, Any]) -> None:
        momentum = _check_real("momentum", group["momentum"])
        if not 0.0 <= momentum < 1.0:
            raise ValueError(
                f"The value of `momentum` is {momentum}, but must be `0 <= momentum < 1`."
            )
        dampening = _check_real("dampening", group["dampening"])
        if not 0.0 <= dampening <= 1.0:
            raise ValueError(
                f"The value of `dampening` is {dampening}, but must be `0 <= dampening <= 1`."
            )
        _check_bool("nesterov", group["nesterov"])
        if group["nesterov"] and (momentum <= 0.0 or dampening != 0.0):
            raise ValueError(
                f"The value of `nesterov` is True, but Nesterov momentum needs `momentum > 0` "
                f"and `dampening == 0` (`momentum` is {momentum}, `dampening` is {dampening})."
            )

    def _hypergradient_term(
        self, param: torch.Tensor, grad: torch.Tensor, state: dict[str, Any], group: dict[str, Any]
    ) -> torch.Tensor | None:
        if not state.get("hypergrad_ready", False):
            return None
        if group["momentum"] != 0 and not group["nesterov"]:
            direction = state.get("momentum_buffer")  # heavy ball: the buffer is the direction
        else:
            direction = state.get("direction")
        if direction is None:
            return None
        return torch.mul(grad, direction).sum(dtype=torch.float64)

    def _update(
        self,
        param: torch.Tensor,
        grad: torch.Tensor,
        state: dict[str, Any],
        group: dict[str, Any],
        lr: float,
    ) -> None:
        # The same operations, in the same order, as torch.optim.SGD's single-tensor step.
        momentum = group["momentum"]
        direction = grad
        if momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = grad.detach().clone()
                state["momentum_buffer"] = buf
            else:
                buf.mul_(momentum).add_(grad, alpha=1 - group["dampening"])
            if group["nesterov"]:
                direction = grad.add(buf, alpha=momentum)
                state["direction"] = direction
            else:
                direction = buf
                state.pop("direction", None)
        else:
            # Without weight decay `grad` is p.grad itself: keep a copy, not the live tensor.
            state["direction"] = direction.clone() if direction is param.grad else direction
        param.add_(direction, alpha=-lr)


class AdamHD(_HypergradientOptimizer):
    """Adam whose learning rate is adapted online by hypergradient descent (Adam-HD).

    Implements Adam-HD of Baydin et al., "Online Learning Rate Adaptation with Hypergradient
    Descent" (ICLR 2018). At every step, before the parameters move, the rate of each
    parameter group is updated with the hypergradient
    ``h = sum over the group's parameters of g_t . u_{t-1}``:
    ``lr <- lr + hypergrad_lr * h``, where ``g_t`` is the current gradient (with the L2
    penalty ``weight_decay * theta`` added) and ``u_{t-1} = m_hat / (sqrt(v_hat) + eps)`` the
    bias-corrected Adam direction of the previous step (the step moved the parameters by
    ``-lr * u_{t-1}``). Then the step is exactly :class:`torch.optim.Adam`'s with the new rate
    (L2 penalty, no AMSGrad). The first step leaves the rate unchanged; with
    ``hypergrad_lr=0`` the optimizer is :class:`torch.optim.Adam`, bit for bit on the CPU
    (the same operations in the same order as its single-tensor implementation; on CUDA
    :class:`torch.optim.Adam` defaults to its multi-tensor kernels, which may round
    differently).

    **Paper and reference code.** ``paper_exact=True`` (the default) is the paper's rule: one
    rate update per step from the dot product over all of the group's parameters. The
    reference code (``gbaydin/hypergradient-descent``, ``hypergrad/adam_hd.py``) updates the
    rate tensor by tensor inside its loop over the parameters, so each tensor steps with a
    rate already moved by the hypergradients of the tensors before it (its issue #9);
    ``paper_exact=False`` reproduces that order. In both modes the previous direction is the
    exact direction of this optimizer's previous step; the reference, written for an older
    Adam that adds ``eps`` to ``sqrt(v)`` before the bias correction, uses that step's
    direction, which differs by a term of order ``eps``. Each parameter group's rate adapts
    from its own parameters' hypergradient, with its own ``hypergrad_lr`` and ``lr_min`` (as
    in the reference Adam-HD). ``p.grad`` is never modified in place. A parameter without a
    gradient in a step contributes nothing to the next step's hypergradient.

    **Negative rates.** Without a clamp (``lr_min=None``, as in the reference code) the rate is
    free to go below 0 (reference issues #1 and #4); ``lr_min=0.0`` keeps it above. A
    non-finite hypergradient leaves the rate unchanged for that step.

    **Default hypergrad_lr.** ``1e-7``, the paper's setting for Adam-HD on logistic regression
    and the MLP (the sizes of this package's tasks); the paper uses ``1e-8`` for VGG-16 on
    CIFAR-10, which is also the reference code's constructor default. The Adam hypergradient
    grows with the number of parameters (each coordinate of ``u`` is of order 1), so larger
    networks want a smaller value.

    The current rate lives in ``param_groups`` (a checkpoint from :meth:`state_dict` restores
    it), the moments and step count in ``state``. Do not combine with a learning-rate
    scheduler: the scheduler would overwrite the adapted rate.

    Example:

        .. testcode::

            import torch
            from optuna_ext.optim import AdamHD

            torch.manual_seed(0)
            model = torch.nn.Linear(3, 1)
            x, y = torch.randn(64, 3), torch.randn(64, 1)
            optimizer = AdamHD(model.parameters(), lr=1e-3, hypergrad_lr=1e-4, lr_min=0.0)
            for _ in range(50):
                optimizer.zero_grad()
                torch.nn.functional.mse_loss(model(x), y).backward()
                optimizer.step()
            assert optimizer.param_groups[0]["lr"] > 1e-3  # the rate has grown

    Args:
        params:
            The parameters to optimize, or parameter groups (dicts) whose options override
            the ones below.
        lr:
            The initial learning rate, finite and ``>= 0``.
        betas:
            The decay rates of the first and second moment averages, each in ``[0, 1)``.
        eps:
            The term added to the denominator, finite and ``> 0``.
        weight_decay:
            The L2 penalty, finite and ``>= 0`` (added to the gradient, as in
            :class:`torch.optim.Adam`; the hypergradient uses the penalized gradient too).
        hypergrad_lr:
            The hypergradient learning rate ``beta``, finite and ``>= 0`` (``0`` gives plain
            Adam with a constant rate).
        lr_min:
            A lower bound the rate is clamped to after every update, or :obj:`None` for no
            bound (the rate may go negative).
        paper_exact:
            ``True`` for the paper's single rate update per step; ``False`` for the
            reference code's per-tensor update (see above).
        lr_history_size:
            How many steps of rates :attr:`lr_history` keeps per group (the most recent), or
            :obj:`None` to keep all.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        hypergrad_lr: float = _ADAM_HD_DEFAULT_HYPERGRAD_LR,
        lr_min: float | None = None,
        paper_exact: bool = True,
        lr_history_size: int | None = _DEFAULT_LR_HISTORY_SIZE,
    ) -> None:
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "hypergrad_lr": hypergrad_lr,
            "lr_min": lr_min,
            "paper_exact": paper_exact,
        }
        super().__init__(params, defaults, lr_history_size=lr_history_size)

    def _check_options(self, group: dict[str, Any]) -> None:
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(
                f"The value of `betas` is {betas!r}, but must be a pair `(beta1, beta2)`."
            )
        for k, beta in enumerate(betas):
            value = _check_real(f"betas[{k}]", beta)
            if not 0.0 <= value < 1.0:
                raise ValueError(
                    f"The value of `betas[{k}]` is {value}, but must be `0 <= betas[{k}] < 1`."
                )
        eps = _check_real("eps", group["eps"])
        if eps <= 0.0:
            raise ValueError(f"The value of `eps` is {eps}, but must be `eps > 0`.")

    def _hypergradient_term(
        self, param: torch.Tensor, grad: torch.Tensor, state: dict[str, Any], group: dict[str, Any]
    ) -> torch.Tensor | None:
        if not state.get("hypergrad_ready", False) or state.get("step", 0) < 1:
            return None
        beta1, beta2 = group["betas"]
        step = state["step"]  # the previous step's count: the moments are still its own
        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        denom = (state["exp_avg_sq"].sqrt() / bias_correction2_sqrt).add_(group["eps"])
        direction = state["exp_avg"].div(denom)
        return torch.mul(grad, direction).sum(dtype=torch.float64) / bias_correction1

    def _update(
        self,
        param: torch.Tensor,
        grad: torch.Tensor,
        state: dict[str, Any],
        group: dict[str, Any],
        lr: float,
    ) -> None:
        # The same operations, in the same order, as torch.optim.Adam's single-tensor step.
        if "step" not in state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        beta1, beta2 = group["betas"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        state["step"] += 1
        step = state["step"]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        step_size = lr / bias_correction1
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(group["eps"])
        param.addcdiv_(exp_avg, denom, value=-step_size)
