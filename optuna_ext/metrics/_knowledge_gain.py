"""Knowledge gain of convolution weights and the rank measure Z of autoHyper.

- M. S. Hosseini, K. N. Plataniotis. "AdaS: Adaptive Scheduling of Stochastic Gradients."
  arXiv:2006.06587 (2020): knowledge gain.
- M. Tuli, M. S. Hosseini, K. N. Plataniotis. "Response Modeling of Hyper-Parameters for Deep
  Convolutional Neural Networks." ICLR 2021 submission (autoHyper), section 2, eq. 4: Z_t.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from optuna_ext.metrics._evbmf import _DEFAULT_RTOL
from optuna_ext.metrics._evbmf import _lower_gram
from optuna_ext.metrics._evbmf import _singular_values_from_gram
from optuna_ext.metrics._evbmf import _solve_padded
from optuna_ext.metrics._evbmf import _validate_options
from optuna_ext.metrics._evbmf import last_indices
from optuna_ext.metrics._evbmf import padded_row_sums


if TYPE_CHECKING:
    from torch import nn


_MODES = (3, 4)
# Chunks of unfoldings are copied to float64 in a workspace of about this many elements (or one
# unfolding, if larger).
_WORKSPACE_ELEMENTS = 1 << 21


def _validate_p(p: int) -> None:
    if isinstance(p, bool) or p not in (1, 2):
        raise ValueError(f"The value of `p` is {p!r}, but must be 1 or 2.")


def unfold(weight: torch.Tensor, mode: int) -> torch.Tensor:
    """Unfold a convolution (or linear) weight along its input or output channels.

    The modes are numbered as in the paper, for a kernel laid out as :math:`(k_h, k_w,
    C_{in}, C_{out})`: mode 3 is :math:`C_{in} \\times (C_{out} k_h k_w)` and mode 4 is
    :math:`C_{out} \\times (C_{in} k_h k_w)`. A PyTorch ``Conv2d`` weight has shape ``(C_out,
    C_in, k_h, k_w)``; a 2-D (linear) weight ``(out, in)`` unfolds to its transpose (mode 3) and to
    itself (mode 4).

    Example:

        .. testcode::

            import torch

            from optuna_ext.metrics import unfold

            w = torch.zeros(32, 16, 3, 3)
            assert unfold(w, 3).shape == (16, 288)
            assert unfold(w, 4).shape == (32, 144)

    Args:
        weight:
            A 4-D convolution weight or a 2-D linear weight.
        mode:
            3 (input channels) or 4 (output channels).

    Returns:
        The unfolded matrix (a view or copy of ``weight``, same dtype and device).
    """
    if mode not in _MODES:
        raise ValueError(f"The value of `mode` is {mode!r}, but must be 3 or 4.")
    if weight.ndim == 4:
        if mode == 3:
            return weight.transpose(0, 1).reshape(weight.shape[1], -1)
        return weight.reshape(weight.shape[0], -1)
    if weight.ndim == 2:
        return weight.transpose(0, 1) if mode == 3 else weight
    raise ValueError(
        f"The shape of `weight` is {tuple(weight.shape)}, but must be 4-D (convolution) or 2-D "
        "(linear)."
    )


@dataclass(frozen=True)
class LayerKnowledgeGain:
    """Knowledge gains of one layer's weight at one point of training.

    Attributes:
        name:
            The parameter's name in ``model.named_parameters()``, e.g. ``"layer1.0.conv1.weight"``.
        shape:
            The weight's shape.
        gain3:
            :math:`G_3`, the knowledge gain of the mode-3 (input-channel) unfolding, in [0, 1].
        gain4:
            :math:`G_4`, the knowledge gain of the mode-4 (output-channel) unfolding, in [0, 1].
        rank3:
            The EVBMF rank of the mode-3 unfolding (``gain3 == 0`` exactly when it is 0).
        rank4:
            The EVBMF rank of the mode-4 unfolding.
    """

    name: str
    shape: tuple[int, ...]
    gain3: float
    gain4: float
    rank3: int
    rank4: int


@dataclass(frozen=True)
class KnowledgeGainSnapshot:
    """The knowledge gains of all tracked layers and the rank measure :math:`Z_t`.

    Attributes:
        layers:
            One :class:`LayerKnowledgeGain` per tracked weight, in ``named_parameters`` order.
        z:
            :math:`Z_t`, the fraction of unfoldings (two per layer) whose knowledge gain is zero.
    """

    layers: tuple[LayerKnowledgeGain, ...]
    z: float

    @property
    def n_unfoldings(self) -> int:
        """The number of unfoldings, two per layer."""
        return 2 * len(self.layers)

    @property
    def n_zero_gain(self) -> int:
        """The number of unfoldings whose EVBMF rank, hence knowledge gain, is zero."""
        return sum((layer.rank3 == 0) + (layer.rank4 == 0) for layer in self.layers)


def _tracked_weights(model: nn.Module, include_linear: bool) -> list[tuple[str, torch.Tensor]]:
    weights = [
        (name, parameter.detach())
        for name, parameter in model.named_parameters()
        if parameter.ndim == 4 or (include_linear and parameter.ndim == 2)
    ]
    if not weights:
        kinds = "convolution (4-D) or linear (2-D)" if include_linear else "convolution (4-D)"
        raise ValueError(
            f"The model {type(model).__name__} has no {kinds} weights, but the knowledge gain "
            "needs at least one."
        )
    return weights


def _check_finite_weights(weights: list[tuple[str, torch.Tensor]]) -> None:
    name = next((name for name, w in weights if not bool(torch.isfinite(w).all())), None)
    if name is not None:
        raise ValueError(
            f"The model's weight `{name}` holds NaN or infinite values, but the knowledge gain "
            "needs finite weights (did training diverge?)."
        )


def _unfolded_shape(weight: torch.Tensor, mode: int) -> tuple[int, int]:
    n_out, n_in = int(weight.shape[0]), int(weight.shape[1])
    kernel = weight[0, 0].numel() if weight.ndim == 4 else 1
    return (n_in, n_out * kernel) if mode == 3 else (n_out, n_in * kernel)


def _write_unfolding(
    slot: torch.Tensor, weight: torch.Tensor, mode: int, transposed: bool
) -> None:
    """Copy the mode-``mode`` unfolding of ``weight`` (or its transpose) into ``slot``.

    Same result as ``slot.copy_(unfold(weight, mode))`` (``.T``), without the intermediate copy
    that reshaping a permuted weight makes.
    """
    n_out, n_in = weight.shape[:2]
    w = weight.reshape(n_out, n_in, -1)  # (out, in, kernel), a view
    if mode == 3:  # rows: in; columns: (out, kernel)
        order = (0, 2, 1) if transposed else (1, 0, 2)
    else:  # rows: out; columns: (in, kernel)
        order = (1, 2, 0) if transposed else (0, 1, 2)
    source = w.permute(order)
    slot.view(source.shape).copy_(source)


def _knowledge_gains(
    weights: list[tuple[str, torch.Tensor]],
    *,
    p: int,
    tall_policy: str,
    rescale: bool,
) -> KnowledgeGainSnapshot:
    # Every unfolding, in order (layer 0 mode 3, layer 0 mode 4, layer 1 mode 3, ...).
    unfoldings = [(weight, mode) for _, weight in weights for mode in _MODES]
    shapes = [_unfolded_shape(weight, mode) for weight, mode in unfoldings]
    channels = [shape[0] for shape in shapes]

    # Singular values do not depend on the orientation: group by (short side, long side) and run
    # one batched decomposition per group (and per device).
    groups: dict[tuple[int, int, torch.device], list[int]] = {}
    for i, ((weight, _), (n_rows, n_cols)) in enumerate(zip(unfoldings, shapes, strict=True)):
        key = (min(n_rows, n_cols), max(n_rows, n_cols), weight.device)
        groups.setdefault(key, []).append(i)
    device = weights[0][1].device
    width = max(min(shape) for shape in shapes)
    singular_values = torch.zeros(len(unfoldings), width, dtype=torch.float64, device=device)
    # The float64 copies of the unfoldings go through one workspace per device, reused by every
    # chunk of every group: freshly allocated memory would cost more in page faults on CPU than
    # the copies themselves.
    chunk_sizes = {
        key: max(1, min(len(members), _WORKSPACE_ELEMENTS // (key[0] * key[1])))
        for key, members in groups.items()
    }
    workspaces: dict[torch.device, torch.Tensor] = {}
    for key, chunk_size in chunk_sizes.items():
        n_elements = chunk_size * key[0] * key[1]
        if workspaces.get(key[2], torch.empty(0)).numel() < n_elements:
            workspaces[key[2]] = torch.empty(n_elements, dtype=torch.float64, device=key[2])
    for (short, long, group_device), members in groups.items():
        chunk_size = chunk_sizes[short, long, group_device]
        gram = torch.empty(len(members), short, short, dtype=torch.float64, device=group_device)
        for start in range(0, len(members), chunk_size):
            chunk = members[start : start + chunk_size]
            stack = workspaces[group_device][: len(chunk) * short * long].view(-1, short, long)
            for slot, i in zip(stack, chunk, strict=True):
                weight, mode = unfoldings[i]
                _write_unfolding(slot, weight, mode, transposed=shapes[i][0] != short)
            _lower_gram(stack, out=gram[start : start + len(chunk)])
        # A NaN or infinite weight makes the diagonal of its Gram matrix (sums of squares of
        # rows) NaN or infinite; the check costs a pass over the small diagonals only.
        if not bool(torch.isfinite(gram.diagonal(dim1=-2, dim2=-1)).all()):
            _check_finite_weights(weights)
        values = _singular_values_from_gram(gram).to(device)
        singular_values[torch.tensor(members, device=device), :short] = values

    solution = _solve_padded(
        singular_values,
        shapes,
        tall_policy=tall_policy,
        rescale=rescale,
        rtol=_DEFAULT_RTOL,
        atol=0.0,
    )
    shrunk = solution.shrunk
    largest = shrunk[:, :1]
    ratios = shrunk / torch.where(largest > 0.0, largest, torch.ones_like(largest))
    n_channels = torch.tensor(channels, dtype=torch.float64, device=device)
    # The sum up to each unfolding's own number of singular values, so that a layer's gain
    # does not depend on the other layers' widths.
    last = last_indices([min(shape) for shape in shapes], device)
    gains = padded_row_sums(ratios**p, last).squeeze(1) / n_channels

    ranks = solution.rank.tolist()
    gain_values = gains.tolist()
    layers = tuple(
        LayerKnowledgeGain(
            name=name,
            shape=tuple(weight.shape),
            gain3=gain_values[2 * i],
            gain4=gain_values[2 * i + 1],
            rank3=ranks[2 * i],
            rank4=ranks[2 * i + 1],
        )
        for i, (name, weight) in enumerate(weights)
    )
    n_zero = sum(rank == 0 for rank in ranks)
    return KnowledgeGainSnapshot(layers=layers, z=n_zero / len(ranks))


def knowledge_gain_rank(
    model: nn.Module,
    *,
    p: int = 1,
    tall_policy: str = "transpose",
    rescale: bool = True,
    include_linear: bool = False,
) -> KnowledgeGainSnapshot:
    """Knowledge gains of a model's convolution weights and autoHyper's rank measure :math:`Z_t`.

    Each tracked weight is unfolded along its input channels (mode 3, :math:`N_3 = C_{in}`) and
    its output channels (mode 4, :math:`N_4 = C_{out}`). For each unfolding, EVBMF
    (:func:`~optuna_ext.metrics.evbmf`) gives the rank :math:`r` and the shrunk singular values
    :math:`\\hat\\gamma_1 \\ge \\dots \\ge \\hat\\gamma_r`, and the knowledge gain is

    .. math::

        G_d = \\frac{1}{N_d} \\sum_{h=1}^{r} \\left(\\frac{\\hat\\gamma_h}{\\hat\\gamma_1}
        \\right)^p \\quad (G_d = 0 \\text{ when } r = 0).

    :math:`Z_t` (eq. 4 of autoHyper, as its reference code computes it) is the fraction of the
    :math:`2L` unfoldings whose knowledge gain is zero, i.e. whose EVBMF rank is zero. It is in
    [0, 1], and 1 for a freshly initialized network, whose weights are pure noise to EVBMF. It is
    computed exactly from integer counts (the reference rounds it to float16).

    As in the reference, every 4-D parameter counts as a convolution (grouped and depthwise
    ones included); other parameters are ignored unless ``include_linear`` adds the 2-D ones.
    Unfoldings of equal shape are decomposed in one batched call on the weights' device, and the
    noise variance search runs once for all unfoldings.

    Example:

        .. testcode::

            import torch

            from optuna_ext.metrics import knowledge_gain_rank

            torch.manual_seed(0)
            model = torch.nn.Sequential(
                torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3)
            )
            snapshot = knowledge_gain_rank(model)
            assert snapshot.z == 1.0  # nothing learned yet
            assert [layer.gain3 for layer in snapshot.layers] == [0.0, 0.0]

    Args:
        model:
            The network.
        p:
            The exponent of the normalized singular values in :math:`G_d`: 1 (AdaS's and
            autoHyper's default) or 2 (energy).
        tall_policy:
            ``"transpose"`` (the default) or ``"reference"``; see
            :func:`~optuna_ext.metrics.evbmf`. With ``"reference"``, noise-dominated tall
            unfoldings with a ratio of about 3 or more (e.g. mode 4 of a 1x1 convolution with four
            times more output than input channels) have zero knowledge gain even when EVBMF of
            their transpose finds structure, as in autoHyper and AdaS. (At later epochs the
            reference copies a failing unfolding's value from the previous epoch, which is
            also 0 unless that unfolding succeeded in between; here a failure always gives 0.)
        rescale:
            Divide each unfolding by the RMS of its entries before the noise variance search;
            see :func:`~optuna_ext.metrics.evbmf`.
        include_linear:
            Also track the 2-D parameters (linear layers' weights), unfolded as the weight
            (mode 4) and its transpose (mode 3).

    Returns:
        A :class:`KnowledgeGainSnapshot` with the per-layer gains and ranks and :math:`Z_t`.
    """
    _validate_p(p)
    _validate_options(tall_policy, _DEFAULT_RTOL, 0.0, "gram")
    with torch.no_grad():
        return _knowledge_gains(
            _tracked_weights(model, include_linear), p=p, tall_policy=tall_policy, rescale=rescale
        )
