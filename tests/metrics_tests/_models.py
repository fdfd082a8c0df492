"""Small networks for the metrics tests.

They do not use the task models of ``optuna_ext.tasks`` (whose widths, stems and
initialization may change), only its residual block, shared with the knowledge-gain benchmark.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from optuna_ext.tasks._models import _BasicBlock


def small_cnn(in_channels: int = 1, n_classes: int = 4) -> nn.Sequential:
    """A SmallCNN-like network: two 3x3 convolutions, global pooling, a linear head."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, n_classes),
    )


class ResNet20(nn.Module):
    """CIFAR ResNet-20 (He et al. 2016): 16/32/64 channels, 3 blocks per stage."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks: list[nn.Module] = []
        in_channels = 16
        for stage, channels in enumerate((16, 32, 64)):
            for block in range(3):
                blocks.append(_BasicBlock(in_channels, channels, 2 if stage and not block else 1))
                in_channels = channels
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(out.mean(dim=(2, 3)))


def conv_weight(layer: nn.Module) -> torch.Tensor:
    """The weight tensor (``.data``) of a convolution module."""
    assert isinstance(layer, nn.Conv2d)
    return layer.weight.data


def plant_low_rank(weight: torch.Tensor, rank: int, seed: int, strength: float = 4.0) -> None:
    """Add a strong CP-rank-``rank`` signal to a conv weight, detectable in both unfoldings."""
    c_out, c_in, kh, kw = weight.shape
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        std = weight.std().item()
        edge = std * max(
            math.sqrt(c_out) + math.sqrt(c_in * kh * kw),
            math.sqrt(c_in) + math.sqrt(c_out * kh * kw),
        )
        u = torch.nn.functional.normalize(torch.randn(rank, c_out, generator=g), dim=1)
        v = torch.nn.functional.normalize(torch.randn(rank, c_in, generator=g), dim=1)
        k = torch.nn.functional.normalize(torch.randn(rank, kh * kw, generator=g), dim=1)
        signal = torch.einsum("jo,ji,jk->oik", u, v, k).reshape(weight.shape)
        weight.add_(strength * edge * signal)
