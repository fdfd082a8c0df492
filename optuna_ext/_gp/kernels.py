"""Kernels of Hyperdyn's GP: Matern-5/2 or RBF on the parameters, times a time kernel.

Hyperdyn (ICLR 2018 submission, paper 002, section 2.3, equation (2)) models the observations
over (hyper-parameters, epoch) with the product kernel

    K((eta1, t1), (eta2, t2)) = K1(eta1, eta2) * K2(t1, t2),

where ``K1`` is a stationary kernel (RBF or Matern) on the tuned parameters and ``K2`` is the
time kernel of section 2.4, obtained by mixing exponential kernels in ``|t1 - t2|`` with a Gamma
density:

    K2(t1, t2) = beta**alpha / (|t1 - t2| + beta)**alpha,

with ``alpha = 1`` and ``beta = 1/2`` in the paper (the SGD rate ``O(1 / N**(1/2))``). Here
``K1`` acts on parameters already mapped to the unit box (log scale for log parameters, see
:class:`optuna_ext._gp.box.UnitBox`) through squared distances weighted by one inverse squared
length scale per parameter (automatic relevance determination).

This module does not import Optuna.
"""

from __future__ import annotations

from collections.abc import Callable
import math
from typing import Any

import torch


KERNEL_NAMES = ("matern52", "rbf")
"""The names of the stationary kernels ``K1`` on the tuned parameters."""


class _Matern52(torch.autograd.Function):
    """Matern-5/2 as a function of the squared scaled distance, with an exact derivative at 0.

    With ``r = sqrt(5 * s)`` for the squared scaled distance ``s``, the kernel is
    ``(1 + r + r**2 / 3) * exp(-r)`` and its derivative with respect to ``s`` is
    ``-5 / 6 * (1 + r) * exp(-r)``, finite at ``s = 0`` where autograd through ``sqrt`` would
    divide by zero.
    """

    @staticmethod
    def forward(ctx: Any, squared_distance: torch.Tensor) -> torch.Tensor:
        r = torch.sqrt(5.0 * squared_distance)
        decay = torch.exp(-r)
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward((-5.0 / 6.0) * (1.0 + r) * decay)
        return (1.0 + r + (5.0 / 3.0) * squared_distance) * decay

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> torch.Tensor:
        (derivative,) = ctx.saved_tensors
        return grad_output * derivative


def matern52(squared_distance: torch.Tensor) -> torch.Tensor:
    """Return the Matern-5/2 kernel ``(1 + r + r**2 / 3) * exp(-r)``, ``r = sqrt(5 * d2)``.

    Example:

        .. testcode::

            import math

            import torch
            from optuna_ext._gp.kernels import matern52

            value = matern52(torch.tensor([1.0], dtype=torch.float64))
            r = math.sqrt(5.0)
            assert math.isclose(value.item(), (1 + r + r * r / 3) * math.exp(-r))

    Args:
        squared_distance: Squared distances already divided by the squared length scales.
    """
    out = _Matern52.apply(squared_distance)  # type: ignore[no-untyped-call]
    assert isinstance(out, torch.Tensor)
    return out


def rbf(squared_distance: torch.Tensor) -> torch.Tensor:
    """Return the squared-exponential (RBF) kernel ``exp(-d2 / 2)``.

    Args:
        squared_distance: Squared distances already divided by the squared length scales.
    """
    return torch.exp(-0.5 * squared_distance)


def stationary_kernel(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return the kernel function of the squared scaled distance named ``name``.

    Args:
        name: One of :data:`KERNEL_NAMES`.
    """
    if name == "matern52":
        return matern52
    if name == "rbf":
        return rbf
    raise ValueError(f"The value of `kernel` is {name!r}, but must be one of {KERNEL_NAMES}.")


def check_time_kernel_params(alpha: float, beta: float) -> None:
    """Raise :class:`ValueError` unless ``alpha`` and ``beta`` are finite and positive."""
    for name, value in (("alpha", alpha), ("beta", beta)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"The value of `{name}` is {value!r}, but must be a float `> 0`.")
        if not (math.isfinite(value) and value > 0.0):
            raise ValueError(f"The value of `{name}` is {value}, but must be finite and `> 0`.")


def time_kernel(
    t1: torch.Tensor, t2: torch.Tensor, *, alpha: float = 1.0, beta: float = 0.5
) -> torch.Tensor:
    """Return Hyperdyn's time kernel ``beta**alpha / (|t1 - t2| + beta)**alpha`` for all pairs.

    Paper 002, section 2.4: an exponential kernel ``exp(-lambda * |t1 - t2|)`` integrated over
    ``lambda ~ Gamma(alpha, beta)``. With the paper's ``alpha = 1``, ``beta = 1/2`` it is
    ``1, 1/3, 1/5, 1/9`` at epoch distances ``0, 1, 2, 4``.

    Example:

        .. testcode::

            import torch
            from optuna_ext._gp.kernels import time_kernel

            t = torch.tensor([0.0, 1.0], dtype=torch.float64)
            print(time_kernel(t, t))

        .. testoutput::

            tensor([[1.0000, 0.3333],
                    [0.3333, 1.0000]], dtype=torch.float64)

    Args:
        t1: Epochs of shape ``(..., n1)``.
        t2: Epochs of shape ``(..., n2)``.
        alpha: The shape ``alpha > 0``.
        beta: The scale ``beta > 0`` (in epochs).

    Returns:
        The kernel matrix of shape ``(..., n1, n2)``.
    """
    check_time_kernel_params(alpha, beta)
    distance = (t1.unsqueeze(-1) - t2.unsqueeze(-2)).abs()
    ratio = beta / (distance + beta)
    return ratio if alpha == 1.0 else ratio**alpha
