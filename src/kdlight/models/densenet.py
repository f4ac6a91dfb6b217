"""Densely connected networks for 32x32 inputs (Huang et al., 2017), DenseNet-BC-100 k=12."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kdlight.errors import ConfigError
from kdlight.models.base import stage


class Bottleneck(nn.Module):
    """BN-ReLU-conv1x1 (4k ch), BN-ReLU-conv3x3 (k ch), dropout; output = cat(input, new)."""

    def __init__(self, inplanes: int, growth_rate: int = 12, drop_rate: float = 0.0) -> None:
        super().__init__()
        planes = 4 * growth_rate
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, growth_rate, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        return torch.cat((x, self.dropout(out)), 1)


class BasicBlock(nn.Module):
    """BN-ReLU-conv3x3 (k ch), optional dropout; output = cat(input, new)."""

    def __init__(self, inplanes: int, growth_rate: int = 12, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, growth_rate, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu(self.bn1(x)))
        return torch.cat((x, self.dropout(out)), 1)


class Transition(nn.Module):
    """BN -> ReLU -> conv1x1 (compress channels) -> 2x2 average pool."""

    def __init__(self, inplanes: int, outplanes: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, outplanes, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv1(self.relu(self.bn1(x))), 2)


class DenseNet(nn.Module):
    """DenseNet(-BC): 3x3 stem (2k ch), 3 dense blocks joined by transitions, BN-ReLU, fc.

    ``bottleneck=True`` (BC): depth = 6n + 4, n bottleneck layers per block; otherwise depth =
    3n + 4 with basic layers. Transitions keep ``floor(channels * compression)`` channels.
    DenseNet-BC-100, k=12, compression 0.5: 769,162 parameters for 10 classes.

    Parameter names (``conv1``, ``dense1..3.i.{bn,conv}{1,2}``, ``trans1..2.{bn1,conv1}``,
    ``bn``, ``fc``) follow bearpaw/pytorch-classification ``models/cifar/densenet.py``, whose
    ``compressionRate=2`` is our ``compression=0.5``.
    """

    def __init__(
        self,
        depth: int = 100,
        growth_rate: int = 12,
        compression: float = 0.5,
        bottleneck: bool = True,
        drop_rate: float = 0.0,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        per_layer = 6 if bottleneck else 3
        if depth < per_layer + 4 or (depth - 4) % per_layer != 0:
            kind = "DenseNet-BC (bottleneck)" if bottleneck else "DenseNet (basic)"
            raise ConfigError(
                f"{kind} depth={depth} is invalid; it must be {per_layer}n+4 "
                f"(e.g. {per_layer * 16 + 4})."
            )
        if not 0.0 < compression <= 1.0:
            raise ConfigError(
                f"DenseNet compression={compression} is invalid; it must be in (0, 1]."
            )
        if growth_rate < 1:
            raise ConfigError(f"DenseNet growth_rate={growth_rate} is invalid; it must be >= 1.")
        if not 0.0 <= drop_rate < 1.0:
            raise ConfigError(f"DenseNet drop_rate={drop_rate} is invalid; it must be in [0, 1).")
        n = (depth - 4) // per_layer
        block = Bottleneck if bottleneck else BasicBlock
        self.num_classes = num_classes
        self.growth_rate = growth_rate
        self.inplanes = 2 * growth_rate
        self.conv1 = nn.Conv2d(3, self.inplanes, 3, padding=1, bias=False)
        self.dense1 = self._make_dense_block(block, n, drop_rate)
        self.trans1 = self._make_transition(compression)
        trans1 = self.inplanes
        self.dense2 = self._make_dense_block(block, n, drop_rate)
        self.trans2 = self._make_transition(compression)
        trans2 = self.inplanes
        self.dense3 = self._make_dense_block(block, n, drop_rate)
        # pre-activation: transitions end in conv + pool, the last block on the concatenation
        self.feature_info = [
            stage("trans1", trans1, 2), stage("trans2", trans2, 4), stage("dense3", self.inplanes, 4),
        ]  # fmt: skip
        self.bn = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(self.inplanes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_dense_block(self, block: type, n: int, drop_rate: float) -> nn.Sequential:
        layers = []
        for _ in range(n):
            layers.append(block(self.inplanes, growth_rate=self.growth_rate, drop_rate=drop_rate))
            self.inplanes += self.growth_rate
        return nn.Sequential(*layers)

    def _make_transition(self, compression: float) -> Transition:
        inplanes = self.inplanes
        self.inplanes = int(math.floor(inplanes * compression))
        return Transition(inplanes, self.inplanes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.trans1(self.dense1(x))
        x = self.trans2(self.dense2(x))
        x = self.relu(self.bn(self.dense3(x)))
        # Global average pool; bit-identical to the original AvgPool2d(8) on 32x32 inputs.
        x = F.avg_pool2d(x, x.shape[-2:]).flatten(1)
        return self.fc(x)


def densenet_bc_100(num_classes: int = 10) -> DenseNet:
    """DenseNet-BC-100, growth rate 12, compression 0.5 (769,162 parameters for 10 classes)."""
    return DenseNet(depth=100, growth_rate=12, compression=0.5, num_classes=num_classes)
