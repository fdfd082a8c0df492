from __future__ import annotations

from collections.abc import Sequence
import math
from typing import Any
from typing import TYPE_CHECKING

import torch
from torch import nn


if TYPE_CHECKING:
    from optuna_ext.tasks._data import DatasetSplit


MODEL_NAMES = ("cnn", "resnet20", "vgg", "mlp-2-1", "mlp-2-3-1", "mlp-2-5-5-1")
"""The names accepted by :func:`build_model`."""

_ACTIVATIONS = ("relu", "tanh")


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"The value of `{name}` is {value}, but must be `{name} >= 1`.")


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class SmallCNN(nn.Module):
    """A two-layer convolutional network for small images such as the 8x8 digits.

    ``conv3x3 -> BN -> ReLU -> maxpool2 -> conv3x3 -> BN -> ReLU -> adaptive avg-pool to 2x2 ->
    linear``. On 8x8 inputs the second pooling halves the resolution again (4x4 to 2x2); any
    input of at least 2x2 pixels works.

    Example:

        .. testcode::

            import torch
            from optuna_ext.tasks import SmallCNN

            model = SmallCNN(n_classes=10)
            print(model(torch.zeros(4, 1, 8, 8)).shape)

        .. testoutput::

            torch.Size([4, 10])

    Args:
        in_channels:
            The number of input channels.
        n_classes:
            The number of outputs (logits).
        channels:
            The numbers of channels of the two convolutions.
    """

    def __init__(
        self, *, in_channels: int = 1, n_classes: int = 10, channels: tuple[int, int] = (16, 32)
    ) -> None:
        super().__init__()
        _check_positive_int("in_channels", in_channels)
        _check_positive_int("n_classes", n_classes)
        if len(channels) != 2:
            raise ValueError(
                f"The value of `channels` is {channels}, but must be a pair of integers."
            )
        for c in channels:
            _check_positive_int("channels[i]", c)
        c1, c2 = channels
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, c1),
            nn.MaxPool2d(2),
            *_conv_bn_relu(c1, c2),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(4 * c2, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class _BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """The CIFAR-style ResNet-20 of He et al. (2016), scaled by a width factor.

    A 3x3 stem convolution with ``width`` channels, then three stages of three basic blocks
    with ``width``, ``2 * width`` and ``4 * width`` channels (stride-2 downsampling at the
    first block of stages 2 and 3), global average pooling and a linear head: 19 3x3
    convolutions and one linear layer, the 20 weighted layers of the name. Where a block
    changes the shape, its shortcut is a 1x1 convolution with batch normalization (option B of
    the paper; the paper's CIFAR ResNet-20 used the parameter-free option A). ``width=16`` is
    the original network. On 8x8 inputs the stages work at 8x8, 4x4 and 2x2.

    Example:

        .. testcode::

            import torch
            from optuna_ext.tasks import ResNet20

            model = ResNet20(width=8)
            print(model(torch.zeros(2, 1, 8, 8)).shape)

        .. testoutput::

            torch.Size([2, 10])

    Args:
        in_channels:
            The number of input channels.
        n_classes:
            The number of outputs (logits).
        width:
            The number of channels of the first stage (16 in the paper).
    """

    def __init__(self, *, in_channels: int = 1, n_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        _check_positive_int("in_channels", in_channels)
        _check_positive_int("n_classes", n_classes)
        _check_positive_int("width", width)
        self.stem = nn.Sequential(*_conv_bn_relu(in_channels, width))
        blocks: list[nn.Module] = []
        channels = width
        for stage, out_channels in enumerate((width, 2 * width, 4 * width)):
            for i in range(3):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(_BasicBlock(channels, out_channels, stride))
                channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(channels, n_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.blocks(self.stem(x))))


class SmallVGG(nn.Module):
    """A small VGG-style network: three conv-conv blocks with batch normalization.

    Blocks of two 3x3 convolutions (each followed by BN and ReLU) with ``width``,
    ``2 * width`` and ``4 * width`` channels; 2x2 max pooling after the first two blocks and
    global average pooling after the third, then a linear head. On 8x8 inputs the blocks work
    at 8x8, 4x4 and 2x2.

    Example:

        .. testcode::

            import torch
            from optuna_ext.tasks import SmallVGG

            model = SmallVGG(width=8)
            print(model(torch.zeros(2, 1, 8, 8)).shape)

        .. testoutput::

            torch.Size([2, 10])

    Args:
        in_channels:
            The number of input channels.
        n_classes:
            The number of outputs (logits).
        width:
            The number of channels of the first block.
    """

    def __init__(self, *, in_channels: int = 1, n_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        _check_positive_int("in_channels", in_channels)
        _check_positive_int("n_classes", n_classes)
        _check_positive_int("width", width)
        layers: list[nn.Module] = []
        channels = in_channels
        for block, out_channels in enumerate((width, 2 * width, 4 * width)):
            layers += _conv_bn_relu(channels, out_channels)
            layers += _conv_bn_relu(out_channels, out_channels)
            layers.append(nn.MaxPool2d(2) if block < 2 else nn.AdaptiveAvgPool2d(1))
            channels = out_channels
        layers.append(nn.Flatten())
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class MLP(nn.Module):
    """A fully connected network with the given layer widths (paper 004's small networks).

    ``layers=(2, 3, 1)`` is paper 004's "simple" 2-3-1 network: two inputs, one hidden layer
    of three units, one output. The activation follows every hidden layer, not the output.
    A network with one output produces a binary logit of shape ``(N, 1)``: :func:`train_epoch`,
    :func:`evaluate` and :func:`fit` then use the binary cross-entropy on the logit (the
    paper's sigmoid output) and predict class 1 when the logit is positive. With more
    outputs they use the cross-entropy over the logits. Inputs of more than one dimension are
    flattened.

    Example:

        .. testcode::

            import torch
            from optuna_ext.tasks import MLP

            model = MLP(layers=(2, 5, 5, 1))
            print(model(torch.zeros(3, 2)).shape)

        .. testoutput::

            torch.Size([3, 1])

    Args:
        layers:
            The widths of all layers, inputs first, outputs last (at least two entries).
        activation:
            ``"relu"`` (as in paper 004) or ``"tanh"``.
    """

    def __init__(self, *, layers: Sequence[int], activation: str = "relu") -> None:
        super().__init__()
        layers = tuple(layers)
        if len(layers) < 2:
            raise ValueError(
                f"The value of `layers` is {layers}, but must have at least two entries "
                "(inputs and outputs)."
            )
        for width in layers:
            _check_positive_int("layers[i]", width)
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"The value of `activation` is {activation!r}, but must be one of {_ACTIVATIONS}."
            )
        self.layers = layers
        modules: list[nn.Module] = [nn.Flatten()]
        for i, (n_in, n_out) in enumerate(zip(layers[:-1], layers[1:], strict=True)):
            modules.append(nn.Linear(n_in, n_out))
            if i < len(layers) - 2:
                modules.append(nn.ReLU() if activation == "relu" else nn.Tanh())
        self.net = nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _mlp_layers(name: str) -> tuple[int, ...]:
    return tuple(int(w) for w in name.removeprefix("mlp-").split("-"))


def build_model(name: str, *, data: DatasetSplit, seed: int = 0, **kwargs: Any) -> nn.Module:
    """Build one of the task models, sized for ``data`` and initialised from ``seed``.

    ``"cnn"`` is :class:`SmallCNN`, ``"resnet20"`` :class:`ResNet20`, ``"vgg"``
    :class:`SmallVGG` (their ``in_channels`` and ``n_classes`` come from ``data``), and
    ``"mlp-2-1"``, ``"mlp-2-3-1"``, ``"mlp-2-5-5-1"`` are :class:`MLP` with those layer
    widths, i.e. paper 004's logistic regression, simple and three-layer networks; they need
    2-D inputs and two classes (:func:`make_teacher_data` with ``form="2d"``). The weights are
    drawn under ``torch.random.fork_rng`` seeded with ``seed``, so the same name, data shape
    and seed always give the same weights, and the global CPU random state is left as it was.

    Example:

        .. testcode::

            from optuna_ext.tasks import build_model
            from optuna_ext.tasks import load_digits

            model = build_model("resnet20", data=load_digits(), seed=0, width=8)

    Args:
        name:
            One of :data:`MODEL_NAMES`.
        data:
            The data the model will be trained on; gives the input shape and class count.
        seed:
            The seed of the initial weights.
        kwargs:
            Further arguments for the model class, e.g. ``width`` or ``channels``
            (``activation`` for the MLPs).
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"The value of `name` is {name!r}, but must be one of {MODEL_NAMES}.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name.startswith("mlp-"):
            layers = _mlp_layers(name)
            if math.prod(data.input_shape) != layers[0] or data.n_classes != 2:
                raise ValueError(
                    f"The model {name!r} needs inputs of {layers[0]} values and 2 classes, but "
                    f"the data {data.name!r} have inputs of shape {data.input_shape} and "
                    f"{data.n_classes} classes; use make_teacher_data(form='2d')."
                )
            return MLP(layers=layers, **kwargs)
        if len(data.input_shape) != 3:
            raise ValueError(
                f"The model {name!r} needs image inputs (channels, height, width), but the data "
                f"{data.name!r} have inputs of shape {data.input_shape}."
            )
        in_channels = data.input_shape[0]
        cls: type[nn.Module] = {"cnn": SmallCNN, "resnet20": ResNet20, "vgg": SmallVGG}[name]
        return cls(in_channels=in_channels, n_classes=data.n_classes, **kwargs)
