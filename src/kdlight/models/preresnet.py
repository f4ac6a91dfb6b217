"""Pre-activation CIFAR ResNets (He et al., 2016, "Identity mappings"): PreResNet-110 and -164."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdlight.errors import ConfigError
from kdlight.models.base import stage


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """BN -> ReLU -> conv3x3 -> BN -> ReLU -> conv3x3, plus shortcut (no ReLU after the sum)."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        return out + residual


class Bottleneck(nn.Module):
    """BN-ReLU-conv1x1, BN-ReLU-conv3x3, BN-ReLU-conv1x1 (x4 width), plus shortcut."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + residual


_BLOCKS = {"basic": (BasicBlock, 6), "bottleneck": (Bottleneck, 9)}


class PreResNet(nn.Module):
    """Pre-activation ResNet for 32x32 inputs: 3x3 stem (16 ch), 3 stages of n blocks, BN-ReLU, fc.

    ``block="basic"``: depth = 6n + 2; ``"bottleneck"``: depth = 9n + 2. The downsampling
    shortcut is a bare 1x1 conv. For 10 classes: PreResNet-110 (basic) has 1,730,522
    parameters, PreResNet-164 (bottleneck) 1,703,258.

    The study's "PreResNet-110" teacher was built by an older bearpaw file that switched to
    bottleneck blocks for depth >= 44 with n = (depth - 2) / 6 = 18: that network *is*
    PreResNet-164 here, and its checkpoints load into :func:`preresnet164`.

    Parameter names (``conv1``, ``layer1..3.i.{bn,conv}{1,2,3}``, ``downsample.0``, ``bn``,
    ``fc``) follow bearpaw/pytorch-classification ``models/cifar/preresnet.py``.
    """

    def __init__(self, depth: int = 110, num_classes: int = 10, block: str = "basic") -> None:
        super().__init__()
        if block not in _BLOCKS:
            raise ConfigError(f"PreResNet block={block!r} is invalid; use 'basic' or 'bottleneck'.")
        block_cls, per_block = _BLOCKS[block]
        if depth < per_block + 2 or (depth - 2) % per_block != 0:
            valid = "20, 32, 44, 56, 110" if block == "basic" else "29, 56, 110, 164"
            raise ConfigError(
                f"PreResNet depth={depth} is invalid for {block} blocks; it must be "
                f"{per_block}n+2 (e.g. {valid})."
            )
        n = (depth - 2) // per_block
        self.depth = depth
        self.num_classes = num_classes
        self.inplanes = 16
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.layer1 = self._make_layer(block_cls, 16, n, stride=1)
        self.layer2 = self._make_layer(block_cls, 32, n, stride=2)
        self.layer3 = self._make_layer(block_cls, 64, n, stride=2)
        self.bn = nn.BatchNorm2d(64 * block_cls.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(64 * block_cls.expansion, num_classes)
        e = block_cls.expansion
        # pre-activation: a stage ends on the residual stream (no activation exists there)
        self.feature_info = [stage(f"layer{i + 1}", (16 << i) * e, 1 << i) for i in range(3)]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block: type, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False)
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = self.relu(self.bn(x))
        # Global average pool; bit-identical to the original AvgPool2d(8) on 32x32 inputs.
        x = F.avg_pool2d(x, x.shape[-2:]).flatten(1)
        return self.fc(x)


def preresnet110(num_classes: int = 10) -> PreResNet:
    """PreResNet-110, basic blocks (1,730,522 parameters for 10 classes)."""
    return PreResNet(depth=110, num_classes=num_classes, block="basic")


def preresnet164(num_classes: int = 10) -> PreResNet:
    """PreResNet-164, bottleneck blocks (1,703,258 parameters; the study's "PreResNet-110")."""
    return PreResNet(depth=164, num_classes=num_classes, block="bottleneck")
