"""The 6n+2 CIFAR ResNet family (ResNet-8/14/20/32/44/56/110, ResNet-8x4/32x4), post-activation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdlight.errors import ConfigError
from kdlight.models.base import stage


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus shortcut, then ReLU."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + residual)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4 width) convs, each followed by BN, ReLU between; ReLU after the sum."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + residual)


_BLOCKS = {"basic": (BasicBlock, 6), "bottleneck": (Bottleneck, 9)}


class ResNet(nn.Module):
    """CIFAR ResNet of He et al. (2016): 3x3 stem, 3 stages of n blocks, global pool, fc.

    ``block="basic"``: depth = 6n + 2 (8, 14, 20, 32, 44, 56, 110, ...); ``"bottleneck"``:
    depth = 9n + 2. ``widths`` = (stem, stage 1, stage 2, stage 3) channels: (16, 16, 32, 64)
    for the standard family, (32, 64, 128, 256) for RepDistiller's "x4" nets (resnet8x4,
    resnet32x4). The shortcut, when the shape changes, is a 1x1 conv -> BN ("option B").
    For 10 classes: ResNet-20 has 272,474 parameters, ResNet-110 1,730,714; for 100:
    ResNet-8x4 1,233,540, ResNet-32x4 7,433,860.

    Parameter names (``conv1``, ``bn1``, ``layer1..3.i.{conv,bn}{1,2}``, ``downsample.0/1``,
    ``fc``) are those of bearpaw/pytorch-classification ``models/cifar/resnet.py`` and of
    HobbitLong/RepDistiller ``models/resnet.py`` (also mdistiller's), so checkpoints of both
    load directly. Note: older versions of bearpaw's file silently switched to bottleneck
    blocks for depth >= 44; here the block type is always explicit.
    """

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        block: str = "basic",
        widths: Sequence[int] = (16, 16, 32, 64),
    ) -> None:
        super().__init__()
        if block not in _BLOCKS:
            raise ConfigError(f"ResNet block={block!r} is invalid; use 'basic' or 'bottleneck'.")
        block_cls, per_block = _BLOCKS[block]
        if depth < per_block + 2 or (depth - 2) % per_block != 0:
            valid = "8, 14, 20, 32, 44, 56, 110" if block == "basic" else "29, 56, 110, 164"
            raise ConfigError(
                f"ResNet depth={depth} is invalid for {block} blocks; it must be "
                f"{per_block}n+2 (e.g. {valid})."
            )
        widths = tuple(int(w) for w in widths)
        if len(widths) != 4 or min(widths) < 1:
            raise ConfigError(
                f"ResNet widths={list(widths)} is invalid; give 4 positive channel counts "
                f"(stem, stage 1, 2, 3), e.g. [16, 16, 32, 64]."
            )
        n = (depth - 2) // per_block
        self.depth = depth
        self.num_classes = num_classes
        suffix = {(16, 16, 32, 64): "", (32, 64, 128, 256): "x4"}.get(
            widths, "-w" + "-".join(map(str, widths))
        )
        self.arch = f"resnet{depth}{suffix}" + ("" if block == "basic" else "-bottleneck")
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block_cls, widths[1], n, stride=1)
        self.layer2 = self._make_layer(block_cls, widths[2], n, stride=2)
        self.layer3 = self._make_layer(block_cls, widths[3], n, stride=2)
        self.fc = nn.Linear(widths[3] * block_cls.expansion, num_classes)
        e = block_cls.expansion
        self.feature_info = [  # each block ends in ReLU: post-activation maps
            stage("layer1", widths[1] * e, 1), stage("layer2", widths[2] * e, 2),
            stage("layer3", widths[3] * e, 4),
        ]  # fmt: skip
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # Same as the original normal(0, sqrt(2 / (k * k * out_channels))).
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block: type, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        # Global average pool; bit-identical to the original AvgPool2d(8) on 32x32 inputs.
        x = F.avg_pool2d(x, x.shape[-2:]).flatten(1)
        return self.fc(x)


X4_WIDTHS = (32, 64, 128, 256)


def resnet8(num_classes: int = 10) -> ResNet:
    """ResNet-8, basic blocks (83,892 parameters for 100 classes)."""
    return ResNet(depth=8, num_classes=num_classes)


def resnet14(num_classes: int = 10) -> ResNet:
    """ResNet-14, basic blocks (181,108 parameters for 100 classes)."""
    return ResNet(depth=14, num_classes=num_classes)


def resnet20(num_classes: int = 10) -> ResNet:
    """ResNet-20, basic blocks (272,474 parameters for 10 classes)."""
    return ResNet(depth=20, num_classes=num_classes)


def resnet32(num_classes: int = 10) -> ResNet:
    """ResNet-32, basic blocks."""
    return ResNet(depth=32, num_classes=num_classes)


def resnet44(num_classes: int = 10) -> ResNet:
    """ResNet-44, basic blocks."""
    return ResNet(depth=44, num_classes=num_classes)


def resnet56(num_classes: int = 10) -> ResNet:
    """ResNet-56, basic blocks."""
    return ResNet(depth=56, num_classes=num_classes)


def resnet110(num_classes: int = 10) -> ResNet:
    """ResNet-110, basic blocks (1,730,714 parameters for 10 classes)."""
    return ResNet(depth=110, num_classes=num_classes)


def resnet8x4(num_classes: int = 10) -> ResNet:
    """RepDistiller's ResNet-8x4: depth 8, widths 32/64/128/256 (1,233,540 parameters for 100 classes)."""
    return ResNet(depth=8, num_classes=num_classes, widths=X4_WIDTHS)


def resnet32x4(num_classes: int = 10) -> ResNet:
    """RepDistiller's ResNet-32x4: depth 32, widths 32/64/128/256 (7,433,860 parameters for 100 classes)."""
    return ResNet(depth=32, num_classes=num_classes, widths=X4_WIDTHS)
